"""A Gemma 4 model's structure from its config alone (no weights are read): layers, attention
kinds, the KV-shared tail, FFN widths and parameters by component (`studio.sizes`' taxonomy)."""

from __future__ import annotations

import json
from pathlib import Path

from studio.modeling import original_widths


def load_full_config(path: str | Path) -> dict:
    """config.json of a checkpoint folder (or a bare config file) as a mapping."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"model: no config.json at {path}")
    return json.loads(path.read_text())


def attention_kinds(text_config) -> list[str]:
    return [("full" if t == "full_attention" else "sliding") for t in text_config.layer_types]


# What each KV role of `kv_roles` means (the plan table's legend and the width chart's).
KV_ROLES = {
    "own": "computes its own keys and values",
    "stores": "computes its keys and values and keeps them for the KV-shared tail",
    "shared": "reuses an earlier layer's keys and values (no KV projections of its own)",
}


def kv_roles(text_config) -> list[str]:
    """Per layer, one of `KV_ROLES`: 'shared', 'stores' or 'own'."""
    modes = getattr(text_config, "kv_sharing_modes", None) or [None] * text_config.num_hidden_layers
    return ["shared" if m == "reuse" else "stores" if m == "store" else "own" for m in modes]


def structure_summary(text_config, shapes) -> dict:
    """Layers, attention types, the KV-shared tail, FFN widths and parameters by component.

    `shapes` is the model's `studio.sizes.ModelShapes`; components are `studio.sizes.COMPONENTS` keys.
    """
    kinds = attention_kinds(text_config)
    roles = kv_roles(text_config)
    report = shapes.report()
    return {
        "layers": text_config.num_hidden_layers,
        "hidden_size": text_config.hidden_size,
        "attention": {"sliding": kinds.count("sliding"), "full": kinds.count("full")},
        "full_attention_layers": [i for i, k in enumerate(kinds) if k == "full"],
        "kv_shared_layers": [i for i, r in enumerate(roles) if r == "shared"],
        "ffn_widths": original_widths(text_config),
        "params_by_component": {name: size.params for name, size in report.components.items()},
        "total_params": report.params,
    }
