"""Safetensors checkpoints read and written a tensor (or a few rows, or a chunk) at a time.

E4B in bf16 is 15 GB, as much as half the host memory of the machines the studio runs on. The
streamed paths (the full-size demo writer, out-of-core pruning) never hold more than one decoder
layer: tensors are read through safetensors' memory maps, opened for one read and closed again (a
mapping kept open would count every page it has touched as resident), and written into shards
whose header is planned up front, so a tensor larger than memory can be written chunk by chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from studio.checkpoint import (
    SINGLE_WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    safetensors_code,
    text_config_of,
    torch_dtype_of_code,
)
from studio.flap.stats import DecoderLayerSource, language_model_of

_COPY_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


@dataclass(frozen=True)
class _StoredTensor:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in `file`
    end: int


def _read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the offset where its data begins."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size)), 8 + size


class Checkpoint:
    """Where each tensor of a safetensors checkpoint folder lies, and reads of single tensors.

    Nothing is loaded up front: the headers say where each tensor is.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / WEIGHTS_INDEX_FILE
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        elif (self.folder / SINGLE_WEIGHTS_FILE).is_file():
            files = [SINGLE_WEIGHTS_FILE]
        else:
            raise FileNotFoundError(f"model: no {SINGLE_WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in {self.folder}")
        self._tensors: dict[str, _StoredTensor] = {}
        for file in files:
            path = self.folder / file
            header, data_start = _read_header(path)
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                self._tensors[name] = _StoredTensor(
                    path, torch_dtype_of_code(entry["dtype"]), tuple(entry["shape"]), data_start + begin, data_start + end
                )

    @staticmethod
    def is_checkpoint(folder: str | Path) -> bool:
        folder = Path(folder)
        return (folder / WEIGHTS_INDEX_FILE).is_file() or (folder / SINGLE_WEIGHTS_FILE).is_file()

    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def dtype(self, name: str) -> torch.dtype:
        return self._stored(name).dtype

    def shape(self, name: str) -> tuple[int, ...]:
        return self._stored(name).shape

    def nbytes(self) -> int:
        """Bytes of all tensors stored."""
        return sum(t.end - t.start for t in self._tensors.values())

    def _stored(self, name: str) -> _StoredTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"checkpoint {self.folder}: no tensor {name!r}") from None

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, in memory (cast to `dtype` if given)."""
        with safe_open(str(self._stored(name).file), framework="pt") as handle:
            value = handle.get_tensor(name)
        return value if dtype is None else value.to(dtype)

    def rows(self, name: str, ids: Iterable[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """The rows `ids` of a 2-D tensor (an embedding table), without reading the others."""
        with safe_open(str(self._stored(name).file), framework="pt") as handle:
            table = handle.get_slice(name)
            value = torch.cat([table[i : i + 1] for i in ids])
        return value if dtype is None else value.to(dtype)

    def state_dict(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The tensors whose names start with `prefix`, keyed by the rest of their name."""
        return {
            name[len(prefix) :]: self.tensor(name, dtype if self.dtype(name).is_floating_point else None)
            for name in self._tensors
            if name.startswith(prefix)
        }

    def chunks(self, name: str, dtype: torch.dtype | None = None) -> Iterator[bytes]:
        """The stored bytes of a tensor, a chunk at a time; converted to `dtype` if it differs.

        Plain reads rather than a memory map, so copying a table larger than memory stays small.
        """
        stored = self._stored(name)
        convert = dtype is not None and dtype != stored.dtype
        total = stored.end - stored.start
        rows = stored.shape[0] if stored.shape else 1
        row_bytes = total // rows if rows else total
        # Whole rows per chunk, so that a converted chunk holds whole elements.
        step = max(row_bytes, _COPY_CHUNK_BYTES // row_bytes * row_bytes) if row_bytes else _COPY_CHUNK_BYTES
        with open(stored.file, "rb") as handle:
            handle.seek(stored.start)
            remaining = total
            while remaining > 0:
                data = handle.read(min(step, remaining))
                if not data:
                    raise ValueError(f"{stored.file}: the file ends inside tensor {name!r}")
                remaining -= len(data)
                if convert:
                    data = tensor_bytes(torch.frombuffer(bytearray(data), dtype=stored.dtype).to(dtype))
                yield data


def tensor_bytes(value: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a CPU tensor, as safetensors stores them."""
    value = value.detach().contiguous().cpu()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16
        return value.view(torch.int16).numpy().tobytes()
    return value.numpy().tobytes()


class _ShardWriter:
    """One safetensors file whose header is written first and whose tensors then arrive in order."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str]):
        header: dict = {"__metadata__": metadata}
        offset = 0
        for spec in specs:
            header[spec.name] = {
                "dtype": safetensors_code(spec.dtype),
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors does
        self.path = path
        self._expected = {spec.name: spec.nbytes for spec in specs}
        self._order = [spec.name for spec in specs]
        self._handle = open(path, "wb")
        self._handle.write(len(encoded).to_bytes(8, "little") + encoded)

    def write(self, name: str, chunks: Iterable[bytes]) -> None:
        expected_name = self._order.pop(0) if self._order else None
        if name != expected_name:
            raise ValueError(f"{self.path.name}: expected tensor {expected_name!r} next, got {name!r}")
        written = 0
        for chunk in chunks:
            self._handle.write(chunk)
            written += len(chunk)
        if written != self._expected[name]:
            raise ValueError(f"{name}: wrote {written} bytes, the header says {self._expected[name]}")

    def close(self) -> None:
        self._handle.close()
        if self._order:
            raise ValueError(f"{self.path.name}: tensors never written: {', '.join(self._order)}")


class ShardedWriter:
    """Writes a checkpoint folder's shards and index, tensors arriving in the planned order.

    Shards are filled in order up to `max_shard_bytes` (one tensor larger than that gets a shard of
    its own), named as `save_pretrained` names them.
    """

    def __init__(self, folder: str | Path, specs: list[TensorSpec], max_shard_bytes: int = 2 << 30):
        self.folder = Path(folder)
        groups: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in specs:
            if groups[-1] and size + spec.nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(spec)
            size += spec.nbytes
        count = len(groups)
        self._names = [SINGLE_WEIGHTS_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._groups = groups
        self._file_of = {spec.name: i for i, group in enumerate(groups) for spec in group}
        self._total = sum(spec.nbytes for spec in specs)
        self._current: _ShardWriter | None = None
        self._current_index = -1

    def write(self, name: str, chunks: Iterable[bytes]) -> None:
        index = self._file_of[name]
        if index != self._current_index:
            self._close_current()
            self._current_index = index
            self._current = _ShardWriter(self.folder / self._names[index], self._groups[index], {"format": "pt"})
        self._current.write(name, chunks)

    def write_tensor(self, name: str, value: torch.Tensor) -> None:
        self.write(name, [tensor_bytes(value)])

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def close(self) -> None:
        self._close_current()
        if self._current_index != len(self._groups) - 1:
            raise ValueError(f"{self.folder}: only {self._current_index + 1} of {len(self._groups)} shards written")
        if len(self._names) > 1:
            index = {
                "metadata": {"total_size": self._total},
                "weight_map": {name: self._names[i] for name, i in self._file_of.items()},
            }
            (self.folder / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def meta_model(config):
    """The model `config` describes, built on the meta device (shapes, no memory)."""
    from studio.modeling import model_class_for

    with torch.device("meta"):
        model = model_class_for(config)(config)
    if getattr(model.config.get_text_config(), "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model


def checkpoint_specs(model, dtype: torch.dtype) -> list[TensorSpec]:
    """What `save_pretrained` writes for `model`, in module order: parameters (a tied one once)
    and persistent buffers, floating-point ones in `dtype`."""
    specs, seen = [], set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        specs.append(TensorSpec(name, dtype if value.is_floating_point() else value.dtype, tuple(value.shape)))
    return specs


def set_loaded_dtype(config, dtype: torch.dtype) -> None:
    """Record `dtype` in `config` and its sub-configs, as a model loaded in `dtype` has it."""
    config.dtype = dtype
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None:
            sub.dtype = dtype


def decoder_prefix(model) -> str:
    """The state-dict prefix of `model`'s decoder stack ("model.language_model." or "model.")."""
    inner = model.model
    decoder = getattr(inner, "language_model", inner)
    return next(f"{name}." for name, module in model.named_modules() if module is decoder)


def resolve_dtype(config, checkpoint: Checkpoint, dtype: torch.dtype | str) -> torch.dtype:
    """The dtype a load with `dtype` gives: "auto" is the config's dtype, else the stored one."""
    if dtype != "auto":
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    stored = getattr(config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored)
    if stored is None:
        stored = next(checkpoint.dtype(n) for n in checkpoint.names() if checkpoint.dtype(n).is_floating_point)
    return stored


class StreamedDecoder(DecoderLayerSource):
    """A Gemma 4 checkpoint's decoder stack, its layers read from disk one at a time.

    The model is built on the meta device; only the parts the embedding stage needs (the
    per-layer-embedding projection and norms, a CPU rotary embedding) are read up front, and the
    embedding tables only at the rows of the tokens being embedded. It is a layer source for
    `studio.flap.stats.collect_statistics_layerwise`: `layer_calls` gives what transformers passes
    each layer for a batch, `load` materialises one layer on `device`, `release` drops it.
    """

    def __init__(self, model_dir: str | Path, dtype: torch.dtype | str = "auto", device: str | torch.device | None = None):
        from transformers import AutoConfig

        self.checkpoint = Checkpoint(model_dir)
        self.config = AutoConfig.from_pretrained(model_dir)
        self.text_config = text_config_of(self.config)
        self.dtype = resolve_dtype(self.config, self.checkpoint, dtype)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = meta_model(self.config).eval()
        self.decoder = language_model_of(self.model)
        self.prefix = decoder_prefix(self.model)
        self._load_embedding_stage()

    def _load_embedding_stage(self) -> None:
        decoder = self.decoder
        for name in ("per_layer_model_projection", "per_layer_projection_norm", "norm"):
            module = getattr(decoder, name, None)
            if module is not None:
                module.load_state_dict(self.checkpoint.state_dict(f"{self.prefix}{name}.", self.dtype), assign=True)
        decoder.rotary_emb = type(decoder.rotary_emb)(self.text_config)

    def _compact_embedding(self, name: str, ids: torch.Tensor):
        """`decoder.<name>` holding only the rows `ids` (sorted, unique), in its own class."""
        full = getattr(self.decoder, name)
        rows = self.checkpoint.rows(f"{self.prefix}{name}.weight", ids.tolist(), self.dtype)
        with torch.device("meta"):  # no throw-away random init
            compact = type(full)(rows.shape[0], rows.shape[1], None, embed_scale=full.scalar_embed_scale)
        compact.weight = torch.nn.Parameter(rows, requires_grad=False)
        compact.embed_scale = torch.tensor(full.scalar_embed_scale)
        return compact

    def layer_calls(self, batch: torch.Tensor) -> list:
        """Each layer's call arguments for `batch`, with its token ids looked up row by row."""
        from studio.flap.stats import _record_layer_calls

        ids = torch.unique(batch)  # sorted
        tables = ["embed_tokens"] + (["embed_tokens_per_layer"] if self.text_config.hidden_size_per_layer_input else [])
        full = {name: getattr(self.decoder, name) for name in tables}
        try:
            for name in tables:
                setattr(self.decoder, name, self._compact_embedding(name, ids))
            return _record_layer_calls(self.decoder, torch.searchsorted(ids, batch))
        finally:
            for name, module in full.items():
                setattr(self.decoder, name, module)

    def load(self, index: int, device: torch.device | None = None):
        """Decoder layer `index` with its weights, on `device` (default: the source's)."""
        import copy

        layer = copy.deepcopy(self.decoder.layers[index])
        state = self.checkpoint.state_dict(f"{self.prefix}layers.{index}.", self.dtype)
        target = device or self.device
        layer.load_state_dict({k: v.to(target) for k, v in state.items()}, assign=True, strict=True)
        return layer.eval()

    def release(self, index: int, layer) -> None:
        """Nothing to put back: the layer was a copy read from disk."""

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor of the decoder (name relative to it), in the source's dtype."""
        return self.checkpoint.tensor(self.prefix + name, self.dtype)


class LayerByLayerWriter:
    """Writes the checkpoint of `model` (a meta model of the result) into `out_dir` as it is made.

    Every tensor outside the decoder layers is copied from `checkpoint` at once (converted to
    `dtype` if stored otherwise), a chunk at a time; then `write_layer(i, layer)` writes decoder
    layer `i`'s tensors, layers in order, so that each can be dropped as soon as it is written.
    """

    def __init__(self, out_dir: str | Path, checkpoint: Checkpoint, model, dtype: torch.dtype, max_shard_bytes: int = 2 << 30):
        prefix = decoder_prefix(model) + "layers."
        self._prefix = prefix
        others, layers = [], {}
        for spec in checkpoint_specs(model, dtype):
            if spec.name.startswith(prefix):
                layers.setdefault(int(spec.name[len(prefix) :].split(".", 1)[0]), []).append(spec)
            else:
                others.append(spec)
        self._layers = [layers[i] for i in sorted(layers)]
        self._writer = ShardedWriter(out_dir, others + [s for group in self._layers for s in group], max_shard_bytes)
        for spec in others:
            self._writer.write(spec.name, checkpoint.chunks(spec.name, spec.dtype if spec.dtype.is_floating_point else None))
        self._next = 0

    def write_layer(self, index: int, layer) -> None:
        if index != self._next:
            raise ValueError(f"layers: layer {self._next} must be written next, got layer {index}")
        state = layer.state_dict()
        for spec in self._layers[index]:
            value = state[spec.name[len(f"{self._prefix}{index}.") :]]
            self._writer.write_tensor(spec.name, value.to("cpu", spec.dtype if value.is_floating_point() else value.dtype))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._layers):
            raise ValueError(f"layers: {self._next} of {len(self._layers)} decoder layers were written")
        self._writer.close()
