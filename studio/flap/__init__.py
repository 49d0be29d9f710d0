"""FLAP structured pruning of Gemma 4 FFNs: statistics, scores, plan suggestion, pruning, compensation.

Names load their module on first use, so `studio.flap.settings` (read by the job spec parser and
the CLI) imports without torch.
"""

from __future__ import annotations

from studio.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "COMPENSATIONS": "studio.flap.settings",
        "FlapSettings": "studio.flap.settings",
        "METRICS": "studio.flap.settings",
        "Cancelled": "studio.flap.stats",
        "ChannelMoments": "studio.flap.stats",
        "FlapStatistics": "studio.flap.stats",
        "collect_statistics": "studio.flap.stats",
        "channel_scores": "studio.flap.scores",
        "model_scores": "studio.flap.scores",
        "standardize": "studio.flap.scores",
        "compensation_bias": "studio.flap.prune",
        "keep_indices": "studio.flap.prune",
        "prune_layer": "studio.flap.prune",
        "prune_model": "studio.flap.prune",
        "GramMatrix": "studio.flap.refit",
        "refit_down_proj": "studio.flap.refit",
        "prune_while_calibrating": "studio.flap.layerwise",
        "suggest_widths": "studio.flap.suggest",
    },
)
