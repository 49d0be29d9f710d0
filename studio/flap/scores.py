"""FLAP channel importance scores and their per-layer standardisation.

For FFN channel j of a layer, with x_j its down_proj input and W the down_proj weight:
- IFV  (input feature variance):           Var[x_j]
- WIFV (weighted IFV, FLAP's default):     Var[x_j] * ||W[:, j]||^2
- WIFN (weighted input feature norm):      sqrt(E[x_j^2]) * mean_i |W[i, j]|
- OBS: channels chosen together from the layer's Gram matrix (`studio.flap.obs`), in the pass that
  prunes the layer to its planned width (`calibrated_scores`). From statistics alone (the widths a
  global ratio suggests) it scores its diagonal approximation, ||W[:, j]||^2 / (H^-1)_jj with H's
  off-diagonal dropped, which is WIFV.
A channel with a low score is one whose removal, once its mean is folded into a bias, changes the
layer's output least. Raw scores differ in scale from layer to layer, so FLAP compares layers
through per-layer z-scores.
"""

from __future__ import annotations

import torch

from studio.flap.refit import GramMatrix
from studio.flap.stats import ChannelMoments, FlapStatistics
from studio.modeling import decoder_layers

from studio.flap.settings import GRAM_METRICS, METRICS


def channel_scores(
    metric: str, mean: torch.Tensor, variance: torch.Tensor, down_weight: torch.Tensor
) -> torch.Tensor:
    """Scores (float64, one per channel) of one layer under `metric`."""
    metric = metric.lower()
    if metric == "ifv":
        return variance.clone()
    weight = down_weight.detach().to(device="cpu", dtype=torch.float64)
    if metric in ("wifv", "obs"):
        return variance * weight.pow(2).sum(dim=0)
    if metric == "wifn":
        return (variance + mean**2).sqrt() * weight.abs().mean(dim=0)
    raise ValueError(f"metric: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def calibrated_scores(
    metric: str,
    moments: ChannelMoments,
    down_weight: torch.Tensor,
    gram: GramMatrix | None = None,
    width: int | None = None,
    damp: float = 0.01,
) -> torch.Tensor:
    """Scores of one layer measured in the pass that prunes it to `width`.

    A Gram metric (obs) chooses the channels to keep at `width` from `gram` (damped by `damp`), and
    its scores give back that choice through `keep_indices`; the others score the moments.
    """
    if metric not in GRAM_METRICS:
        return channel_scores(metric, moments.mean, moments.variance, down_weight)
    from studio.flap.obs import obs_select

    if gram is None or width is None:
        raise ValueError(f"flap.metric: {metric} needs the layer's Gram matrix and its planned width")
    return obs_select(gram, down_weight, width, damp).scores()


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
