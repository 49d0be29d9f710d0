"""Loading Gemma 4 models, FLAP-pruned ones included, through transformers.

Transformers' `Gemma4TextMLP` reads one `intermediate_size` for every layer and has no down_proj
bias. A FLAP-pruned checkpoint has per-layer widths (`text_config.intermediate_sizes`) and a
compensating bias, so it is loaded through the two subclasses below, which rebuild each layer's MLP
at its own width before the weights are read. Their architecture names are written into pruned
checkpoints: a stock loader then fails on the shapes instead of running with the bias dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, Gemma4ForCausalLM, Gemma4ForConditionalGeneration
from transformers.activations import ACT2FN

FLAP_ARCHITECTURES = {
    "Gemma4FlapForConditionalGeneration": "Gemma4ForConditionalGeneration",
    "Gemma4FlapForCausalLM": "Gemma4ForCausalLM",
}


def text_config_of(config):
    """The decoder's config: `config.text_config` for the multimodal model, `config` otherwise."""
    return getattr(config, "text_config", None) or config


def original_widths(text_config) -> list[int]:
    """Each decoder layer's FFN width in the unpruned model.

    Gemma 4 doubles the width of KV-shared layers when `use_double_wide_mlp` is set.
    """
    modes = text_config.kv_sharing_modes
    double = bool(getattr(text_config, "use_double_wide_mlp", False))
    base = int(text_config.intermediate_size)
    return [base * (2 if double and mode == "reuse" else 1) for mode in modes]


def layer_widths(text_config) -> list[int]:
    """Each decoder layer's FFN width as the checkpoint stores it (pruned or not)."""
    if getattr(text_config, "flap_pruned", False):
        widths = list(text_config.intermediate_sizes)
        if len(widths) != text_config.num_hidden_layers:
            raise ValueError(
                f"text_config.intermediate_sizes: has {len(widths)} entries, "
                f"expected one per layer ({text_config.num_hidden_layers})"
            )
        return [int(w) for w in widths]
    return original_widths(text_config)


class FlapGemma4MLP(nn.Module):
    """Gemma 4's gated FFN at a given width, with the FLAP down_proj bias."""

    def __init__(self, hidden_size: int, width: int, activation: str):
        super().__init__()
        self.hidden_size = hidden_size
        self.intermediate_size = width
        self.gate_proj = nn.Linear(hidden_size, width, bias=False)
        self.up_proj = nn.Linear(hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, hidden_size, bias=True)
        self.act_fn = ACT2FN[activation]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layers of a Gemma 4 model, multimodal or text-only."""
    inner = model.model
    inner = getattr(inner, "language_model", inner)
    return inner.layers


def install_flap_mlps(model, text_config) -> None:
    """Replace every decoder layer's MLP by a `FlapGemma4MLP` at the configured width."""
    widths = layer_widths(text_config)
    for layer, width in zip(decoder_layers(model), widths):
        layer.mlp = FlapGemma4MLP(text_config.hidden_size, width, text_config.hidden_activation)


class Gemma4FlapForConditionalGeneration(Gemma4ForConditionalGeneration):
    """Gemma4ForConditionalGeneration with per-layer FFN widths and a down_proj bias."""

    def __init__(self, config):
        super().__init__(config)
        install_flap_mlps(self, config.text_config)


class Gemma4FlapForCausalLM(Gemma4ForCausalLM):
    """Gemma4ForCausalLM with per-layer FFN widths and a down_proj bias."""

    def __init__(self, config):
        super().__init__(config)
        install_flap_mlps(self, config)


_FLAP_CLASSES = {
    "Gemma4FlapForConditionalGeneration": Gemma4FlapForConditionalGeneration,
    "Gemma4FlapForCausalLM": Gemma4FlapForCausalLM,
}
_STOCK_CLASSES = {
    "Gemma4ForConditionalGeneration": Gemma4ForConditionalGeneration,
    "Gemma4ForCausalLM": Gemma4ForCausalLM,
}


def is_flap_pruned(config) -> bool:
    return bool(getattr(text_config_of(config), "flap_pruned", False))


def model_class_for(config):
    """The class that loads `config`: the FLAP subclass when the checkpoint is pruned."""
    architecture = (getattr(config, "architectures", None) or ["Gemma4ForConditionalGeneration"])[0]
    stock_name = FLAP_ARCHITECTURES.get(architecture, architecture)
    if stock_name not in _STOCK_CLASSES:
        raise ValueError(f"architectures: {architecture!r} is not a Gemma 4 model this studio can load")
    if is_flap_pruned(config):
        return _FLAP_CLASSES[f"Gemma4Flap{stock_name.removeprefix('Gemma4')}"]
    return _STOCK_CLASSES[stock_name]


def load_model(path: str | Path, dtype: torch.dtype | str = torch.float32, device: str | None = None):
    """Load a Gemma 4 checkpoint (stock or FLAP-pruned) in eval mode."""
    config = AutoConfig.from_pretrained(path)
    cls = model_class_for(config)
    model = cls.from_pretrained(path, config=config, dtype=dtype)
    if device:
        model.to(device)
    return model.eval()


def mark_pruned(model, widths: list[int]) -> None:
    """Record per-layer widths in `model.config` the way pruned checkpoints store them.

    The model's class becomes the matching FLAP subclass (which differs only in how it is built),
    so that `save_pretrained` writes the FLAP architecture name into config.json.
    """
    flap_class = mark_config_pruned(model.config, widths)
    if not isinstance(model, flap_class):
        model.__class__ = flap_class


def mark_config_pruned(config, widths: list[int]):
    """Record per-layer widths and the FLAP architecture in `config`; return the FLAP class."""
    text_config = text_config_of(config)
    text_config.intermediate_sizes = [int(w) for w in widths]
    text_config.flap_pruned = True
    flap_class = model_class_for(config)
    config.architectures = [flap_class.__name__]
    return flap_class


def load_text_config(path: str | Path):
    """The decoder config from a checkpoint folder, a config.json, or a bare text-config JSON.

    Works without weights, so presets and size estimates can be checked against published configs.
    """
    import json

    from transformers import Gemma4TextConfig

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {path}")
    data = json.loads(path.read_text())
    text = data.get("text_config", data)
    text = {k: v for k, v in text.items() if not k.startswith("_")}
    text.pop("model_type", None)
    return Gemma4TextConfig(**text)
