"""GPTQ W4A16 of a Gemma 4 checkpoint (FLAP-pruned or stock) through GPTQModel.

GPTQModel's own loader builds models with stock transformers classes, which cannot hold per-layer
FFN widths or the FLAP down_proj bias. So the model is built by `studio.modeling.load_model` and
handed to GPTQModel's Gemma 4 definition directly; GPTQModel then runs its usual layer-by-layer
GPTQ (Hessians from the calibration activations, desc_act ordering, damping) and writes its GPTQ v1
checkpoint. The down_proj bias rides along: GPTQ quantizes weights only and the packed linear keeps
the bias.

With `offload=True` the model is not loaded whole: the studio builds it on the meta device and
GPTQModel's checkpoint-backed source (`LazyTurtle`, with `offload_to_disk`) reads each module from
the safetensors shards when its layer comes up and writes finished layers to a scratch folder; the
result is the same, bit for bit (tests/gptq/test_offload.py), the peak memory not lower
(GPTQModel 7.6, docs/scale.md).

`quantize_checkpoint` returns the per-module error as data (`QuantizeResult.modules`) and writes it
as `quant_log.csv`; `load_quantized` reads the output back on CPU (GPTQModel's torch kernel) for the
chat backend and evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from studio.atomic import atomic_directory
from studio.progress import Cancelled
from studio.checkpoint import (
    CONFIG_FILE,
    QUANT_LOG_FILE,
    QUANTIZE_CONFIG_FILE,
    WEIGHTS_INDEX_FILE,
    copy_side_files,
    is_gptq_checkpoint,
    is_multimodal,
    torch_dtype,
)
from studio.gptq.rules import QUANTIZED_MODULES
from studio.gptq.runtime import import_gptqmodel
from studio.gptq.settings import QuantizeSettings

__all__ = ["QuantizeSettings", "quantize_checkpoint", "load_quantized", "read_quant_log", "write_quant_log"]

QUANT_LOG_COLUMNS = ("layer", "module", "loss", "samples", "damp", "time")
# Files GPTQModel writes itself. Every other file of the source that is not a weight (tokenizer,
# processor config, chat template, generation config, FLAP summaries...) is copied as it is,
# replacing GPTQModel's re-saved copies, which differ (its generation-config "autofix" turns on do_sample).
_WRITTEN_BY_GPTQMODEL = {CONFIG_FILE, QUANTIZE_CONFIG_FILE, QUANT_LOG_FILE, WEIGHTS_INDEX_FILE}

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ModuleQuantRecord:
    """GPTQ's result for one module: its layer, name within the layer, the loss GPTQModel reports
    (the mean squared error of the layer output on the calibration activations), calibration tokens
    seen, the damping actually used (GPTQModel raises it when the Hessian is not positive definite)
    and the seconds spent."""

    layer: int
    module: str
    loss: float
    samples: int
    damp: float
    time: float


@dataclass(frozen=True)
class QuantizeResult:
    out_dir: Path
    settings: QuantizeSettings
    num_layers: int
    modules: tuple[ModuleQuantRecord, ...]
    seconds: float

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "settings": self.settings.to_dict(),
            "num_layers": self.num_layers,
            "modules": [asdict(record) for record in self.modules],
            "seconds": self.seconds,
        }


def _gptq_definition(model):
    """GPTQModel's Gemma 4 definition for the multimodal or the text-only model."""
    gemma4 = import_gptqmodel("gptqmodel.models.definitions.gemma4")

    return gemma4.Gemma4ForConditionalGenerationGPTQ if hasattr(model.model, "language_model") else gemma4.Gemma4TextQModel


def _check_calibration_ids(calibration_ids) -> torch.Tensor:
    if not isinstance(calibration_ids, torch.Tensor) or calibration_ids.dim() != 2:
        raise ValueError("calibration_ids: must be a 2-D tensor of token ids [samples, seqlen]")
    if calibration_ids.dtype not in (torch.int32, torch.int64) or calibration_ids.numel() == 0:
        raise ValueError(f"calibration_ids: must be a non-empty integer tensor, got dtype {calibration_ids.dtype}")
    return calibration_ids.long()


def _check_group_size(model, settings: QuantizeSettings) -> None:
    """Every quantized module's input width must be a whole number of groups (vLLM's kernels and
    GPTQ v1 packing both assume it); name the first module that is not."""
    from studio.modeling import decoder_layers

    if settings.group_size == -1:
        return
    for index, layer in enumerate(decoder_layers(model)):
        for name in QUANTIZED_MODULES:
            module = layer.get_submodule(name)
            if module.in_features % settings.group_size:
                raise ValueError(
                    f"quantize.group_size: layer {index} {name} has {module.in_features} input features, "
                    f"not a multiple of group_size {settings.group_size} (prune to multiples of it)"
                )


