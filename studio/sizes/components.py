"""The parts of a Gemma 4 checkpoint that sizes are reported by, and how a tensor name maps to one.

One taxonomy for every report: the `estimate` command, the model card, the model tab, the plan
tab's estimate and the analysis figures.
"""

from __future__ import annotations

# Components in the order reports list them.
COMPONENTS = (
    "embeddings",
    "ple_embeddings",
    "attention",
    "ffn",
    "ple_projections",
    "norms",
    "lm_head",
    "vision_tower",
    "audio_tower",
    "towers",
    "other",
)
COMPONENT_LABELS = {
    "embeddings": "token embeddings",
    "ple_embeddings": "per-layer embeddings (PLE table)",
    "attention": "attention q/k/v/o",
    "ffn": "FFN gate/up/down (+ FLAP bias)",
    "ple_projections": "PLE projections and gates",
    "norms": "norms and layer scalars",
    "lm_head": "lm_head (untied)",
    "vision_tower": "vision tower",
    "audio_tower": "audio tower",
    "towers": "vision + audio towers (combined)",
    "other": "other",
}
_PLE_MODULES = {"per_layer_model_projection", "per_layer_input_gate", "per_layer_projection"}
_VISION = {"vision_tower", "embed_vision"}
_AUDIO = {"audio_tower", "embed_audio"}


def component_of(tensor_name: str) -> str:
    """The component a tensor belongs to, from its Hugging Face name (multimodal or text-only)."""
    parts = tensor_name.split(".")
    module = parts[:-1]
    leaf = module[-1] if module else ""
    if _VISION & set(module):
        return "vision_tower"
    if _AUDIO & set(module):
        return "audio_tower"
    if leaf == "lm_head":
        return "lm_head"
    if leaf == "embed_tokens_per_layer":
        return "ple_embeddings"
    if leaf == "embed_tokens":
        return "embeddings"
    if leaf in _PLE_MODULES:
        return "ple_projections"
    if leaf.endswith("norm") or parts[-1] == "layer_scalar":
        return "norms"
    if "self_attn" in module:
        return "attention"
    if "mlp" in module:
        return "ffn"
    return "other"
