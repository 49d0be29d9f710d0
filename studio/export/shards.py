"""Rewriting a checkpoint's weights as safetensors shards of a chosen size, with an index.

The split itself is huggingface_hub's (`split_state_dict_into_shards_factory`, the one transformers
uses), so file names and the index follow the Hugging Face layout: `model-00001-of-00003.safetensors`
plus `model.safetensors.index.json`, or a single `model.safetensors` without an index when everything
fits in one shard. Tensors are read one shard at a time, so memory holds at most one shard.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from studio.checkpoint import SAFETENSORS_FLOAT_CODES, WEIGHTS_INDEX_FILE, dtype_of
from studio.sizes import GPTQ_PARTS, TensorInfo, checkpoint_files, read_tensor_infos

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "2GB" (10**9), "500MB", "4GiB" (2**30)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.match(str(size))
        if not match or match[2].upper() not in _UNITS:
            raise ValueError(f"max_shard_size: expected a size such as 2GB, 500MB or 4GiB, got {size!r}")
        value = int(float(match[1]) * _UNITS[match[2].upper()])
    if value <= 0:
        raise ValueError(f"max_shard_size: must be positive, got {size!r}")
    return value


@dataclass(frozen=True)
class ShardedWeights:
    """What `write_shards` wrote: shard file names and the tensor -> shard map."""

    files: tuple[str, ...]
    weight_map: dict[str, str]
    total_size: int


def _casts(info: TensorInfo, dtype: str | None) -> bool:
    """Whether a tensor is cast: floating-point weights only; GPTQ scales stay float16."""
    return dtype is not None and info.dtype in SAFETENSORS_FLOAT_CODES and info.name.rsplit(".", 1)[-1] not in GPTQ_PARTS


def write_shards(source: str | Path, target: str | Path, max_shard_size: int | str, dtype: str | None = None) -> ShardedWeights:
    """Copy the weights of checkpoint `source` into `target` as shards of at most `max_shard_size`
    bytes (a single tensor larger than that gets a shard of its own).

    With `dtype`, floating-point tensors other than GPTQ's are cast to it (a float32 pruned model
    exported in bfloat16).
    """
    from huggingface_hub.serialization import split_state_dict_into_shards_factory
    from safetensors import safe_open
    from safetensors.torch import save_file

    cast = None if dtype is None else dtype_of(dtype)
    limit = parse_size(max_shard_size)
    source, target = Path(source), Path(target)
    location: dict[str, Path] = {}
    infos: dict[str, TensorInfo] = {}
    for path in checkpoint_files(source):
        for info in read_tensor_infos(path):
            if info.name in location:
                raise ValueError(f"checkpoint: tensor {info.name} is stored twice ({location[info.name].name}, {path.name})")
            location[info.name] = path
            size_dtype = cast.safetensors if _casts(info, dtype) else info.dtype
            infos[info.name] = TensorInfo(info.name, info.shape, size_dtype)
    split = split_state_dict_into_shards_factory(
        infos,
        get_storage_size=lambda info: info.nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=limit,
    )
    for filename, names in split.filename_to_tensors.items():
        tensors = {}
        for path in sorted({location[name] for name in names}):
            with safe_open(str(path), framework="pt") as handle:
                for name in (n for n in names if location[n] == path):
                    tensor = handle.get_tensor(name)
                    if _casts(infos[name], dtype):
                        tensor = tensor.to(cast.torch)
                    tensors[name] = tensor.contiguous()
        save_file(tensors, str(target / filename), metadata={"format": "pt"})
    total = sum(info.nbytes for info in infos.values())
    if split.is_sharded:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (target / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return ShardedWeights(tuple(split.filename_to_tensors), dict(split.tensor_to_filename), total)
