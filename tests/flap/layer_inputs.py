"""What the FLAP tests read off a plain forward: every decoder layer's MLP input."""

from __future__ import annotations

import torch

from studio.modeling import decoder_layers


def mlp_inputs(model, ids) -> list[torch.Tensor]:
    """Every layer's MLP input on one plain forward of the full model (hooks, no layer walk)."""
    captured = {}
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda _m, args, i=i: captured.__setitem__(i, args[0].detach().clone()))
        for i, layer in enumerate(decoder_layers(model))
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return [captured[i] for i in range(len(captured))]
