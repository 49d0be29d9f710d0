"""Job specs: what one compression run does, read from YAML or JSON and validated field by field.

A spec names the model, the pruning plan, the calibration data, the GPTQ settings, the evaluation
and the output name (schema and examples: docs/jobs.md). `load_spec` checks every field and raises
`ValueError` naming the first bad one (`calibration.samples: must be a positive integer, got -1`).
The result is normalised: relative paths are made absolute (relative to the spec file's folder),
preset plans are read and embedded, and defaults are filled in. The normalised form is what a job
stores and what stage fingerprints hash, so a job never depends on files that may change later.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.calibration import CalibrationSpec
from studio.checkpoint import DTYPE_NAMES
from studio.flap.settings import FlapSettings
from studio.hub_text import is_hub_source
from studio.model_source import resolve_model
from studio.paths import presets_dir
from studio.safety import parse_yaml, read_utf8

DTYPES = DTYPE_NAMES
GPTQ_BITS = (2, 3, 4, 8)
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# The card calibrates on WikiText-2 train (CalibrationSpec's default) and we report perplexity on its test split.
DEFAULT_EVAL_SOURCE = "hf:wikitext/wikitext-2-raw-v1/test"
TOP_LEVEL_KEYS = ("model", "output", "dtype", "plan", "flap", "calibration", "quantize", "export", "evaluate")


FLAP_FIELDS = ("metric", "max_ratio", "compensation", "refit_damp", "sequential", "batch_size", "layerwise")
# Jobs calibrate one decoder layer at a time on the accelerator: fits big models, reports progress per layer.
JOB_FLAP_DEFAULTS = FlapSettings(layerwise=True)


@dataclass(frozen=True)
class GptqSettings:
    """The card's GPTQ W4A16 defaults."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = True
    damp_percent: float = 0.01


@dataclass(frozen=True)
class EvalSettings:
    source: str = DEFAULT_EVAL_SOURCE
    seqlen: int = 2048
    stride: int | None = None
    max_tokens: int | None = None
    batch_size: int = 1
    tasks: tuple[str, ...] = ()  # lm-eval tasks (studio.eval.downstream.parse_tasks)


@dataclass(frozen=True)
class JobSpec:
    """A validated, normalised job spec.

    `plan` is either `{"ratio": r}` (FLAP's global structure search prunes a fraction r of all FFN
    channels) or `{"preset": {...}, "source": ...}` (a per-layer table in the presets/ schema).
    `quantize` / `evaluate` are None when the spec turns those stages off; `export: false` keeps
    the result in the job folder instead of publishing it to STUDIO_HOME/exports/<output>.
    """

    model: str
    output: str
    plan: dict
    dtype: str = "bfloat16"
    flap: FlapSettings = JOB_FLAP_DEFAULTS
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    quantize: GptqSettings | None = field(default_factory=GptqSettings)
    export: bool = True
    evaluate: EvalSettings | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        """Rebuild a spec stored by `to_dict` (already normalised; not re-validated)."""
        quantize, evaluate = data.get("quantize"), data.get("evaluate")
        return cls(
            model=data["model"],
            output=data["output"],
            plan=data["plan"],
            dtype=data["dtype"],
            flap=FlapSettings.from_dict(data["flap"]),
            calibration=CalibrationSpec(**data["calibration"]),
            quantize=GptqSettings(**quantize) if quantize is not None else None,
            export=data["export"],
            evaluate=EvalSettings(**evaluate) if evaluate is not None else None,
        )


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML or JSON spec file and validate it (paths inside are relative to its folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec: no such file: {path}")
    text = read_utf8(path, "spec")
    if path.suffix != ".json":
        return parse_spec(parse_yaml(text, "spec", path.name), base_dir=path.resolve().parent)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"spec: {path.name} is not valid JSON: {err}") from err
    return parse_spec(data, base_dir=path.resolve().parent)


