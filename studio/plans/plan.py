"""Per-layer FFN pruning plans and the YAML presets that describe them.

Preset schema (`presets/*.yaml`, read with a safe loader; data only):

    name: gemma4-lite-round2          # optional, defaults to the file name
    description: text                 # optional
    multiple: 128                     # widths must be multiples of this (default 128)
    num_layers: 42                    # optional; if given, must match the model
    tensor_parallel_size: 2           # optional (default 1): widths must also be multiples of 128 x this
    default: {ratio: 0.2}             # optional; applies to every layer not listed
    layers:                           # optional; one entry per listed layer
      - {layer: 0, intermediate_size: 8192}
      - {layer: 4, ratio: 0.0, lock: true}

Each layer entry (and `default`) takes either `intermediate_size` (the kept width) or `ratio` (the
fraction of the original width to prune; converted to the nearest multiple of `multiple`, never
below one multiple), and an optional `lock` (suggestions leave locked layers as they are).
A plan is resolved against a model's text config: `PruningPlan` then holds one width per layer.

Served with tensor parallelism t, vLLM splits each FFN's width over t GPUs, and its GPTQ-Marlin
kernels need every GPU's share of down_proj's input to be a multiple of 128: widths must be
multiples of 128 * t (`check_tensor_parallel`, also run when a server starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studio.atomic import atomic_write_text
from studio.modeling import original_widths
from studio.safety import parse_yaml, read_utf8

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
TOP_LEVEL_KEYS = {"name", "description", "multiple", "num_layers", "tensor_parallel_size", "default", "layers"}
# What GPTQ-Marlin in vLLM needs of each GPU's share of down_proj's input features.
MARLIN_INPUT_MULTIPLE = 128
LAYER_KEYS = {"layer", "intermediate_size", "ratio", "lock"}
DEFAULT_KEYS = LAYER_KEYS - {"layer"}


@dataclass
class PruningPlan:
    """Kept FFN width and lock for every decoder layer of one model."""

    widths: list[int]
    original: list[int]
    locks: list[bool] = field(default_factory=list)
    multiple: int = 128
    name: str = "custom"
    description: str = ""
    tensor_parallel_size: int = 1

    def __post_init__(self):
        if not self.locks:
            self.locks = [False] * len(self.widths)

    @property
    def ratios(self) -> list[float]:
        return [1 - w / o for w, o in zip(self.widths, self.original)]

    @property
    def global_ratio(self) -> float:
        """Fraction of all FFN channels (hence FFN parameters) removed."""
        return 1 - sum(self.widths) / sum(self.original)

    def validate(self) -> None:
        """Raise ValueError naming the first layer that breaks a rule."""
        if len(self.widths) != len(self.original):
            raise ValueError(f"plan: has {len(self.widths)} layers, the model has {len(self.original)}")
        if len(self.locks) != len(self.widths):
            raise ValueError(f"plan: has {len(self.locks)} locks for {len(self.widths)} layers")
        _check_multiple(self.multiple)
        for index, (width, original) in enumerate(zip(self.widths, self.original)):
            _check_width(index, width, original, self.multiple)
        check_tensor_parallel(self.widths, self.tensor_parallel_size)

    def to_preset(self) -> dict:
        """The plan as a preset mapping (every layer listed with its width)."""
        return {
            "name": self.name,
            "description": self.description,
            "multiple": self.multiple,
            "num_layers": len(self.widths),
            **({"tensor_parallel_size": self.tensor_parallel_size} if self.tensor_parallel_size != 1 else {}),
            "layers": [
                {"layer": i, "intermediate_size": w, **({"lock": True} if lock else {})}
                for i, (w, lock) in enumerate(zip(self.widths, self.locks))
            ],
        }


def _check_multiple(multiple) -> None:
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple <= 0:
        raise ValueError(f"multiple: must be a positive integer, got {multiple!r}")


def _check_width(index: int, width, original: int, multiple: int) -> None:
    where = f"layer {index}: intermediate_size"
    if isinstance(width, bool) or not isinstance(width, int):
        raise ValueError(f"{where} must be an integer, got {width!r}")
    if width <= 0:
        raise ValueError(f"{where} must be positive, got {width}")
    if width > original:
        raise ValueError(f"{where} {width} is above the original width {original}")
    if width % multiple:
        raise ValueError(f"{where} {width} is not a multiple of {multiple}")


def check_tensor_parallel(widths, tensor_parallel_size: int) -> None:
    """Raise ValueError naming the first width that cannot be split over `tensor_parallel_size` GPUs."""
    if isinstance(tensor_parallel_size, bool) or not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size: must be a positive integer, got {tensor_parallel_size!r}")
    if tensor_parallel_size == 1:
        return
    multiple = MARLIN_INPUT_MULTIPLE * tensor_parallel_size
    for index, width in enumerate(widths):
        if width % multiple:
            raise ValueError(
                f"layer {index}: intermediate_size {width} is not a multiple of {multiple} "
                f"({MARLIN_INPUT_MULTIPLE} x tensor_parallel_size {tensor_parallel_size}): vLLM's GPTQ-Marlin "
                f"needs each GPU's share of down_proj's input ({width / tensor_parallel_size:g} here) to be a "
                f"multiple of {MARLIN_INPUT_MULTIPLE}"
            )


def width_for_ratio(original: int, ratio: float, multiple: int) -> int:
    """The multiple of `multiple` nearest to original * (1 - ratio), at least one multiple."""
    target = original * (1 - ratio)
    return max(multiple, min(original - original % multiple, int(round(target / multiple)) * multiple))


def _resolve_entry(where: str, entry: dict, original: int, multiple: int, allowed: set[str]) -> tuple[int, bool]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    has_width, has_ratio = "intermediate_size" in entry, "ratio" in entry
    if has_width and has_ratio:
        raise ValueError(f"{where}: give intermediate_size or ratio, not both")
    lock = entry.get("lock", False)
    if not isinstance(lock, bool):
        raise ValueError(f"{where}: lock must be true or false, got {lock!r}")
    if has_ratio:
        ratio = entry["ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"{where}: ratio must be a number in [0, 1), got {ratio!r}")
        return width_for_ratio(original, float(ratio), multiple), lock
    if has_width:
        return entry["intermediate_size"], lock
    raise ValueError(f"{where}: no width (give intermediate_size or ratio, or a top-level default)")


def resolve_plan(preset: dict, text_config, name: str = "custom") -> PruningPlan:
    """Turn a preset mapping into a validated `PruningPlan` for the model of `text_config`."""
    if not isinstance(preset, dict):
        raise ValueError(f"preset: must be a mapping, got {type(preset).__name__}")
    unknown = sorted(set(preset) - TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(f"preset: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    multiple = preset.get("multiple", 128)
    _check_multiple(multiple)
    original = original_widths(text_config)
    n_layers = len(original)
    if "num_layers" in preset and preset["num_layers"] != n_layers:
        raise ValueError(f"num_layers: the preset is for {preset['num_layers']} layers, the model has {n_layers}")
    entries = preset.get("layers") or []
    if not isinstance(entries, list):
        raise ValueError("layers: must be a list of {layer: N, intermediate_size|ratio: ..., lock: ...}")
    by_layer: dict[int, dict] = {}
    for position, entry in enumerate(entries):
        index = entry.get("layer") if isinstance(entry, dict) else None
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"layers[{position}]: layer must be an integer index, got {index!r}")
        if not 0 <= index < n_layers:
            raise ValueError(f"layer {index}: out of range, the model has {n_layers} layers (0-{n_layers - 1})")
        if index in by_layer:
            raise ValueError(f"layer {index}: listed twice")
        by_layer[index] = entry
    tensor_parallel_size = preset.get("tensor_parallel_size", 1)
    default = preset.get("default")
    widths, locks = [], []
    for index in range(n_layers):
        if index in by_layer:
            width, lock = _resolve_entry(f"layer {index}", by_layer[index], original[index], multiple, LAYER_KEYS)
        elif default is not None:
            width, lock = _resolve_entry("default", default, original[index], multiple, DEFAULT_KEYS)
        else:
            raise ValueError(f"layer {index}: no entry and no default (give intermediate_size or ratio)")
        widths.append(width)
        locks.append(lock)
    plan = PruningPlan(
        widths=widths,
        original=original,
        locks=locks,
        multiple=multiple,
        name=str(preset.get("name", name)),
        description=str(preset.get("description", "")),
        tensor_parallel_size=tensor_parallel_size,
    )
    plan.validate()
    return plan


def uniform_plan(text_config, ratio: float, multiple: int = 128) -> PruningPlan:
    """Every layer pruned by `ratio` (rounded to the nearest multiple)."""
    return resolve_plan({"multiple": multiple, "default": {"ratio": ratio}}, text_config, name=f"uniform-{ratio:g}")


def read_preset(path: str | Path) -> dict:
    """Parse a preset file (YAML, safe loader: data only, never code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plan: no such preset file: {path}")
    data = parse_yaml(read_utf8(path, "plan"), "plan", path.name)
    if not isinstance(data, dict):
        raise ValueError(f"plan: {path.name} must hold a mapping at the top level")
    data.setdefault("name", path.stem)
    return data


def load_plan(path: str | Path, text_config) -> PruningPlan:
    """Read and resolve a preset file against a model's text config."""
    return resolve_plan(read_preset(path), text_config, name=Path(path).stem)


def save_plan(plan: PruningPlan, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(plan.to_preset(), sort_keys=False))


def builtin_presets() -> dict[str, Path]:
    """Preset name -> file, for the presets shipped in `presets/`."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def find_preset(name_or_path: str) -> Path:
    """A preset file from a path or the name of a built-in preset."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    presets = builtin_presets()
    if name_or_path not in presets:
        raise ValueError(f"plan: no preset named {name_or_path!r} (built-in: {', '.join(presets)})")
    return presets[name_or_path]
