"""A Gemma 4 model's structure and sizes from its config alone (no weights are read).

Parameter counts come from building the model on PyTorch's `meta` device: every tensor gets its
exact shape but no storage, so a 42-layer E4B config is counted in a fraction of a second. Sizes
after pruning and quantization are computed from those shapes:

- pruning changes each layer's gate/up/down projections from `original` to `kept` channels and adds
  a `down_proj` bias of `hidden_size` values to every layer (the FLAP checkpoint format has one in
  each layer, zero where nothing was pruned);
- GPTQ (GPTQ v1 layout, as GPTQModel writes it) stores each quantized linear as packed `bits`-bit
  weights (`qweight`), one float16 scale per output and group (`scales`), packed zero points
  (`qzeros`, int32 holding 32/bits values) and one int32 group index per input (`g_idx`);
  everything else keeps the source dtype (2 bytes for bfloat16).

`studio.sizes.estimate` computes the same numbers (tests check they agree); this module works
from shapes computed once per model, so the plan editor can re-estimate on every edit in
milliseconds instead of building a meta model per edit.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from studio.modeling import original_widths
from studio.gptq.rules import QUANTIZED_MODULES

# The model card's published figures for google/gemma-4-E4B-it and its compressed version.
CARD_FIGURES = {
    "original_checkpoint_gb": 16.0,  # "~16 GB for the original bfloat16 model"
    "compressed_checkpoint_gb": 9.9,  # "Total Model Size: ~9.9 GB"
    "ffn_params_removed_claim": 0.15,  # prose claim; its own width table gives 10.7%
}
COMPONENTS = ("embeddings", "per-layer embeddings (PLE)", "attention", "ffn", "norms", "vision tower", "audio tower", "other")


def load_full_config(path: str | Path) -> dict:
    """config.json of a checkpoint folder (or a bare config file) as a mapping."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"model: no config.json at {path}")
    return json.loads(path.read_text())


def component_of(name: str) -> str:
    """The component a parameter belongs to, from its Hugging Face name."""
    if "vision_tower" in name or "embed_vision" in name:
        return "vision tower"
    if "audio_tower" in name or "embed_audio" in name:
        return "audio tower"
    if "embed_tokens_per_layer" in name or "per_layer" in name:
        return "per-layer embeddings (PLE)"
    if "embed_tokens" in name or "lm_head" in name:
        return "embeddings"
    if ".mlp." in name:
        return "ffn"
    if ".self_attn." in name and not name.endswith("norm.weight"):
        return "attention"
    if "norm" in name or "layer_scalar" in name:
        return "norms"
    return "other"


