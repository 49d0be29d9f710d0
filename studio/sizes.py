"""True sizes of Gemma 4 checkpoints: parameters and bytes per component.

Two ways to the same numbers:

- `measure_checkpoint(folder)` reads the safetensors headers of a checkpoint (no tensor data is
  loaded) and adds up every tensor's elements and bytes by component;
- `estimate(config, plan, quantize)` computes the same from a config alone: it builds the model on
  PyTorch's meta device (shapes without memory) with the studio's own classes, so per-layer head
  dims, KV sharing, per-layer embeddings and the FLAP widths and down_proj bias come out exactly as a
  saved checkpoint has them; quantized modules are then replaced by GPTQ v1 storage.

GPTQ v1 storage of one linear module with K input and N output features, `bits` b and group size g
(GPTQModel's packing; it writes g_idx for every module, with or without desc_act):

    qweight  int32    [K * b / 32, N]
    qzeros   int32    [ceil(K / g), N * b / 32]
    scales   float16  [ceil(K / g), N]
    g_idx    int32    [K]
    bias     model dtype [N]   (kept at the model's precision by studio.gptq.quantize)

Parameters count what the model computes with: a quantized module counts its K * N weights (not the
packed int32 elements); scales, zeros and g_idx are storage, counted in bytes only. So pruning changes
parameters, quantization changes bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from studio.checkpoint import DTYPES, SAFETENSORS_DTYPES, SAFETENSORS_FLOAT_CODES, is_multimodal, torch_dtype_of_code

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
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
_PLE_MODULES = {"per_layer_model_projection", "per_layer_input_gate", "per_layer_projection"}
_VISION = {"vision_tower", "embed_vision"}
_AUDIO = {"audio_tower", "embed_audio"}
_DTYPE_BYTES = {code: size for code, (_, size) in SAFETENSORS_DTYPES.items()}
_TORCH_TO_SAFETENSORS = {torch_dtype_of_code(code): code for code in SAFETENSORS_DTYPES}
_DTYPE_NAMES = {name: dtype.safetensors for name, dtype in DTYPES.items()}
_FLOAT_DTYPES = SAFETENSORS_FLOAT_CODES


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: its name, shape and safetensors dtype ("BF16", "I32", ...)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class ComponentSize:
    """Parameters and bytes of one component; `quantized_*` is the part held as GPTQ storage."""

    params: int = 0
    bytes: int = 0
    quantized_params: int = 0
    quantized_bytes: int = 0

    def __add__(self, other: ComponentSize) -> ComponentSize:
        return ComponentSize(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


@dataclass(frozen=True)
class SizeReport:
    """Sizes by component, GPTQ storage by part, and (for measured checkpoints) file bytes.

    `tensor_bytes` is the sum of the tensors' data; `file_bytes` adds the safetensors headers
    (None for estimates, which have no files).
    """

    components: dict[str, ComponentSize]
    gptq_parts: dict[str, int] = field(default_factory=dict)
    file_bytes: int | None = None
    assumptions: tuple[str, ...] = ()

    @property
    def params(self) -> int:
        return sum(c.params for c in self.components.values())

    @property
    def tensor_bytes(self) -> int:
        return sum(c.bytes for c in self.components.values())

    @property
    def quantized_params(self) -> int:
        return sum(c.quantized_params for c in self.components.values())

    @property
    def quantized_bytes(self) -> int:
        return sum(c.quantized_bytes for c in self.components.values())

    def component(self, name: str) -> ComponentSize:
        return self.components.get(name, ComponentSize())

    @classmethod
    def from_dict(cls, data: Mapping) -> SizeReport:
        """The inverse of `to_dict` (derived totals are recomputed)."""
        return cls(
            {name: ComponentSize(**size) for name, size in data["components"].items()},
            dict(data.get("gptq_parts") or {}),
            data.get("file_bytes"),
            tuple(data.get("assumptions") or ()),
        )

    def to_dict(self) -> dict:
        return {
            "components": {name: asdict(size) for name, size in self.components.items()},
            "gptq_parts": dict(self.gptq_parts),
            "params": self.params,
            "tensor_bytes": self.tensor_bytes,
            "file_bytes": self.file_bytes,
            "assumptions": list(self.assumptions),
        }


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


def tally(tensors: Iterable[TensorInfo], bits: int | None = None) -> SizeReport:
    """Add up `tensors` by component. `bits` (needed when GPTQ tensors are present) turns a
    qweight's packed shape back into its module's K * N weights."""
    totals: dict[str, ComponentSize] = {}
    parts = dict.fromkeys(GPTQ_PARTS, 0)
    for tensor in tensors:
        kind = tensor.name.rsplit(".", 1)[-1]
        if kind in GPTQ_PARTS:
            params = 0
            if kind == "qweight":
                if not bits:
                    raise ValueError(f"bits: needed to count the weights of {tensor.name}")
                packed_rows, out_features = tensor.shape
                params = packed_rows * 32 // bits * out_features
            size = ComponentSize(params, tensor.nbytes, params, tensor.nbytes)
            parts[kind] += tensor.nbytes
        else:
            size = ComponentSize(tensor.numel, tensor.nbytes)
        name = component_of(tensor.name)
        totals[name] = totals.get(name, ComponentSize()) + size
    ordered = {name: totals[name] for name in COMPONENTS if name in totals}
    return SizeReport(ordered, parts if any(parts.values()) else {})


# -- measuring checkpoints ----------------------------------------------------------------------


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The weight files of a checkpoint: those its index lists, else `model.safetensors`.

    Other `.safetensors` files (FLAP's `flap_stats.safetensors`) are not weights.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"checkpoint: no model.safetensors or model.safetensors.index.json in {folder}")


def read_tensor_infos(path: str | Path) -> list[TensorInfo]:
    """Names, shapes and dtypes from one safetensors file's header (no tensor data is read)."""
    path = Path(path)
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    return [
        TensorInfo(name, tuple(entry["shape"]), entry["dtype"])
        for name, entry in header.items()
        if name != "__metadata__"
    ]