def _calibration_rows(calibration_ids: torch.Tensor) -> list[dict]:
    ones = torch.ones(1, calibration_ids.shape[1], dtype=torch.long)
    return [{"input_ids": row.unsqueeze(0), "attention_mask": ones} for row in calibration_ids]


class _LayerBoundary:
    """GPTQModel's layer-complete callback: reports each finished layer's modules and stops the
    run at a layer boundary when asked to."""

    def __init__(self, num_layers: int, progress: ProgressFn | None, should_stop: Callable[[], bool] | None):
        self.num_layers = num_layers
        self.progress = progress
        self.should_stop = should_stop

    def __call__(self, layer_idx: int, submodule_finalized: bool):
        # Called twice per layer; the first call (before packing) runs on the quantizing thread,
        # where an exception propagates out of quantize().
        if submodule_finalized or not isinstance(layer_idx, int):
            return None
        if self.progress is not None:
            total = self.num_layers * len(QUANTIZED_MODULES)
            for offset in range(1, len(QUANTIZED_MODULES) + 1):
                self.progress(layer_idx * len(QUANTIZED_MODULES) + offset, total, "modules")
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"quantization cancelled after layer {layer_idx + 1} of {self.num_layers}")
        return None


def _records(quant_log: list[dict]) -> tuple[ModuleQuantRecord, ...]:
    records = [
        ModuleQuantRecord(
            layer=int(entry["layer"]),
            module=str(entry["module"]),
            loss=float(entry["loss"]),
            samples=int(entry["samples"]),
            damp=float(entry["damp"]),
            time=float(entry["time"]),
        )
        for entry in quant_log
    ]
    order = {name: index for index, name in enumerate(QUANTIZED_MODULES)}
    return tuple(sorted(records, key=lambda r: (r.layer, order.get(r.module, len(order)), r.module)))


def write_quant_log(path: str | Path, records: tuple[ModuleQuantRecord, ...] | list[ModuleQuantRecord]) -> None:
    """`quant_log.csv`: one row per quantized module, columns QUANT_LOG_COLUMNS."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(QUANT_LOG_COLUMNS)
        for record in records:
            writer.writerow([getattr(record, column) for column in QUANT_LOG_COLUMNS])


def read_quant_log(path: str | Path) -> list[ModuleQuantRecord]:
    """The records of a `quant_log.csv`; a header or row that does not fit the columns is an error."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0]) != QUANT_LOG_COLUMNS:
        raise ValueError(f"{path}: header must be {','.join(QUANT_LOG_COLUMNS)}, got {rows[0] if rows else 'nothing'}")
    records = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(QUANT_LOG_COLUMNS):
            raise ValueError(f"{path}: line {number} has {len(row)} fields, expected {len(QUANT_LOG_COLUMNS)}")
        records.append(_records([dict(zip(QUANT_LOG_COLUMNS, row))])[0])
    return records