def parameter_shapes(config_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the (unpruned) model, built on the meta device.

    A config with a `vision_config` is built as Gemma4ForConditionalGeneration (towers included);
    a bare text config as Gemma4TextModel.
    """
    import torch
    from transformers import AutoConfig, Gemma4ForConditionalGeneration, Gemma4TextModel

    from studio.modeling import load_text_config, model_construction

    data = load_full_config(config_path)
    folder = Path(config_path)
    with model_construction(), torch.device("meta"):
        if "vision_config" in data and folder.is_dir():
            config = AutoConfig.from_pretrained(folder)
            text = getattr(config, "text_config", config)
            if getattr(text, "flap_pruned", False):  # count the unpruned model; plans apply to it
                text.flap_pruned = False
            config.architectures = ["Gemma4ForConditionalGeneration"]
            model = Gemma4ForConditionalGeneration(config)
        else:
            model = Gemma4TextModel(load_text_config(config_path))
        model.tie_weights()  # under the lock too: a concurrent load's switches would make it a no-op
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}  # tied weights once
    for module_name, module in model.named_modules():  # persistent buffers are saved too
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer_name not in module._non_persistent_buffers_set:
                shapes[f"{module_name}.{buffer_name}" if module_name else buffer_name] = tuple(buffer.shape)
    return shapes


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    if "layers" in parts and "vision_tower" not in name and "audio_tower" not in name:
        index = parts[parts.index("layers") + 1]
        return int(index) if index.isdigit() else None
    return None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class QuantSettings:
    """What the size estimate needs to know about GPTQ."""

    enabled: bool = True
    bits: int = 4
    group_size: int = 128
    dtype_bytes: int = 2  # bfloat16 for everything not quantized


def _gptq_bytes(in_features: int, out_features: int, bits: int, group_size: int) -> int:
    groups = -(-in_features // (group_size if group_size > 0 else in_features))
    qweight = in_features * out_features * bits // 8
    scales = groups * out_features * 2
    qzeros = groups * out_features * bits // 8
    g_idx = in_features * 4
    return qweight + scales + qzeros + g_idx


@dataclass(frozen=True)
class SizeEstimate:
    """Parameter counts and checkpoint bytes (original, pruned, pruned + quantized) by component."""

    params: dict[str, dict[str, int]]  # stage -> component -> parameters
    bytes: dict[str, dict[str, int]]  # stage -> component -> bytes
    ffn_params_removed: float

    def total_params(self, stage: str) -> int:
        return sum(self.params[stage].values())

    def total_bytes(self, stage: str) -> int:
        return sum(self.bytes[stage].values())

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "total_params": {s: self.total_params(s) for s in self.params},
            "total_bytes": {s: self.total_bytes(s) for s in self.bytes},
        }


def estimate_sizes(
    shapes: dict[str, tuple[int, ...]], widths: list[int], original: list[int], quant: QuantSettings = QuantSettings()
) -> SizeEstimate:
    """Sizes before pruning, after pruning to `widths`, and after quantizing the pruned model."""
    params = {stage: Counter() for stage in ("original", "pruned", "quantized")}
    nbytes = {stage: Counter() for stage in ("original", "pruned", "quantized")}
    quantized_suffixes = tuple(f"{m}.weight" for m in QUANTIZED_MODULES)
    hidden = None
    for name, shape in shapes.items():
        component = component_of(name)
        count = _numel(shape)
        params["original"][component] += count
        nbytes["original"][component] += count * quant.dtype_bytes
        layer = _layer_index(name)
        pruned_shape = shape
        if layer is not None and ".mlp." in name and name.endswith("proj.weight"):
            kept, full = widths[layer], original[layer]
            hidden = shape[0] if "down_proj" in name else shape[1]
            pruned_shape = (shape[0], kept) if "down_proj" in name else (kept, shape[1])
            if shape != ((hidden, full) if "down_proj" in name else (full, hidden)):
                raise ValueError(f"widths: layer {layer} has FFN shape {shape}, expected width {full}")
        pruned_count = _numel(pruned_shape)
        params["pruned"][component] += pruned_count
        nbytes["pruned"][component] += pruned_count * quant.dtype_bytes
        params["quantized"][component] += pruned_count
        if quant.enabled and layer is not None and name.endswith(quantized_suffixes):
            out_features, in_features = pruned_shape
            nbytes["quantized"][component] += _gptq_bytes(in_features, out_features, quant.bits, quant.group_size)
        else:
            nbytes["quantized"][component] += pruned_count * quant.dtype_bytes
    if hidden is not None:
        # A FLAP checkpoint gives every layer's down_proj a bias (zero where nothing was pruned).
        biases = len(widths) * hidden
        for stage in ("pruned", "quantized"):
            params[stage]["ffn"] += biases
            nbytes[stage]["ffn"] += biases * quant.dtype_bytes
    ffn_before = params["original"]["ffn"]
    removed = 1 - params["pruned"]["ffn"] / ffn_before if ffn_before else 0.0
    order = {c: i for i, c in enumerate(COMPONENTS)}
    as_dict = lambda counter: {k: int(counter[k]) for k in sorted(counter, key=order.get) if counter[k]}  # noqa: E731
    return SizeEstimate(
        params={s: as_dict(c) for s, c in params.items()},
        bytes={s: as_dict(c) for s, c in nbytes.items()},
        ffn_params_removed=removed,
    )


def attention_kinds(text_config) -> list[str]:
    return [("full" if t == "full_attention" else "sliding") for t in text_config.layer_types]


# What each KV role of `kv_roles` means (the plan table's legend and the width chart's).
KV_ROLES = {
    "own": "computes its own keys and values",
    "stores": "computes its keys and values and keeps them for the KV-shared tail",
    "shared": "reuses an earlier layer's keys and values (no KV projections of its own)",
}


def kv_roles(text_config) -> list[str]:
    """Per layer, one of `KV_ROLES`: 'shared', 'stores' or 'own'."""
    modes = getattr(text_config, "kv_sharing_modes", None) or [None] * text_config.num_hidden_layers
    return ["shared" if m == "reuse" else "stores" if m == "store" else "own" for m in modes]


def structure_summary(text_config, shapes: dict[str, tuple[int, ...]]) -> dict:
    """Layers, attention types, the KV-shared tail, FFN widths and parameters by component."""
    kinds = attention_kinds(text_config)
    roles = kv_roles(text_config)
    by_component = Counter()
    for name, shape in shapes.items():
        by_component[component_of(name)] += _numel(shape)
    shared = [i for i, r in enumerate(roles) if r == "shared"]
    return {
        "layers": text_config.num_hidden_layers,
        "hidden_size": text_config.hidden_size,
        "attention": {"sliding": kinds.count("sliding"), "full": kinds.count("full")},
        "full_attention_layers": [i for i, k in enumerate(kinds) if k == "full"],
        "kv_shared_layers": shared,
        "ffn_widths": original_widths(text_config),
        "params_by_component": {k: int(by_component[k]) for k in COMPONENTS if by_component[k]},
        "total_params": int(sum(by_component.values())),
    }
