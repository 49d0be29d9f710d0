"""The vLLM-ready export folder: weights in shards, configs, tokenizer, plugin and model card.

`export_checkpoint(checkpoint, out)` turns a checkpoint written by the studio (a GPTQ checkpoint from
`studio.gptq.quantize`, or a FLAP-pruned one from `studio.flap`) into the folder the reference card
describes:

    config.json                  (quantization_config with `dynamic`; text_config.intermediate_sizes
                                  and flap_pruned for pruned models)
    model-0000N-of-0000M.safetensors + model.safetensors.index.json  (or one model.safetensors)
    quantize_config.json, quant_log.csv                               (quantized exports)
    generation_config.json, processor_config.json, tokenizer files, chat_template.jinja
    vllm_config.yaml, vllm_flap_plugin/, vllm_flap_plugin.egg-info/
    README.md (generated model card), export_summary.json (the card's data)

An unquantized checkpoint is exported with its floating-point weights cast to `dtype` (bfloat16 by
default): the pruned model with the plugin, servable by vLLM on CPUs. The folder is written through a
staging folder and appears only when complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from studio.atomic import atomic_directory, atomic_write_text
from studio.checkpoint import (
    CONFIG_FILE,
    DEFAULT_DTYPE,
    DTYPE_NAMES,
    PRUNE_SUMMARY_FILE,
    QUANT_LOG_FILE,
    QUANTIZE_CONFIG_FILE,
    WEIGHTS_INDEX_FILE,
    copy_side_files,
    is_checkpoint_folder,
    is_flap_pruned,
    is_gptq_checkpoint,
    is_multimodal,
    read_config,
    text_config_of,
)
from studio.export.model_card import CardData, hub_model_id, named_calibration, render_model_card
from studio.export.shards import ShardedWeights, write_shards
from studio.sizes import SizeReport, config_from_file, estimate, measure_checkpoint

SUMMARY_FILE = "export_summary.json"
CARD_FILE = "README.md"
# Written here, never copied from the source folder.
_GENERATED = {CONFIG_FILE, WEIGHTS_INDEX_FILE, CARD_FILE, SUMMARY_FILE, "vllm_config.yaml"}


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    quantized: bool
    shards: ShardedWeights
    sizes_before: SizeReport
    sizes_after: SizeReport


def _export_config(source: Path, target: Path, quantized: bool, dtype: str) -> dict:
    """config.json for the export: the source's, with the storage dtype recorded for unquantized
    exports. Key order is kept (vLLM reads `dynamic` rules in file order)."""
    data = read_config(source, "checkpoint")
    if quantized:
        if "quantization_config" not in data:
            raise ValueError(f"checkpoint: {source} has quantize_config.json but no quantization_config in config.json")
    else:
        data.pop("quantization_config", None)
        for section in (data, *(v for v in data.values() if isinstance(v, dict) and "model_type" in v)):
            if "dtype" in section or section is data:
                section["dtype"] = dtype
    (target / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


def _copy_side_files(source: Path, target: Path) -> None:
    """Tokenizer, processor and generation configs, chat template, quantize config and log, FLAP's
    prune summary: every plain file of the source that is not a weight file or generated here.
    The prune summary's calibration source is named, not pathed: the folder is what gets published."""
    copy_side_files(source, target, exclude=_GENERATED)
    prune_summary = target / PRUNE_SUMMARY_FILE
    if prune_summary.is_file():
        data = json.loads(prune_summary.read_text(encoding="utf-8"))
        if isinstance(data.get("calibration"), dict):
            data["calibration"] = named_calibration(data["calibration"])
            prune_summary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _storage_dtype(config: dict, quantized: bool, dtype: str) -> str:
    """The dtype unquantized tensors are stored in."""
    if not quantized:
        return dtype
    stored = config.get("dtype") or text_config_of(config).get("dtype") or DEFAULT_DTYPE
    return stored if stored in DTYPE_NAMES else DEFAULT_DTYPE


def _sizes_before(folder: Path, base_model: str | Path | None, dtype: str) -> tuple[SizeReport, str]:
    """Sizes of the base model: measured when its folder is given, else estimated from the export's
    config at the original widths (exact for the studio's checkpoints; see tests/sizes/test_measure.py)."""
    if base_model is not None and Path(base_model).is_dir():
        return measure_checkpoint(base_model, float_dtype=dtype), (
            f"the base checkpoint's safetensors headers (floating-point tensors counted in {dtype})"
        )
    return estimate(config_from_file(folder), plan=None, quantize=None, dtype=dtype), (
        f"this config at the original FFN widths, unquantized, in {dtype} (`studio.sizes.estimate`)"
    )


def _read_quant_log(folder: Path) -> list:
    if not (folder / QUANT_LOG_FILE).is_file():
        return []
    from studio.gptq.quantize import read_quant_log

    return read_quant_log(folder / QUANT_LOG_FILE)


