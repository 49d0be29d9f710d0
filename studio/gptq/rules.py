"""Which Gemma 4 modules GPTQ W4A16 quantizes, written as `dynamic` rules that GPTQModel and vLLM
read the same way.

The card quantizes four linear modules per decoder layer (self_attn.o_proj, mlp.gate_proj,
mlp.up_proj, mlp.down_proj) and keeps everything else in the source dtype. Two programs decide
independently which modules are quantized, and they must agree:

- GPTQModel, while quantizing, walks its Gemma 4 module tree (q/k/v/o, gate/up/down,
  per_layer_input_gate, per_layer_projection of every decoder layer) and skips a module when its
  first matching `dynamic` rule is negative (`-:` prefix). It matches each rule with a
  start-anchored regex search against the Hugging Face module name
  (`model.language_model.layers.3.self_attn.q_proj`), and before that it reorders the rules so
  that all negative rules come first; that reordered dict is what it writes to config.json.
- vLLM, while building the model, asks the quantization config about every linear layer under
  vLLM's own name: q/k/v are fused into `qkv_proj`, gate/up into `gate_up_proj`, and the
  multimodal wrapper renames `model.language_model.` to `language_model.model.` and
  `model.vision_tower` to `vision_tower`. It walks the `dynamic` dict in its stored order, takes the
  first rule whose regex matches at the start of the name (a negative rule means "not quantized"),
  and honours only bits/group_size/desc_act/sym of a positive rule.

So every rule below is written to match both names of a module (`.*\\.self_attn\\.(q|k|v|qkv)_proj$`
rather than the Hugging Face name alone), and `dynamic_override` reproduces the matching both
programs do, so that tests can check the decision for every module of a model under both naming
schemes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The four linear modules of each decoder layer that the card quantizes (Hugging Face names).
QUANTIZED_MODULES = ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# Negative rules: these modules stay in the source dtype. Each pattern matches the Hugging Face and
# the vLLM name of the modules it names. Norms and biases are not linear modules and are never
# quantized; embeddings are listed so that config.json says so.
DEFAULT_DYNAMIC: dict[str, dict] = {
    r"-:.*\.self_attn\.(?:q_proj|k_proj|v_proj|qkv_proj)$": {},
    r"-:.*\.per_layer_input_gate$": {},
    r"-:.*\.per_layer_projection$": {},
    r"-:(?:.*\.)?per_layer_model_projection$": {},
    r"-:(?:.*\.)?(?:vision_tower|embed_vision)\.": {},
    r"-:(?:.*\.)?(?:audio_tower|embed_audio)\.": {},
    r"-:(?:.*\.)?embed_tokens(?:_per_layer)?$": {},
    r"-:(?:.*\.)?lm_head$": {},
}

# Fields of a positive rule that vLLM applies; GPTQModel honours more (damp_percent, mse, ...), so a
# positive rule setting anything else would quantize differently from how vLLM reads it.
VLLM_OVERRIDE_FIELDS = frozenset({"bits", "group_size", "desc_act", "sym"})

# vLLM fuses these Hugging Face projections into one linear layer.
VLLM_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

# vLLM's renaming of checkpoint prefixes for Gemma4ForConditionalGeneration (its hf_to_vllm_mapper),
# applied in this order, first match only. The text-only Gemma4ForCausalLM keeps `model.layers.N`.
_VLLM_MULTIMODAL_PREFIXES = (
    ("model.vision_tower", "vision_tower"),
    ("model.embed_vision", "embed_vision"),
    ("model.audio_tower.", "audio_tower."),
    ("model.embed_audio.", "embed_audio."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model", "language_model.model"),
)

_DECODER_PROJECTION = re.compile(
    r"^(?P<stack>.*\.layers\.\d+)\.(?P<block>self_attn|mlp)\.(?P<proj>q_proj|k_proj|v_proj|gate_proj|up_proj)$"
)
_FUSED_NAME = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
_TOWERS = ("vision_tower", "audio_tower")


def _split_rule(pattern: str) -> tuple[bool, str]:
    """(is_negative, regex) of one `dynamic` key."""
    if pattern.startswith("-:"):
        return True, pattern[2:]
    return False, pattern[2:] if pattern.startswith("+:") else pattern


def ordered_rules(dynamic: Mapping[str, Mapping]) -> list[tuple[str, Mapping]]:
    """The rules in the order both programs try them.

    GPTQModel's QuantizeConfig moves negative rules before positive ones (keeping their relative
    order) and saves the dict in that order; vLLM then reads the saved order as is.
    """
    items = list(dynamic.items())
    return [item for item in items if item[0].startswith("-")] + [item for item in items if not item[0].startswith("-")]


def validate_dynamic(dynamic: Mapping[str, Mapping]) -> None:
    """Reject rules that would not mean the same thing to GPTQModel and vLLM."""
    if not isinstance(dynamic, Mapping):
        raise ValueError(f"quantize.dynamic: must be a mapping of regex -> overrides, got {type(dynamic).__name__}")
    for pattern, overrides in dynamic.items():
        _negative, regex = _split_rule(pattern)
        try:
            re.compile(regex)
        except re.error as err:
            raise ValueError(f"quantize.dynamic: rule {pattern!r} is not a valid regex: {err}") from err
        if not isinstance(overrides, Mapping):
            raise ValueError(f"quantize.dynamic: rule {pattern!r} must map to a dict of overrides")
        ignored = set(overrides) - VLLM_OVERRIDE_FIELDS
        if ignored and not pattern.startswith("-:"):
            raise ValueError(
                f"quantize.dynamic: rule {pattern!r} sets {', '.join(sorted(ignored))}, which vLLM ignores "
                f"(it honours only {', '.join(sorted(VLLM_OVERRIDE_FIELDS))})"
            )


def dynamic_override(dynamic: Mapping[str, Mapping], module_name: str) -> dict | bool | None:
    """What the first matching rule says about `module_name`: False (skip), a dict of overrides
    (quantize with them) or None (no rule matches: quantize with the base settings)."""
    for pattern, overrides in ordered_rules(dynamic):
        negative, regex = _split_rule(pattern)
        if re.match(regex, module_name):
            return False if negative else dict(overrides)
    return None


def is_selected(module_name: str) -> bool:
    """Whether `module_name` is one of the card's four quantized projections of a decoder layer,
    under Hugging Face or vLLM naming (vLLM's fused `gate_up_proj` included)."""
    if any(tower in module_name.split(".") for tower in _TOWERS):
        return False
    return re.search(r"(?:^|\.)layers\.\d+\.(?:self_attn\.o_proj|mlp\.(?:gate_proj|up_proj|gate_up_proj|down_proj))$", module_name) is not None


def is_quantized(module_name: str, dynamic: Mapping[str, Mapping] = DEFAULT_DYNAMIC) -> bool:
    """The keep/quantize decision for a linear module: it must be selected (GPTQModel's module tree
    for Gemma 4 decoder layers; vLLM's set of modules with packed weights in the checkpoint) and no
    negative `dynamic` rule may match it first."""
    return is_selected(module_name) and dynamic_override(dynamic, module_name) is not False


def is_skipped_by_dynamic(module_name: str, dynamic: Mapping[str, Mapping] = DEFAULT_DYNAMIC) -> bool:
    """Whether the `dynamic` rules alone keep `module_name` unquantized (vLLM's check)."""
    return dynamic_override(dynamic, module_name) is False


def vllm_module_name(hf_name: str, multimodal: bool) -> str:
    """The name vLLM gives the linear layer that holds the Hugging Face module `hf_name`.

    `multimodal` is True for Gemma4ForConditionalGeneration checkpoints (names under
    `model.language_model.`), False for the text-only Gemma4ForCausalLM (`model.layers.N`).
    q/k/v and gate/up projections of decoder layers map to vLLM's fused layers; the vision and
    audio towers keep their Hugging Face module names under the renamed prefix.
    """
    name = hf_name
    if multimodal:
        # The mapper works on tensor names (`lm_head.weight`); module names lack the suffix.
        tensor_name = hf_name + "."
        for old, new in _VLLM_MULTIMODAL_PREFIXES:
            if tensor_name.startswith(old):
                name = (new + tensor_name[len(old) :])[:-1]
                break
    match = _DECODER_PROJECTION.match(name)
    if match and not any(tower in name.split(".") for tower in _TOWERS):
        name = f"{match['stack']}.{match['block']}.{_FUSED_NAME[match['proj']]}"
    return name