def parse_spec(data: Any, base_dir: str | Path | None = None) -> JobSpec:
    """Validate a spec mapping; relative paths resolve against `base_dir` (default: the cwd)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if not isinstance(data, dict):
        raise ValueError(f"spec: must be a mapping at the top level, got {type(data).__name__}")
    _reject_unknown("", data, TOP_LEVEL_KEYS)
    for required in ("model", "output", "plan"):
        if required not in data:
            raise ValueError(f"{required}: is required")
    model = _model(data["model"], base)
    output = data["output"]
    if not isinstance(output, str) or not OUTPUT_NAME.match(output):
        raise ValueError(
            f"output: must be a folder name of letters, digits, '.', '_' or '-' (at most 100), got {output!r}"
        )
    dtype = data.get("dtype", "bfloat16")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    flap = _flap(_section(data, "flap"))
    calibration = _calibration(_section(data, "calibration"), base)
    quantize = None if data.get("quantize", True) is False else _gptq(_section(data, "quantize"))
    export = _bool("export", data.get("export", True))
    evaluate = None if data.get("evaluate", False) is False else _evaluate(_section(data, "evaluate"), base)
    plan = _plan(data["plan"], base, model)
    return JobSpec(model, output, plan, dtype, flap, calibration, quantize, export, evaluate)


def _section(data: dict, name: str) -> dict:
    """The mapping under `name` (`true` or absent means all defaults)."""
    value = data.get(name, {})
    if value is True or value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name}: must be a mapping (or false to skip the stage), got {value!r}")
    return value


def _reject_unknown(prefix: str, data: dict, allowed) -> None:
    for key in data:
        if key not in allowed:
            raise ValueError(f"{prefix}{key}: unknown field (allowed: {', '.join(allowed)})")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def _optional_positive_int(name: str, value) -> int | None:
    return None if value is None else _positive_int(name, value)


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false, got {value!r}")
    return value


def _fraction(name: str, value, low_open: bool = False) -> float:
    """A number in [0, 1) (or (0, 1) when `low_open`)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and (0 < value < 1 if low_open else 0 <= value < 1):
        return float(value)
    interval = "(0, 1)" if low_open else "[0, 1)"
    raise ValueError(f"{name}: must be a number in {interval}, got {value!r}")


def _local_path(value: str, base: Path) -> Path:
    return (base / Path(value).expanduser()).resolve()


def _model(value, base: Path) -> str:
    return str(resolve_model(value, "model", base=base))