def _card_data(folder: Path, summary: Mapping, evaluation: Mapping | None) -> CardData:
    from studio.modeling import layer_widths, original_widths

    config = config_from_file(folder)
    text_config = text_config_of(config)
    quantize_config = (
        json.loads((folder / QUANTIZE_CONFIG_FILE).read_text(encoding="utf-8")) if summary["quantized"] else None
    )
    prune_summary_path = folder / PRUNE_SUMMARY_FILE
    return CardData(
        name=summary["name"],
        base_model=summary["base_model"],
        quantized=summary["quantized"],
        dtype=summary["dtype"],
        widths=layer_widths(text_config),
        original_widths=original_widths(text_config),
        layer_types=list(text_config.layer_types),
        multimodal=is_multimodal(config),
        flap_pruned=is_flap_pruned(config),
        sizes_before=SizeReport.from_dict(summary["sizes_before"]),
        sizes_after=SizeReport.from_dict(summary["sizes_after"]),
        before_source=summary["before_source"],
        quantize_config=quantize_config,
        quant_log=_read_quant_log(folder),
        prune_summary=json.loads(prune_summary_path.read_text(encoding="utf-8")) if prune_summary_path.is_file() else None,
        evaluation=evaluation,
        files=sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name != CARD_FILE)
        + [CARD_FILE],
        architecture=(getattr(config, "architectures", None) or [None])[0],
    )


def _check_evaluation(evaluation: Mapping | None) -> None:
    for name, result in (evaluation or {}).items():
        missing = {"ppl", "nll", "tokens"} - set(result)
        if missing:
            raise ValueError(f"evaluation.{name}: missing {', '.join(sorted(missing))}")


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    max_shard_size: int | str = "4GB",
    dtype: str = "bfloat16",
    base_model: str | Path | None = None,
    name: str | None = None,
    evaluation: Mapping[str, Mapping] | None = None,
    max_model_len: int | None = None,
) -> ExportResult:
    """Write the servable export of `checkpoint` (quantized or pruned) to `out_dir`, atomically.

    `dtype` is the storage dtype of an unquantized export (a GPTQ checkpoint keeps its own);
    `base_model` (a folder or a hub id) is named in the card by its Hub id (a folder from the Hub
    cache gives its id, another folder is not named) and, if it is a folder, measured for the
    "before" sizes; `evaluation` maps a model name to a perplexity result (ppl, nll, tokens, seqlen,
    stride) shown in the card.
    """
    from studio.export.plugin_files import CONFIG_FILE as VLLM_CONFIG_FILE
    from studio.export.plugin_files import vllm_config_yaml, write_plugin

    checkpoint = Path(checkpoint)
    if not is_checkpoint_folder(checkpoint):
        raise FileNotFoundError(f"checkpoint: no config.json in {checkpoint}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype: must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    _check_evaluation(evaluation)
    quantized = is_gptq_checkpoint(checkpoint)
    if quantized and not (checkpoint / QUANTIZE_CONFIG_FILE).is_file():
        raise ValueError(f"checkpoint: {checkpoint} is a GPTQ checkpoint without the quantize_config.json GPTQModel writes")
    out_dir = Path(out_dir)
    name = name or out_dir.resolve().name
    with atomic_directory(out_dir) as staging:
        config = _export_config(checkpoint, staging, quantized, dtype)
        storage_dtype = _storage_dtype(config, quantized, dtype)
        shards = write_shards(checkpoint, staging, max_shard_size, dtype=None if quantized else dtype)
        _copy_side_files(checkpoint, staging)
        write_plugin(staging)
        (staging / VLLM_CONFIG_FILE).write_text(
            vllm_config_yaml(served_model_name=name, dtype=storage_dtype, max_model_len=max_model_len), encoding="utf-8"
        )
        before, before_source = _sizes_before(staging, base_model, storage_dtype)
        after = measure_checkpoint(staging)
        summary = {
            "name": name,
            "base_model": hub_model_id(base_model),  # published: a Hub id or nothing, never a local path
            "quantized": quantized,
            "dtype": storage_dtype,
            "before_source": before_source,
            "sizes_before": before.to_dict(),
            "sizes_after": after.to_dict(),
            "evaluation": dict(evaluation or {}),
        }
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_FILE).write_text(render_model_card(_card_data(staging, summary, evaluation)), encoding="utf-8")
        _make_readable(staging)
    return ExportResult(out_dir.resolve(), quantized, shards, before, after)


def update_evaluation(export_dir: str | Path, evaluation: Mapping[str, Mapping]) -> None:
    """Add evaluation results to an export's summary and regenerate its model card."""
    export_dir = Path(export_dir)
    _check_evaluation(evaluation)
    summary = json.loads((export_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    summary["evaluation"] = {**summary.get("evaluation", {}), **evaluation}
    atomic_write_text(export_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(export_dir / CARD_FILE, render_model_card(_card_data(export_dir, summary, summary["evaluation"])))


def _make_readable(folder: Path) -> None:
    """Ordinary permissions (some writers create files private to the user)."""
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
