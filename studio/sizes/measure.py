"""Exact sizes of a checkpoint on disk, from its safetensors headers (no tensor data is read)."""

from __future__ import annotations

import json
from pathlib import Path

from studio.sizes.report import SizeReport, TensorInfo, tally, with_float_dtype


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
        infos = with_float_dtype(infos, float_dtype)
    report = tally(infos, checkpoint_bits(folder))
    return SizeReport(report.components, report.gptq_parts, sum(p.stat().st_size for p in files))