def _restore_pruned_config(source_config, written_path: Path) -> None:
    """Make sure config.json still names the FLAP architecture and per-layer widths of the source
    (GPTQModel rewrites config.json from the in-memory config)."""
    from studio.modeling import is_flap_pruned, text_config_of

    if not is_flap_pruned(source_config):
        return
    data = json.loads(written_path.read_text(encoding="utf-8"))
    text_config = text_config_of(source_config)
    target = data.get("text_config", data) if "text_config" in source_config.to_dict() else data
    target["intermediate_sizes"] = [int(w) for w in text_config.intermediate_sizes]
    target["flap_pruned"] = True
    data["architectures"] = list(source_config.architectures)
    # Key order kept: `dynamic` rules are matched in the order they are written.
    written_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _quantized_module_biases(model, model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The biases of the modules GPTQ will pack (the FLAP down_proj bias), keyed by tensor name, read
    from the checkpoint in `dtype` (as loading casts them; the model may be a meta-device shell)."""
    from studio.modeling import decoder_layers
    from studio.streaming import Checkpoint

    prefix = "model.language_model.layers" if hasattr(model.model, "language_model") else "model.layers"
    names = [
        f"{prefix}.{index}.{name}.bias"
        for index, layer in enumerate(decoder_layers(model))
        for name in QUANTIZED_MODULES
        if layer.get_submodule(name).bias is not None
    ]
    if not names:
        return {}
    checkpoint = Checkpoint(model_dir)
    return {name: checkpoint.tensor(name, dtype) for name in names}


def _restore_biases(folder: Path, biases: dict[str, torch.Tensor]) -> None:
    """Write the packed modules' biases back in the model's dtype.

    GPTQModel's packed linears hold their bias in float16 whatever the model dtype, which rounds
    values under 2**-14 and overflows past 65504; the card keeps biases at original precision.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    if not biases:
        return
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    else:
        weight_map = {name: "model.safetensors" for name in biases}
    shards = sorted({weight_map[name] for name in biases})
    total_size_change = 0
    for shard in shards:
        path = folder / shard
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {"format": "pt"}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        for name, bias in biases.items():
            if weight_map[name] == shard:
                if name not in tensors:
                    raise RuntimeError(f"GPTQModel's checkpoint has no tensor {name}")
                total_size_change += bias.numel() * bias.element_size() - tensors[name].numel() * tensors[name].element_size()
                tensors[name] = bias.contiguous()
        save_file(tensors, str(path), metadata=metadata)
    if index_path.is_file() and total_size_change:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        index.setdefault("metadata", {})["total_size"] = index["metadata"].get("total_size", 0) + total_size_change
        index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _checkpoint_backed_shell(model_dir: Path, dtype: torch.dtype):
    """The model on the meta device (the studio's classes, so per-layer widths and the down_proj bias
    fit) and GPTQModel's `LazyTurtle` that fills its modules from the checkpoint's shards on demand."""
    from transformers import AutoConfig

    from studio.modeling import model_class_for, model_construction

    structure = import_gptqmodel("gptqmodel.utils.structure")
    config = AutoConfig.from_pretrained(model_dir)
    with model_construction(), torch.device("meta"):
        shell = model_class_for(config)._from_config(config, dtype=dtype)
    shell.eval()
    definition = _gptq_definition(shell)
    turtle = structure.LazyTurtle.maybe_create(
        model_local_path=str(model_dir),
        config=shell.config,
        module_tree=definition.module_tree,
        hf_conversion_map_reversed=definition.resolve_hf_conversion_map_reversed(target_model=shell),
        target_model=shell,
    )
    if turtle is None:
        raise RuntimeError(f"GPTQModel cannot read {model_dir} module by module (LazyTurtle declined it)")
    return shell, turtle


def quantize_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    calibration_ids: torch.Tensor,
    settings: QuantizeSettings | Mapping | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
    max_shard_size: str = "4GB",
    offload: bool = False,
) -> QuantizeResult:
    """GPTQ-quantize the checkpoint in `model_dir` and write a GPTQ v1 checkpoint to `out_dir`.

    `calibration_ids` is a [samples, seqlen] tensor of token ids (see
    `studio.calibration.build_calibration_ids`). `progress(done, total, "modules")` is called for
    each quantized module once its decoder layer is done; `should_stop()` is checked at every layer
    boundary and `Cancelled` is raised when it returns true (nothing is written then). `device` is
    where GPTQ runs (default: the first GPU, else the CPU; the model itself stays on the CPU and
    GPTQModel moves one layer at a time). With `offload` the model is never loaded whole: modules
    are read from the safetensors shards as their layer comes up and finished layers go to a
    scratch folder beside `out_dir`; the result is the same, but with GPTQModel 7.6 the peak memory
    is not lower (docs/scale.md), so it is off by default. The output folder appears only when
    complete.
    """
    from transformers import AutoConfig, AutoTokenizer

    from studio.modeling import decoder_layers, load_model

    settings = QuantizeSettings.from_dict(settings) if isinstance(settings, Mapping) else settings or QuantizeSettings()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model: no config.json in {model_dir}")
    calibration_ids = _check_calibration_ids(calibration_ids)
    started = time.perf_counter()

    source_config = AutoConfig.from_pretrained(model_dir)
    if offload:
        model, turtle = _checkpoint_backed_shell(model_dir, settings.torch_dtype)
    else:
        model, turtle = load_model(model_dir, dtype=settings.torch_dtype), None
    _check_group_size(model, settings)
    num_layers = len(decoder_layers(model))
    # GPTQModel's loader records the context length on the model; its layer replay reads it.
    model.seqlen = int(getattr(model.config.get_text_config(), "max_position_embeddings", 4096))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    biases = _quantized_module_biases(model, model_dir, settings.torch_dtype)
    gptq_config = settings.gptqmodel_config(device or _default_device())
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    scratch_folder = (
        tempfile.TemporaryDirectory(prefix=f".{Path(out_dir).name}.offload-", dir=Path(out_dir).parent)
        if offload
        else contextlib.nullcontext()
    )
    with scratch_folder as scratch:
        if offload:
            gptq_config.offload_to_disk, gptq_config.offload_to_disk_path = True, scratch
        gptq = _gptq_definition(model)(
            model,
            quantized=False,
            quantize_config=gptq_config,
            tokenizer=tokenizer,
            model_local_path=str(model_dir),
            turtle_model=turtle,
        )
        gptq.layer_callback = _LayerBoundary(num_layers, progress, should_stop)
        gptq.quantize(_calibration_rows(calibration_ids), batch_size=1)
        records = _records(gptq.quant_log)
        expected = num_layers * len(QUANTIZED_MODULES)
        if len(records) != expected:
            raise RuntimeError(f"GPTQModel quantized {len(records)} modules, expected {expected} (4 per layer)")

        with atomic_directory(out_dir) as staging:
            # Offloaded layers are read back from `scratch` while saving.
            gptq.save(str(staging), max_shard_size=max_shard_size)
            write_quant_log(staging / QUANT_LOG_FILE, records)
            _restore_biases(staging, biases)
            _restore_pruned_config(source_config, staging / "config.json")
            copy_side_files(model_dir, staging, exclude=_WRITTEN_BY_GPTQMODEL)
    return QuantizeResult(
        out_dir=Path(out_dir).resolve(),
        settings=settings,
        num_layers=num_layers,
        modules=records,
        seconds=time.perf_counter() - started,
    )


