"""Structured FFN pruning with FLAP's bias compensation.

For each layer, the channels with the highest scores are kept: gate/up rows and down_proj columns
of the others are removed, and their average contribution is folded into a down_proj bias,
    bias = W_down[:, pruned] @ E[x_pruned]
computed in float64 and then cast, so that a token whose pruned activations sit at their means gets
exactly the unpruned output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


@torch.no_grad()
def prune_layer(layer, scores: torch.Tensor, mean: torch.Tensor, width: int, bias_compensation: bool = True):
    """Replace `layer.mlp` by a `FlapGemma4MLP` keeping the `width` best channels."""
    mlp = layer.mlp
    keep = keep_indices(scores, width)
    down = mlp.down_proj.weight
    dtype, device = down.dtype, down.device
    bias = torch.zeros(down.shape[0], dtype=torch.float64)
    if getattr(mlp.down_proj, "bias", None) is not None:
        bias += mlp.down_proj.bias.detach().to(device="cpu", dtype=torch.float64)
    if bias_compensation:
        bias += compensation_bias(down, mean, keep)
    activation = layer.config.hidden_activation
    pruned = FlapGemma4MLP(mlp.gate_proj.in_features, width, activation).to(device=device, dtype=dtype)
    index = keep.to(device)
    pruned.gate_proj.weight.copy_(mlp.gate_proj.weight[index])
    pruned.up_proj.weight.copy_(mlp.up_proj.weight[index])
    pruned.down_proj.weight.copy_(down[:, index])
    pruned.down_proj.bias.copy_(bias.to(device=device, dtype=dtype))
    params_before = _mlp_params(mlp)
    layer.mlp = pruned
    return keep, params_before, _mlp_params(pruned)


def prune_model(
    model,
    scores: list[torch.Tensor],
    means: list[torch.Tensor],
    widths: list[int],
    bias_compensation: bool = True,
) -> list[LayerPruneResult]:
    """Prune every decoder layer of `model` in place to `widths` and mark its config as pruned."""
    layers = decoder_layers(model)
    if not len(layers) == len(scores) == len(means) == len(widths):
        raise ValueError(
            f"plan: {len(widths)} widths, {len(scores)} score vectors and {len(means)} means "
            f"for a model of {len(layers)} layers"
        )
    results = []
    for index, (layer, layer_scores, mean, width) in enumerate(zip(layers, scores, means, widths)):
        original = layer.mlp.down_proj.in_features
        keep, before, after = prune_layer(layer, layer_scores, mean, width, bias_compensation)
        results.append(LayerPruneResult(index, original, width, before, after, keep))
    mark_pruned(model, widths)
    return results