def checkpoint_bits(folder: str | Path) -> int | None:
    """GPTQ bits from quantize_config.json or config.json's quantization_config (None if absent)."""
    folder = Path(folder)
    quantize_config = folder / "quantize_config.json"
    if quantize_config.is_file():
        return int(json.loads(quantize_config.read_text(encoding="utf-8"))["bits"])
    config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if (folder / "config.json").is_file() else {}
    quantization = config.get("quantization_config")
    return int(quantization["bits"]) if quantization else None


def measure_checkpoint(folder: str | Path, float_dtype: str | None = None) -> SizeReport:
    """Exact parameters and bytes of a checkpoint folder, from its safetensors headers.

    With `float_dtype` ("bfloat16", ...), unquantized floating-point tensors are counted as if
    stored in that dtype (to compare a float32 checkpoint with a bf16 export); `file_bytes` is then
    still what the files take on disk.
    """
    files = checkpoint_files(folder)
    infos = [info for path in files for info in read_tensor_infos(path)]
    if float_dtype is not None:
        target = _safetensors_dtype(float_dtype)
        infos = [
            TensorInfo(i.name, i.shape, target)
            if i.dtype in _FLOAT_DTYPES and i.name.rsplit(".", 1)[-1] not in GPTQ_PARTS
            else i
            for i in infos
        ]
    report = tally(infos, checkpoint_bits(folder))
    return SizeReport(report.components, report.gptq_parts, sum(p.stat().st_size for p in files))


# -- estimating from a config -------------------------------------------------------------------


def _safetensors_dtype(name: str) -> str:
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype: must be one of {', '.join(_DTYPE_NAMES)}, got {name!r}")
    return _DTYPE_NAMES[name]


