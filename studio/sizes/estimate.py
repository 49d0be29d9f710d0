"""Sizes of a Gemma 4 model from its config alone: unpruned, pruned to FLAP widths, in GPTQ storage.

`model_shapes(config)` builds the model once on PyTorch's meta device (shapes without memory) with
the studio's own classes, so per-layer head dims, KV sharing, per-layer embeddings and tied weights
come out exactly as a saved checkpoint has them. That build is the slow part; everything after it
works on the shapes, so the plan editor re-estimates on every edit without building again:

- pruning to `widths` gives each decoder layer's gate/up projections `width` rows and its down
  projection `width` columns, and every layer a `down_proj` bias of `hidden_size` values (the
  studio's FLAP MLP always has one, zero where the layer keeps all its channels);
- GPTQ replaces each module that `studio.gptq.rules.is_quantized` selects (as GPTQModel selects
  them) with GPTQ v1 storage. For K input and N output features, `bits` b and group size g
  (GPTQModel's packing; it writes g_idx for every module, with or without desc_act):

      qweight  int32    [K * b / 32, N]
      qzeros   int32    [ceil(K / g), N * b / 32]
      scales   float16  [ceil(K / g), N]
      g_idx    int32    [K]
      bias     model dtype [N]   (kept at the model's precision by studio.gptq.quantize)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from studio.checkpoint import is_multimodal
from studio.sizes.components import COMPONENT_LABELS, COMPONENTS, component_of
from studio.sizes.report import DTYPE_BYTES, GPTQ_PARTS, ComponentSize, SizeReport, TensorInfo, safetensors_dtype, tally_components

# A decoder layer's FFN projection (the towers have their own `layers.N.mlp`; their component differs).
_FFN_WEIGHT = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")
# What `estimate_stages` reports, in pipeline order.
STAGES = ("original", "pruned", "quantized")


@dataclass(frozen=True)
class ModelShapes:
    """Every tensor `save_pretrained` writes for a model at its original FFN widths (parameters,
    tied ones once, and persistent buffers) in one dtype, from one meta build.

    `report` re-applies widths and the GPTQ layout to the few tensors they change: what neither
    can change is added up once, here (`fixed`, (component, size) pairs); `variable` holds the decoder layers' FFN weights
    and the weights of the modules GPTQ may quantize, each as (component, tensor, (layer,
    projection) for an FFN weight else None, whether the studio's default `dynamic` rules quantize it).
    Hashable, so a Gradio state holding it is hashed cheaply on every event.
    """

    tensors: tuple[TensorInfo, ...]
    layers: int
    fixed: tuple[tuple[str, ComponentSize], ...] = field(repr=False)
    variable: tuple[tuple[str, TensorInfo, tuple[int, str] | None, bool], ...] = field(repr=False)

    def report(self, widths: Sequence[int] | None = None, quantize=None) -> SizeReport:
        """Sizes pruned to `widths` (one per decoder layer; None: unpruned), with the modules that
        `quantize` quantizes in GPTQ v1 storage (None: unquantized).

        `quantize` has `bits` and `group_size` (a `studio.gptq.quantize.QuantizeSettings`, a job's
        GPTQ settings); modules are chosen by `studio.gptq.rules.is_quantized` with its `dynamic`
        rules, or the studio's default rules when it has none, as GPTQModel chooses them.
        """
        from studio.gptq.rules import DEFAULT_DYNAMIC

        if widths is not None and len(widths) != self.layers:
            raise ValueError(f"widths: {len(widths)} given, the model has {self.layers} decoder layers")
        dynamic = getattr(quantize, "dynamic", DEFAULT_DYNAMIC)
        default_rules = dynamic == DEFAULT_DYNAMIC
        # Plain arithmetic: this runs on every edit of the plan editor. Per component:
        # [params, bytes, quantized params, quantized bytes], as in `tally_components`.
        totals = {name: [size.params, size.bytes, size.quantized_params, size.quantized_bytes] for name, size in self.fixed}
        parts = dict.fromkeys(GPTQ_PARTS, 0)
        storage: dict[tuple[int, int], list[tuple[str, int]]] = {}  # (out, in) -> GPTQ bytes by part
        for component, tensor, ffn, quantized in self.variable:
            total = totals.setdefault(component, [0, 0, 0, 0])
            element = DTYPE_BYTES[tensor.dtype]
            shape = tensor.shape
            if ffn is not None and widths is not None:
                width = int(widths[ffn[0]])
                if ffn[1] == "down_proj":
                    shape = (shape[0], width)
                    total[0] += shape[0]  # the FLAP down_proj bias
                    total[1] += shape[0] * element
                else:
                    shape = (width, shape[1])
            numel = math.prod(shape)
            total[0] += numel
            if quantize is not None and (quantized if default_rules else _quantizes(tensor, dynamic)):
                if shape not in storage:
                    module = tensor.name.removesuffix(".weight")
                    gptq = gptq_tensor_infos(module, shape[1], shape[0], quantize.bits, quantize.group_size)
                    storage[shape] = [(part.name.rsplit(".", 1)[-1], part.nbytes) for part in gptq]
                total[2] += numel
                for part, nbytes in storage[shape]:
                    parts[part] += nbytes
                    total[1] += nbytes
                    total[3] += nbytes
            else:
                total[1] += numel * element
        components = {name: ComponentSize(*totals[name]) for name in COMPONENTS if name in totals}
        return SizeReport(components, parts if any(parts.values()) else {})


def _quantizes(tensor: TensorInfo, dynamic) -> bool:
    """Whether GPTQ stores `tensor` packed: the weight of a linear module that `dynamic` quantizes."""
    from studio.gptq.rules import is_quantized

    module, _, kind = tensor.name.rpartition(".")
    return kind == "weight" and len(tensor.shape) == 2 and is_quantized(module, dynamic)


def model_shapes(config, dtype: str = "bfloat16") -> ModelShapes:
    """The tensors of the unpruned model for `config` (a full Gemma 4 config or a text config) with
    floating-point ones in `dtype`, from one build on the meta device. A FLAP-pruned config is
    built at its original widths (plans apply to those)."""
    import torch

    from studio.gptq.rules import DEFAULT_DYNAMIC, is_selected

    target = safetensors_dtype(dtype)
    stored = {torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}
    model = _meta_model(config)
    tensors = []
    for name, parameter in model.named_parameters():  # remove_duplicate: a tied lm_head is listed once
        tensors.append(TensorInfo(name, tuple(parameter.shape), target if parameter.is_floating_point() else stored[parameter.dtype]))
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer is None or buffer_name in module._non_persistent_buffers_set:
                continue
            name = f"{module_name}.{buffer_name}" if module_name else buffer_name
            tensors.append(TensorInfo(name, tuple(buffer.shape), target if buffer.is_floating_point() else stored[buffer.dtype]))
    fixed, variable = [], []
    for tensor in tensors:
        component = component_of(tensor.name)
        match = _FFN_WEIGHT.search(tensor.name) if component == "ffn" else None
        ffn = (int(match[1]), match[2]) if match else None
        module, _, kind = tensor.name.rpartition(".")
        if ffn is not None or (kind == "weight" and len(tensor.shape) == 2 and is_selected(module)):
            variable.append((component, tensor, ffn, _quantizes(tensor, DEFAULT_DYNAMIC)))
        else:
            fixed.append((component, tensor))
    layers = len({ffn[0] for _, _, ffn, _ in variable if ffn is not None})
    return ModelShapes(tuple(tensors), layers, tuple(tally_components(fixed).components.items()), tuple(variable))


def _meta_model(config):
    """The unpruned model for `config` built on the meta device with the studio's classes."""
    import copy

    import torch

    from studio.modeling import model_class_for, model_construction, text_config_of

    config = copy.deepcopy(config)
    text_config_of(config).flap_pruned = False  # plans apply to the unpruned model
    multimodal = is_multimodal(config)
    config.architectures = ["Gemma4ForConditionalGeneration" if multimodal else "Gemma4ForCausalLM"]
    with model_construction(), torch.device("meta"):
        model = model_class_for(config)(config)
    if getattr(text_config_of(config), "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        # Share the tensor explicitly, so the tied lm_head is counted once whatever tying did.
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model


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


def estimate_stages(shapes: ModelShapes, widths: Sequence[int], quantize=None) -> dict[str, SizeReport]:
    """Sizes along the pipeline: "original", "pruned" to `widths` and, with `quantize`, "quantized"
    (the pruned model in GPTQ storage)."""
    stages = {"original": shapes.report(), "pruned": shapes.report(widths)}
    if quantize is not None:
        stages["quantized"] = shapes.report(widths, quantize)
    return stages


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
    is known, are added at `dtype`, unquantized, and stated in `assumptions`). `plan` is a
    `PruningPlan` (or a list of widths); None means unpruned. `quantize` is a `QuantizeSettings`;
    None means no quantization.
    """
    widths = None if plan is None else list(getattr(plan, "widths", plan))
    report = model_shapes(config, dtype).report(widths, quantize)
    components = dict(report.components)
    assumptions = []
    element_bytes = DTYPE_BYTES[safetensors_dtype(dtype)]
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
