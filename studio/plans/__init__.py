"""Per-layer pruning plans: the plan type and its presets, and the editable table the studio shows."""
