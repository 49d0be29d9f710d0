"""Stored tensors and what they add up to: parameters and bytes per component.

Parameters count what the model computes with: a quantized module counts its K * N weights (not the
packed int32 elements); its scales, zeros and g_idx are storage, counted in bytes only. So pruning
changes parameters, quantization changes bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from studio.checkpoint import SAFETENSORS_DTYPES, SAFETENSORS_FLOAT_CODES, dtype_of
from studio.sizes.components import COMPONENTS, component_of

# The tensors GPTQ v1 stores in place of a quantized module's weight (`estimate.gptq_tensor_infos`).
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
DTYPE_BYTES = {code: size for code, (_, size) in SAFETENSORS_DTYPES.items()}
FLOAT_DTYPES = SAFETENSORS_FLOAT_CODES


def safetensors_dtype(name: str) -> str:
    """The safetensors name ("BF16") of a dtype the studio saves in ("bfloat16")."""
    return dtype_of(name).safetensors


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
        return self.numel * DTYPE_BYTES[self.dtype]


def is_gptq_part(tensor_name: str) -> bool:
    return tensor_name.rsplit(".", 1)[-1] in GPTQ_PARTS


def with_float_dtype(tensors: Iterable[TensorInfo], dtype: str) -> list[TensorInfo]:
    """`tensors` with every unquantized floating-point tensor stored in `dtype` ("bfloat16", ...)."""
    target = safetensors_dtype(dtype)
    return [
        TensorInfo(t.name, t.shape, target) if t.dtype in FLOAT_DTYPES and t.dtype != target and not is_gptq_part(t.name) else t
        for t in tensors
    ]


@dataclass(frozen=True)
class ComponentSize:
    """Parameters and bytes of one component; `quantized_*` is the part held as GPTQ storage."""

    params: int = 0
    bytes: int = 0
    quantized_params: int = 0
    quantized_bytes: int = 0

    def __add__(self, other: ComponentSize) -> ComponentSize:
        return ComponentSize(
            self.params + other.params,
            self.bytes + other.bytes,
            self.quantized_params + other.quantized_params,
            self.quantized_bytes + other.quantized_bytes,
        )


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

    def bytes_by_component(self) -> dict[str, int]:
        return {name: size.bytes for name, size in self.components.items()}

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


def tally(tensors: Iterable[TensorInfo], bits: int | None = None) -> SizeReport:
    """Add up `tensors` by component. `bits` (needed when GPTQ tensors are present) turns a
    qweight's packed shape back into its module's K * N weights."""
    return tally_components(((component_of(t.name), t) for t in tensors), bits)


def tally_components(tensors: Iterable[tuple[str, TensorInfo]], bits: int | None = None) -> SizeReport:
    """`tally` of (component, tensor) pairs whose components are already known."""
    totals: dict[str, list[int]] = {}  # component -> [params, bytes, quantized params, quantized bytes]
    parts = dict.fromkeys(GPTQ_PARTS, 0)
    for component, tensor in tensors:  # the plan editor tallies on every edit: plain arithmetic here
        total = totals.get(component)
        if total is None:
            total = totals[component] = [0, 0, 0, 0]
        numel = math.prod(tensor.shape)
        nbytes = numel * DTYPE_BYTES[tensor.dtype]
        kind = tensor.name.rsplit(".", 1)[-1]
        if kind in parts:
            params = 0
            if kind == "qweight":
                if not bits:
                    raise ValueError(f"bits: needed to count the weights of {tensor.name}")
                packed_rows, out_features = tensor.shape
                params = packed_rows * 32 // bits * out_features
            total[0] += params
            total[1] += nbytes
            total[2] += params
            total[3] += nbytes
            parts[kind] += nbytes
        else:
            total[0] += numel
            total[1] += nbytes
    ordered = {name: ComponentSize(*totals[name]) for name in COMPONENTS if name in totals}
    return SizeReport(ordered, parts if any(parts.values()) else {})
