"""Structured FFN pruning with compensation of the removed channels.

For each layer, the channels with the highest scores are kept: gate/up rows and down_proj columns
of the others are removed. What their contribution becomes is the compensation:
- bias (FLAP's): their average contribution is folded into a down_proj bias,
      bias = W_down[:, pruned] @ E[x_pruned]
  computed in float64 and then cast, so that a token whose pruned activations sit at their means
  gets exactly the unpruned output;
- refit: the kept down_proj columns and the bias are re-fitted by least squares to the full
  layer's output on the calibration tokens (`studio.flap.refit`; needs the layer's Gram matrix);
- none: dropped.
Every compensation writes the same checkpoint format: kept weights and a down_proj bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from studio.flap.refit import GramMatrix, refit_down_proj
from studio.flap.settings import COMPENSATIONS
from studio.modeling import FlapGemma4MLP, decoder_layers, mark_pruned


@dataclass(frozen=True)
class LayerPruneResult:
    layer: int
    original_width: int
    kept_width: int
    params_before: int
    params_after: int
    kept_channels: torch.Tensor


def keep_indices(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Indices (ascending) of the `width` highest-scoring channels; ties go to the lower index."""
    if not 0 < width <= scores.numel():
        raise ValueError(f"width: must be between 1 and {scores.numel()}, got {width}")
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:width].sort().values


def compensation_bias(down_weight: torch.Tensor, mean: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """W_down[:, pruned] @ mean[pruned] in float64 (shape [hidden])."""
    pruned = torch.ones(down_weight.shape[1], dtype=torch.bool)
    pruned[keep.cpu()] = False
    weight = down_weight.detach().to(device="cpu", dtype=torch.float64)
    return weight[:, pruned] @ mean.to(torch.float64)[pruned]


def _mlp_params(mlp) -> int:
    return sum(p.numel() for p in mlp.parameters())


def compensated_down_proj(
    down: torch.nn.Linear,
    mean: torch.Tensor | None,
    keep: torch.Tensor,
    compensation: str,
    gram: GramMatrix | None = None,
    refit_damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned down_proj's weight [hidden, kept] and bias [hidden], both float64 on the CPU."""
    if compensation not in COMPENSATIONS:
        raise ValueError(f"compensation: must be one of {', '.join(COMPENSATIONS)}, got {compensation!r}")
    old_bias = getattr(down, "bias", None)
    if compensation == "refit":
        if gram is None:
            raise ValueError("compensation: refit needs the layer's Gram matrix from a calibration pass")
        weight, bias = refit_down_proj(gram, down.weight, old_bias, keep, refit_damp)
        return weight.cpu(), bias.cpu()
    weight = down.weight.detach().to(device="cpu", dtype=torch.float64)[:, keep.cpu()]
    bias = torch.zeros(down.weight.shape[0], dtype=torch.float64)
    if old_bias is not None:
        bias += old_bias.detach().to(device="cpu", dtype=torch.float64)
    if compensation == "bias":
        bias += compensation_bias(down.weight, mean, keep)
    return weight, bias


@torch.no_grad()
def prune_layer(
    layer,
    scores: torch.Tensor,
    mean: torch.Tensor | None,
    width: int,
    compensation: str = "bias",
    gram: GramMatrix | None = None,
    refit_damp: float = 0.01,
):
    """Replace `layer.mlp` by a `FlapGemma4MLP` keeping the `width` best channels.

    `mean` (the channels' calibration means) is what `bias` folds in; `gram` what `refit` fits on.
    """
    mlp = layer.mlp
    keep = keep_indices(scores, width)
    down = mlp.down_proj
    dtype, device = down.weight.dtype, down.weight.device
    weight, bias = compensated_down_proj(down, mean, keep, compensation, gram, refit_damp)
    activation = layer.config.hidden_activation
    pruned = FlapGemma4MLP(mlp.gate_proj.in_features, width, activation).to(device=device, dtype=dtype)
    index = keep.to(device)
    pruned.gate_proj.weight.copy_(mlp.gate_proj.weight[index])
    pruned.up_proj.weight.copy_(mlp.up_proj.weight[index])
    pruned.down_proj.weight.copy_(weight.to(device=device, dtype=dtype))
    pruned.down_proj.bias.copy_(bias.to(device=device, dtype=dtype))
    params_before = _mlp_params(mlp)
    layer.mlp = pruned
    return keep, params_before, _mlp_params(pruned)


def prune_model(
    model,
    scores: list[torch.Tensor],
    means: list[torch.Tensor],
    widths: list[int],
    compensation: str = "bias",
) -> list[LayerPruneResult]:
    """Prune every decoder layer of `model` in place to `widths` and mark its config as pruned.

    Only `bias` and `none` compensate from statistics alone; `refit` needs a Gram matrix per
    layer, which the layer-by-layer pass of `studio.flap.layerwise` accumulates.
    """
    if compensation == "refit":
        raise ValueError("compensation: refit needs a calibration pass; use studio.flap.layerwise.prune_while_calibrating")
    layers = decoder_layers(model)
    if not len(layers) == len(scores) == len(means) == len(widths):
        raise ValueError(
            f"plan: {len(widths)} widths, {len(scores)} score vectors and {len(means)} means "
            f"for a model of {len(layers)} layers"
        )
    results = []
    for index, (layer, layer_scores, mean, width) in enumerate(zip(layers, scores, means, widths)):
        original = layer.mlp.down_proj.in_features
        keep, before, after = prune_layer(layer, layer_scores, mean, width, compensation)
        results.append(LayerPruneResult(index, original, width, before, after, keep))
    mark_pruned(model, widths)
    return results