def _text_source(name: str, value, base: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: must be a text file path or 'hf:DATASET/CONFIG/SPLIT', got {value!r}")
    if is_hub_source(value):
        return value
    path = _local_path(value, base)
    if not path.is_file():
        raise ValueError(f"{name}: no such text file: {path}")
    return str(path)


def _calibration(section: dict, base: Path) -> CalibrationSpec:
    _reject_unknown("calibration.", section, ("source", "samples", "seqlen", "seed"))
    defaults = CalibrationSpec()
    seed = section.get("seed", defaults.seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"calibration.seed: must be a non-negative integer, got {seed!r}")
    return CalibrationSpec(
        source=_text_source("calibration.source", section.get("source", defaults.source), base),
        samples=_positive_int("calibration.samples", section.get("samples", defaults.samples)),
        seqlen=_positive_int("calibration.seqlen", section.get("seqlen", defaults.seqlen)),
        seed=seed,
    )


def _flap(section: dict) -> FlapSettings:
    # `bias_compensation: true|false` is the older spelling of `compensation: bias|none`.
    _reject_unknown("flap.", section, (*FLAP_FIELDS, "bias_compensation"))
    values = {name: section[name] for name in FLAP_FIELDS if name in section}
    if "bias_compensation" in section:
        if "compensation" in section:
            raise ValueError("flap.bias_compensation: replaced by flap.compensation; give only flap.compensation")
        values["compensation"] = "bias" if _bool("flap.bias_compensation", section["bias_compensation"]) else "none"
    defaults = asdict(JOB_FLAP_DEFAULTS)
    return FlapSettings(**{**defaults, **values})  # FlapSettings validates, naming the field


def _gptq(section: dict) -> GptqSettings:
    _reject_unknown("quantize.", section, ("bits", "group_size", "sym", "desc_act", "damp_percent"))
    defaults = GptqSettings()
    bits = section.get("bits", defaults.bits)
    if bits not in GPTQ_BITS or isinstance(bits, bool):
        raise ValueError(f"quantize.bits: must be one of {', '.join(map(str, GPTQ_BITS))}, got {bits!r}")
    group_size = section.get("group_size", defaults.group_size)
    if group_size != -1:
        _positive_int("quantize.group_size", group_size)
    return GptqSettings(
        bits=bits,
        group_size=group_size,
        sym=_bool("quantize.sym", section.get("sym", defaults.sym)),
        desc_act=_bool("quantize.desc_act", section.get("desc_act", defaults.desc_act)),
        damp_percent=_fraction("quantize.damp_percent", section.get("damp_percent", defaults.damp_percent), True),
    )


def _evaluate(section: dict, base: Path) -> EvalSettings:
    from studio.eval.downstream import parse_tasks

    _reject_unknown("evaluate.", section, ("source", "seqlen", "stride", "max_tokens", "batch_size", "tasks"))
    defaults = EvalSettings()
    seqlen = section.get("seqlen", defaults.seqlen)
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"evaluate.seqlen: must be an integer of at least 2, got {seqlen!r}")
    stride = _optional_positive_int("evaluate.stride", section.get("stride"))
    if stride is not None and stride > seqlen:
        raise ValueError(f"evaluate.stride: must not exceed evaluate.seqlen ({seqlen}), got {stride}")
    max_tokens = _optional_positive_int("evaluate.max_tokens", section.get("max_tokens"))
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"evaluate.max_tokens: must be at least 2, got {max_tokens}")
    return EvalSettings(
        source=_text_source("evaluate.source", section.get("source", defaults.source), base),
        seqlen=seqlen,
        stride=stride,
        max_tokens=max_tokens,
        batch_size=_positive_int("evaluate.batch_size", section.get("batch_size", defaults.batch_size)),
        tasks=parse_tasks(section.get("tasks", []), base, "evaluate.tasks"),
    )


def _plan(value, base: Path, model: str) -> dict:
    """Normalise the plan to {"ratio": r} or {"preset": mapping, "source": where it came from}."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"ratio": _fraction("plan", value, low_open=True)}
    if isinstance(value, dict):
        plan = {"preset": value, "source": "inline"}
    elif isinstance(value, str) and value.strip():
        plan = _preset_plan(value, base)
    else:
        raise ValueError(
            f"plan: must be a global ratio in (0, 1), a preset name, a preset file or a per-layer table, got {value!r}"
        )
    _check_plan_against_model(plan["preset"], model)
    return plan


def _preset_plan(value: str, base: Path) -> dict:
    from studio.plans.plan import find_preset, read_preset

    candidate = _local_path(value, base)
    saved = presets_dir() / f"{value}.yaml"  # presets saved by users win over built-in ones
    try:
        if candidate.exists():
            path = candidate
        elif "/" not in value and saved.is_file():
            path = saved
        else:
            path = find_preset(value)
        preset = read_preset(path)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    return {"preset": preset, "source": str(Path(path).resolve())}


def _check_plan_against_model(preset: dict, model: str) -> None:
    """Resolve the table against the model's config when the model is a local folder."""
    if not Path(model).is_dir():
        return  # a hub model: checked when the job runs, without network access at submit
    from studio.modeling import load_text_config
    from studio.plans.plan import resolve_plan

    text_config = load_text_config(model)
    try:
        resolve_plan(preset, text_config)
    except ValueError as err:
        raise ValueError(f"plan: {err}") from err
