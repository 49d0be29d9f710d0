"""The checkpoint vocabulary: the files of a checkpoint folder, what kind of checkpoint it holds, and
the dtypes the studio stores and computes in.

Every module that names a checkpoint file, asks whether a folder is GPTQ, FLAP-pruned or
multimodal, reaches for the decoder's config or spells a dtype does it through here. Importing this
module does not import torch (the CLI and the job queue read it without torch): a dtype is a name,
a safetensors code and an element size until its `.torch` is asked for.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Files of a Hugging Face checkpoint folder.
CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Suffixes of weight files: never copied as side files (they are resharded or rewritten).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# GPTQModel writes its settings here, beside config.json's `quantization_config`.
QUANTIZE_CONFIG_FILE = "quantize_config.json"
# The studio's per-module GPTQ log (studio.gptq.quantize).
QUANT_LOG_FILE = "quant_log.csv"
# What FLAP pruning writes beside a pruned checkpoint (studio.flap.pipeline): statistics and scores
# (a safetensors file that is not weights) and the per-layer summary.
FLAP_STATS_FILE = "flap_stats.safetensors"
PRUNE_SUMMARY_FILE = "prune_summary.json"


def is_checkpoint_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a checkpoint's config.json."""
    return (Path(folder) / CONFIG_FILE).is_file()


def read_config(folder: str | Path, field: str = "model_dir") -> dict:
    """The folder's config.json as a dict; ValueError naming `field` when there is none."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{field}: {Path(folder)} holds no {CONFIG_FILE}")
    return json.loads(path.read_text(encoding="utf-8"))


def copy_side_files(source: str | Path, target: str | Path, exclude: Collection[str] = ()) -> list[str]:
    """Copy every plain file of `source` that is neither a weight file nor named in `exclude` into
    `target` (tokenizer, processor and generation configs, chat template, FLAP summaries...), in name
    order; returns the names copied."""
    source, target = Path(source), Path(target)
    copied = []
    for entry in sorted(source.iterdir()):
        if entry.is_file() and entry.name not in exclude and not entry.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(entry, target / entry.name)
            copied.append(entry.name)
    return copied


# Configs: a transformers config object or its config.json dict, multimodal or text-only.


def _get(section, name: str, default=None):
    return section.get(name, default) if isinstance(section, Mapping) else getattr(section, name, default)


def text_config_of(config):
    """The decoder's config: `text_config` of a multimodal config, the config itself otherwise
    (a transformers config object or a config.json dict)."""
    return _get(config, "text_config") or config


def is_multimodal(config) -> bool:
    """Whether the config is the multimodal model's (it nests the decoder as `text_config`)."""
    return _get(config, "text_config") is not None


def is_flap_pruned(config) -> bool:
    """Whether the config is a FLAP-pruned checkpoint's (`text_config.flap_pruned`)."""
    return bool(_get(text_config_of(config), "flap_pruned", False))


def is_gptq_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` holds a GPTQ checkpoint: GPTQModel's quantize_config.json, or a config.json
    whose `quantization_config` says GPTQ (a checkpoint published without the former)."""
    folder = Path(folder)
    if (folder / QUANTIZE_CONFIG_FILE).is_file():
        return True
    if not is_checkpoint_folder(folder):
        return False
    quantization = read_config(folder).get("quantization_config") or {}
    return str(quantization.get("quant_method", "")).lower() == "gptq"


# Dtypes. safetensors' header codes (its format specification): torch's name for each, element bytes.
SAFETENSORS_DTYPES: Mapping[str, tuple[str, int]] = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "I16": ("int16", 2), "U16": ("uint16", 2), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "I64": ("int64", 8), "U64": ("uint64", 8), "F64": ("float64", 8),
}  # fmt: skip
SAFETENSORS_FLOAT_CODES = frozenset({"F16", "BF16", "F32", "F64"})


def safetensors_bytes(code: str) -> int:
    """Bytes per element of a safetensors dtype code ("BF16" -> 2)."""
    return SAFETENSORS_DTYPES[code][1]


def safetensors_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype (torch.bfloat16 -> "BF16")."""
    name = str(dtype).removeprefix("torch.")
    for code, (torch_name, _) in SAFETENSORS_DTYPES.items():
        if torch_name == name:
            return code
    raise ValueError(f"dtype: {dtype} has no safetensors code")


def torch_dtype_of_code(code: str) -> torch.dtype:
    """The torch dtype of a safetensors code ("BF16" -> torch.bfloat16)."""
    import torch

    if code not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype: {code!r} is not a safetensors dtype code")
    return getattr(torch, SAFETENSORS_DTYPES[code][0])


@dataclass(frozen=True)
class Dtype:
    """A floating-point dtype the studio loads, computes and stores weights in."""

    name: str  # the spelling of job specs, settings and every --dtype, and torch's attribute name
    safetensors: str  # its safetensors header code

    @property
    def bytes(self) -> int:
        return safetensors_bytes(self.safetensors)

    @property
    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.name)


DTYPES: Mapping[str, Dtype] = {d.name: d for d in (Dtype("bfloat16", "BF16"), Dtype("float16", "F16"), Dtype("float32", "F32"))}
# What every `dtype` setting and `--dtype` accepts, in this order.
DTYPE_NAMES = tuple(DTYPES)
# Other spellings met in configs and vLLM options.
DTYPE_ALIASES = {"half": "float16", "float": "float32"}
# What checkpoints are stored in unless told otherwise (the reference card's).
DEFAULT_DTYPE = "bfloat16"
# GPTQModel's kernels compute in these only; other requests run in the first.
GPTQ_COMPUTE_DTYPES = ("bfloat16", "float16")


def find_dtype(value) -> Dtype | None:
    """The dtype named by `value` (a name, an alias, "torch.bfloat16" or a torch dtype), or None."""
    name = str(value).removeprefix("torch.")
    return DTYPES.get(DTYPE_ALIASES.get(name, name))


def dtype_of(value, field: str = "dtype") -> Dtype:
    """The dtype named by `value`, as `find_dtype` reads it; ValueError naming `field` otherwise."""
    found = find_dtype(value)
    if found is None:
        raise ValueError(f"{field}: must be one of {', '.join(DTYPE_NAMES)}, got {value!r}")
    return found


def torch_dtype(value, field: str = "dtype") -> torch.dtype:
    """The torch dtype named by `value` (see `find_dtype`)."""
    return dtype_of(value, field).torch


def gptq_compute_dtype(value, field: str = "dtype") -> Dtype:
    """The dtype a GPTQ checkpoint computes in when `value` is asked for: bfloat16 or float16 as
    asked, bfloat16 for a float32 request."""
    dtype = dtype_of(value, field)
    return dtype if dtype.name in GPTQ_COMPUTE_DTYPES else DTYPES[GPTQ_COMPUTE_DTYPES[0]]