class _StudioModelLoader:
    """Stands in for the transformers Auto class GPTQModel builds models with, so that a quantized
    FLAP checkpoint is built at its per-layer widths with the down_proj bias."""

    @staticmethod
    def from_config(config, trust_remote_code: bool = False, **kwargs):
        from studio.modeling import model_class_for

        return model_class_for(config)._from_config(config, **kwargs)


def _loading_definition(config):
    """GPTQModel's Gemma 4 definition with the studio's model classes as its loader.

    For loading only: GPTQModel's Gemma 4 input capture calls `super(type(self), self)`, which
    recurses without end in any subclass, so quantization uses the stock definition instead.
    """
    gemma4 = import_gptqmodel("gptqmodel.models.definitions.gemma4")

    multimodal = is_multimodal(config)
    base = gemma4.Gemma4ForConditionalGenerationGPTQ if multimodal else gemma4.Gemma4TextQModel
    return type(f"Studio{base.__name__}", (base,), {"loader": _StudioModelLoader})


def load_quantized(path: str | Path, device: str = "cpu", dtype: torch.dtype | str = torch.bfloat16):
    """A GPTQ checkpoint written by `quantize_checkpoint`, as a transformers model in eval mode.

    On CPU the packed modules run through GPTQModel's torch kernel, which computes in bfloat16 or
    float16 only, with eager (uncompiled) dequantisation. The model is checked and warmed up by one
    probe forward (`studio.modeling.probe_loaded_model`). Returns the transformers model (it
    generates with `.generate`).
    """
    from transformers import AutoConfig

    from studio.modeling import model_construction, probe_loaded_model

    BACKEND = import_gptqmodel().BACKEND

    path = Path(path)
    if not is_gptq_checkpoint(path):
        raise FileNotFoundError(f"model: {path} is not a GPTQ checkpoint (no quantize_config.json)")
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype: GPTQ kernels compute in bfloat16 or float16, got {dtype}")
    definition = _loading_definition(AutoConfig.from_pretrained(path))
    backend = BACKEND.TORCH if str(device).startswith("cpu") else BACKEND.AUTO
    with model_construction():
        wrapper = definition.from_quantized(str(path), device=device, backend=backend, dtype=dtype)
    model = wrapper.model.eval()
    if str(device).startswith("cpu"):
        _dequantize_eagerly(model)
    probe_loaded_model(model, path)  # also the warm-up: the first forward's one-off costs are paid here
    return model


def _dequantize_eagerly(model) -> None:
    """Undo GPTQModel's `torch.compile` of each packed module's dequantisation (its torch kernel
    compiles it in `post_init`).

    Dynamo compiles the one shared function again for every module shape, i.e. for every pruned
    width, until it hits `recompile_limit` (8); on a CPU each compile takes seconds, so the first
    replies stalled and speeds varied. Measured on a pruned demo INT4 export (2 cores): first forward
    22.6 s compiled vs 2.0 s eager, 32 tokens 28.9 s vs 6.7 s. Eager dequantisation compiles nothing.
    """
    BaseQuantLinear = import_gptqmodel("gptqmodel.nn_modules.qlinear").BaseQuantLinear

    for module in model.modules():
        if isinstance(module, BaseQuantLinear):
            # The compiled wrapper is an instance attribute over the class's eager method.
            vars(module).pop("dequantize_weight", None)