def _meta_model(config, widths: list[int] | None):
    """The model for `config` (a full Gemma 4 config or a text config) built on the meta device,
    at FLAP widths `widths` when given."""
    import copy

    from studio.modeling import model_class_for, model_construction, text_config_of

    config = copy.deepcopy(config)
    text_config = text_config_of(config)
    if widths is not None:
        text_config.intermediate_sizes = [int(w) for w in widths]
        text_config.flap_pruned = True
    else:
        text_config.flap_pruned = False
    multimodal = is_multimodal(config)
    config.architectures = ["Gemma4ForConditionalGeneration" if multimodal else "Gemma4ForCausalLM"]
    with model_construction(), torch.device("meta"):
        model = model_class_for(config)(config)
    if getattr(text_config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        # Share the tensor explicitly, so the tied lm_head is counted once whatever tying did.
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model


def model_tensor_infos(config, widths: list[int] | None = None, dtype: str = "bfloat16") -> list[TensorInfo]:
    """The tensors `save_pretrained` would write for `config` in `dtype`: parameters (tied ones
    once) and persistent buffers."""
    target = _safetensors_dtype(dtype)
    model = _meta_model(config, widths)
    infos = []
    for name, parameter in model.named_parameters():  # remove_duplicate: tied lm_head listed once
        infos.append(TensorInfo(name, tuple(parameter.shape), target if parameter.is_floating_point() else _TORCH_TO_SAFETENSORS[parameter.dtype]))
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer is None or buffer_name in module._non_persistent_buffers_set:
                continue
            name = f"{module_name}.{buffer_name}" if module_name else buffer_name
            infos.append(TensorInfo(name, tuple(buffer.shape), target if buffer.is_floating_point() else _TORCH_TO_SAFETENSORS[buffer.dtype]))
    return infos


def gptq_tensor_infos(module: str, in_features: int, out_features: int, bits: int, group_size: int) -> list[TensorInfo]:
    """The GPTQ v1 tensors that replace `module.weight` (see the module docstring)."""
    if (in_features * bits) % 32 or (out_features * bits) % 32:
        raise ValueError(f"{module}: {in_features} x {out_features} features do not pack into int32 at {bits} bits")
    groups = 1 if group_size == -1 else math.ceil(in_features / group_size)
    return [
        TensorInfo(f"{module}.qweight", (in_features * bits // 32, out_features), "I32"),
        TensorInfo(f"{module}.qzeros", (groups, out_features * bits // 32), "I32"),
        TensorInfo(f"{module}.scales", (groups, out_features), "F16"),
        TensorInfo(f"{module}.g_idx", (in_features,), "I32"),
    ]


def quantized_tensor_infos(infos: list[TensorInfo], quantize) -> list[TensorInfo]:
    """`infos` with every module the GPTQ settings quantize stored as GPTQ v1 tensors.

    `quantize` is a `studio.gptq.quantize.QuantizeSettings` (or anything with bits, group_size and
    dynamic); modules are chosen by `studio.gptq.rules.is_quantized`, as GPTQModel chooses them.
    """
    from studio.gptq.rules import is_quantized

    result = []
    for info in infos:
        module, _, kind = info.name.rpartition(".")
        if kind == "weight" and len(info.shape) == 2 and is_quantized(module, quantize.dynamic):
            out_features, in_features = info.shape
            result.extend(gptq_tensor_infos(module, in_features, out_features, quantize.bits, quantize.group_size))
        else:
            result.append(info)
    return result


def estimate(
    config,
    plan=None,
    quantize=None,
    dtype: str = "bfloat16",
    vision_params: int | None = None,
    audio_params: int | None = None,
    tower_params: int | None = None,
) -> SizeReport:
    """Parameters and bytes per component computed from a config alone.

    `config` is a full Gemma 4 config (towers come from its vision/audio configs) or a text config
    (then `vision_params` / `audio_params`, or `tower_params` for both together when only their sum
    is known, are added at `dtype`, unquantized, and stated in `assumptions`). `plan` is a `PruningPlan` (or a list of widths); None means unpruned.
    `quantize` is a `QuantizeSettings`; None means no quantization.
    """
    widths = None if plan is None else list(getattr(plan, "widths", plan))
    infos = model_tensor_infos(config, widths, dtype)
    if quantize is not None:
        infos = quantized_tensor_infos(infos, quantize)
    report = tally(infos, quantize.bits if quantize is not None else None)
    components = dict(report.components)
    assumptions = []
    element_bytes = _DTYPE_BYTES[_safetensors_dtype(dtype)]
    given = (("vision_tower", "vision_params", vision_params), ("audio_tower", "audio_params", audio_params),
             ("towers", "tower_params", tower_params))  # fmt: skip
    for name, argument, count in given:
        if count is None:
            continue
        if name in components or (name == "towers" and {"vision_tower", "audio_tower"} & set(components)):
            raise ValueError(f"{argument}: the config already defines the {COMPONENT_LABELS[name]}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{argument}: must be a non-negative integer, got {count!r}")
        components[name] = ComponentSize(count, count * element_bytes)
        assumptions.append(f"{COMPONENT_LABELS[name]}: {count:,} parameters given, stored in {dtype}, not quantized")
    ordered = {name: components[name] for name in COMPONENTS if name in components}
    return SizeReport(ordered, report.gptq_parts, None, tuple(assumptions))


def config_from_file(path: str | Path):
    """A config for `estimate`: the full Gemma 4 config when the file has one with a vision config,
    else the text config (a bare text config or `text_config` of the file)."""
    from transformers import AutoConfig

    from studio.modeling import load_text_config

    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    data = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else None
    if data and data.get("model_type") == "gemma4" and data.get("vision_config"):
        return AutoConfig.from_pretrained(config_file.parent if config_file.name == "config.json" else config_file)
    return load_text_config(path)
