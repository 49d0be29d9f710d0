"""FLAP channel importance scores and their per-layer standardisation.

For FFN channel j of a layer, with x_j its down_proj input and W the down_proj weight:
- IFV  (input feature variance):           Var[x_j]
- WIFV (weighted IFV, FLAP's default):     Var[x_j] * ||W[:, j]||^2
- WIFN (weighted input feature norm):      sqrt(E[x_j^2]) * mean_i |W[i, j]|
A channel with a low score is one whose removal, once its mean is folded into a bias, changes the
layer's output least. Raw scores differ in scale from layer to layer, so FLAP compares layers
through per-layer z-scores.
"""

from __future__ import annotations

import torch

from studio.flap.stats import FlapStatistics
from studio.modeling import decoder_layers

from studio.flap.settings import METRICS


def channel_scores(
    metric: str, mean: torch.Tensor, variance: torch.Tensor, down_weight: torch.Tensor
) -> torch.Tensor:
    """Scores (float64, one per channel) of one layer under `metric`."""
    metric = metric.lower()
    if metric == "ifv":
        return variance.clone()
    weight = down_weight.detach().to(device="cpu", dtype=torch.float64)
    if metric == "wifv":
        return variance * weight.pow(2).sum(dim=0)
    if metric == "wifn":
        return (variance + mean**2).sqrt() * weight.abs().mean(dim=0)
    raise ValueError(f"metric: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def model_scores(model, stats: FlapStatistics, metric: str = "wifv") -> list[torch.Tensor]:
    """Scores of every layer of `model` from its statistics."""
    layers = decoder_layers(model)
    if len(layers) != len(stats.layers):
        raise ValueError(f"statistics: cover {len(stats.layers)} layers, the model has {len(layers)}")
    return [
        channel_scores(metric, m.mean, m.variance, layer.mlp.down_proj.weight)
        for layer, m in zip(layers, stats.layers)
    ]


def standardize(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer z-scores, so that channels of different layers can be ranked together.

    A layer whose scores are all equal gets zeros.
    """
    out = []
    for layer_scores in scores:
        std = layer_scores.std(unbiased=False)
        centered = layer_scores - layer_scores.mean()
        out.append(centered / std if std > 0 else torch.zeros_like(centered))
    return out
