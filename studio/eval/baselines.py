"""Baselines that FLAP is compared against: naive channel choices and round-to-nearest INT4.

The FLAP engine prunes from any per-channel score vector (`studio.flap.prune_model(model, scores,
means, widths, compensation)`), so a baseline channel choice is only a score:
- weight magnitude: the L2 norm of everything the channel owns (its gate and up rows and its
  down_proj column), the structured analogue of magnitude pruning;
- random: seeded uniform noise, the floor any method must beat.
RTN is GPTQ's quantization grid (symmetric, per output row and group of input columns) without
GPTQ's error feedback, so a GPTQ-versus-RTN gap measures exactly what the Hessian buys.
"""

from __future__ import annotations

import torch

from studio.modeling import decoder_layers
from studio.gptq.rules import QUANTIZED_MODULES


def magnitude_scores(model) -> list[torch.Tensor]:
    """Per layer, each FFN channel's weight norm: sqrt(|gate row|^2 + |up row|^2 + |down column|^2)."""
    scores = []
    for layer in decoder_layers(model):
        mlp = layer.mlp
        squared = (
            mlp.gate_proj.weight.detach().double().pow(2).sum(dim=1)
            + mlp.up_proj.weight.detach().double().pow(2).sum(dim=1)
            + mlp.down_proj.weight.detach().double().pow(2).sum(dim=0)
        )
        scores.append(squared.sqrt().cpu())
    return scores


def random_scores(model, seed: int = 0) -> list[torch.Tensor]:
    """Per layer, seeded random scores: a random choice of channels."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.rand(layer.mlp.down_proj.in_features, generator=generator, dtype=torch.float64)
        for layer in decoder_layers(model)
    ]


def rtn_quantize_weight(weight: torch.Tensor, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """`weight` ([out, in]) rounded to the nearest point of GPTQ's symmetric grid, dequantized.

    Each output row and group of `group_size` input columns gets scale = 2 * max|w| / (2^bits - 1)
    and integer levels 0 .. 2^bits - 1 around the zero point 2^(bits - 1), as GPTQModel's sym mode.
    """
    out_features, in_features = weight.shape
    if group_size == -1:
        group_size = in_features
    if in_features % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the {in_features} input columns")
    maxq = 2**bits - 1
    zero = (maxq + 1) / 2
    groups = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    scale = 2 * groups.abs().amax(dim=-1, keepdim=True) / maxq
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    levels = torch.clamp(torch.round(groups / scale) + zero, 0, maxq)
    return ((levels - zero) * scale).reshape(out_features, in_features).to(weight.dtype)


@torch.no_grad()
def rtn_quantize_model_(model, bits: int = 4, group_size: int = 128, modules=QUANTIZED_MODULES) -> int:
    """Replace, in place, the weights of each decoder layer's `modules` by their RTN grid values.

    Returns the number of modules quantized.
    """
    count = 0
    for layer in decoder_layers(model):
        for name in modules:
            linear = layer.get_submodule(name)
            linear.weight.copy_(rtn_quantize_weight(linear.weight, bits, group_size))
            count += 1
    return count


@torch.no_grad()
def load_gptq_weights_(model, quantized_model, modules=QUANTIZED_MODULES) -> int:
    """Copy the dequantized GPTQ weights of `quantized_model` (loaded by
    `studio.gptq.quantize.load_quantized`) into the float `model` of the same architecture.

    The result computes in the float model's dtype with exactly GPTQ's weights, so GPTQ and RTN
    are compared at the same precision. Returns the number of modules copied.
    """
    count = 0
    for layer, qlayer in zip(decoder_layers(model), decoder_layers(quantized_model), strict=True):
        for name in modules:
            linear, qlinear = layer.get_submodule(name), qlayer.get_submodule(name)
            # GPTQModel's dequantize_weight() gives [in, out]; transformers' Linear holds [out, in].
            dequantized = qlinear.dequantize_weight().detach().t()
            if dequantized.shape != linear.weight.shape:
                raise ValueError(
                    f"{name}: quantized weight has shape {tuple(dequantized.shape)}, "
                    f"expected {tuple(linear.weight.shape)}"
                )
            linear.weight.copy_(dequantized.to(linear.weight.dtype))
            count += 1
    return count
