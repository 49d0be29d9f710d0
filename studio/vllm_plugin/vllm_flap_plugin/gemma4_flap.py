"""FLAP-pruned Gemma 4 in vLLM: per-layer FFN widths and a down_proj bias.

vLLM's `Gemma4DecoderLayer` builds its MLP by calling the module-level name `Gemma4MLP` with one
width for every layer. While a FLAP model is being constructed, that name is pointed at a builder
that reads the layer index from the module prefix and returns a `FlapGemma4MLP` of the pruned width
with a down_proj bias; the stock name is restored right after construction, so models built later
in the same process (other architectures, unpruned Gemma 4) are untouched. The result is then
checked layer by layer, so a vLLM whose construction path differs fails at load instead of serving
a model with the wrong widths or without the bias.

The parameters keep vLLM's names (`gate_up_proj`, `down_proj`), so vLLM's own weight mapping
(gate/up fused into `gate_up_proj`, `model.language_model.` -> `language_model.model.`) and
quantization configs (GPTQ `dynamic` rules match the same prefixes) apply unchanged. The bias is a
registered parameter of `down_proj`, so vLLM's loader, which skips unexpected `.bias` tensors,
loads it instead of skipping it; it is created in the model dtype even when down_proj is a GPTQ
layer, as vLLM's linear layers do for every bias.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

from torch import nn

import vllm
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models import gemma4 as vllm_gemma4
from vllm.model_executor.models.utils import PPMissingLayer, extract_layer_index

# The keyword arguments vLLM's Gemma4DecoderLayer passes to Gemma4MLP.
_MLP_ARGUMENTS = ("hidden_size", "intermediate_size", "hidden_activation", "quant_config", "prefix")


class UnsupportedVLLMError(RuntimeError):
    """vLLM's Gemma 4 implementation is not the one this plugin was written against."""


def unsupported_vllm(what: str) -> UnsupportedVLLMError:
    return UnsupportedVLLMError(
        f"vllm_flap_plugin cannot serve FLAP-pruned Gemma 4 on vLLM {vllm.__version__}: {what}. "
        "The plugin was written against the Gemma 4 implementation of vLLM 0.32/0.33; "
        "serve with one of those versions or update the plugin."
    )


def check_vllm_internals() -> None:
    """Raise `UnsupportedVLLMError` unless vLLM's Gemma 4 has the pieces this plugin relies on."""
    for name in ("Gemma4MLP", "Gemma4DecoderLayer", "Gemma4Model", "Gemma4ForCausalLM"):
        if not inspect.isclass(getattr(vllm_gemma4, name, None)):
            raise unsupported_vllm(f"vllm.model_executor.models.gemma4 has no class {name}")
    parameters = inspect.signature(vllm_gemma4.Gemma4MLP.__init__).parameters
    missing = [name for name in _MLP_ARGUMENTS if name not in parameters]
    if missing:
        raise unsupported_vllm(f"Gemma4MLP.__init__ takes no {', '.join(missing)}")
    if "bias" not in inspect.signature(RowParallelLinear.__init__).parameters:
        raise unsupported_vllm("RowParallelLinear takes no bias argument")


check_vllm_internals()


class FlapGemma4MLP(vllm_gemma4.Gemma4MLP):
    """vLLM's Gemma 4 MLP at a given width, with the FLAP down_proj bias."""

    def __init__(self, hidden_size: int, width: int, hidden_activation: str, quant_config=None, prefix: str = ""):
        super().__init__(
            hidden_size=hidden_size,
            intermediate_size=width,
            hidden_activation=hidden_activation,
            quant_config=quant_config,
            prefix=prefix,
        )
        self.width = width
        # The stock down_proj has no bias; the inherited forward adds this one's.
        self.down_proj = RowParallelLinear(
            width, hidden_size, bias=True, quant_config=quant_config, prefix=f"{prefix}.down_proj"
        )


def text_config_of(hf_config):
    """The decoder's config: `text_config` of a multimodal config, the config itself otherwise."""
    return getattr(hf_config, "text_config", None) or hf_config


def flap_widths(hf_config) -> list[int] | None:
    """Each decoder layer's FFN width of a FLAP-pruned config, or None for an unpruned one."""
    text_config = text_config_of(hf_config)
    if not getattr(text_config, "flap_pruned", False):
        return None
    widths = getattr(text_config, "intermediate_sizes", None)
    layers = text_config.num_hidden_layers
    if not isinstance(widths, (list, tuple)) or len(widths) != layers:
        raise ValueError(
            f"text_config.intermediate_sizes: expected one width per decoder layer ({layers}) "
            f"in a config with flap_pruned=true, got {widths!r}"
        )
    if not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"text_config.intermediate_sizes: widths must be positive integers, got {widths!r}")
    return list(widths)


@contextlib.contextmanager
def flap_mlps(widths: Sequence[int]) -> Iterator[None]:
    """While active, vLLM's Gemma 4 decoder layers build `FlapGemma4MLP`s of `widths`.

    Model construction in a vLLM process is sequential, so the name is swapped only for the
    duration of one model's `__init__`.
    """
    stock = vllm_gemma4.Gemma4MLP

    def build_mlp(*, hidden_size, intermediate_size, hidden_activation, quant_config=None, prefix=""):
        width = widths[extract_layer_index(prefix)]
        return FlapGemma4MLP(hidden_size, width, hidden_activation, quant_config, prefix)

    vllm_gemma4.Gemma4MLP = build_mlp
    try:
        yield
    finally:
        vllm_gemma4.Gemma4MLP = stock


def check_flap_mlps(layers: nn.ModuleList, widths: Sequence[int]) -> None:
    """Raise unless every decoder layer of this process got a FLAP MLP of its planned width."""
    for index, layer in enumerate(layers):
        if isinstance(layer, PPMissingLayer):
            continue
        mlp = getattr(layer, "mlp", None)
        if not isinstance(mlp, FlapGemma4MLP):
            raise unsupported_vllm(
                f"decoder layer {index} was built with {type(mlp).__name__}, not through "
                "gemma4.Gemma4MLP, so the pruned widths and the down_proj bias would be lost"
            )
        if mlp.width != widths[index]:
            raise unsupported_vllm(f"decoder layer {index} has width {mlp.width}, expected {widths[index]}")


class Gemma4FlapForCausalLM(vllm_gemma4.Gemma4ForCausalLM):
    """vLLM's Gemma4ForCausalLM with per-layer FFN widths and a down_proj bias when pruned."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        widths = flap_widths(vllm_config.model_config.hf_config)
        if widths is None:
            super().__init__(vllm_config=vllm_config, prefix=prefix)
            return
        with flap_mlps(widths):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        check_flap_mlps(self.model.layers, widths)
