"""FLAP structured pruning of Gemma 4 FFNs: statistics, scores, plan suggestion, pruning."""

from studio.flap.prune import compensation_bias, keep_indices, prune_layer, prune_model
from studio.flap.scores import METRICS, channel_scores, model_scores, standardize
from studio.flap.stats import Cancelled, ChannelMoments, FlapStatistics, collect_statistics
from studio.flap.suggest import suggest_widths

__all__ = [
    "METRICS",
    "Cancelled",
    "ChannelMoments",
    "FlapStatistics",
    "channel_scores",
    "collect_statistics",
    "compensation_bias",
    "keep_indices",
    "model_scores",
    "prune_layer",
    "prune_model",
    "standardize",
    "suggest_widths",
]
