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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.calibration import CalibrationSpec
from studio.checkpoint import DTYPE_NAMES
from studio.eval.settings import EvalSettings
from studio.export.settings import ExportSettings
from studio.fields import reject_unknown
from studio.flap.settings import FlapSettings
from studio.gptq.settings import QuantizeSettings
from studio.hub_text import is_hub_source
from studio.model_source import resolve_model
from studio.paths import presets_dir
from studio.safety import parse_yaml, read_utf8

DTYPES = DTYPE_NAMES
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TOP_LEVEL_KEYS = ("model", "output", "dtype", "plan", "flap", "calibration", "quantize", "export", "evaluate")
# The calibration fields a spec may set (the text column stays the library's default).
CALIBRATION_FIELDS = ("source", "samples", "seqlen", "seed")


@dataclass(frozen=True)
class JobSpec:
    """A validated, normalised job spec.

    `plan` is either `{"ratio": r}` (FLAP's global structure search prunes a fraction r of all FFN
    channels) or `{"preset": {...}, "source": ...}` (a per-layer table in the presets/ schema).
    `quantize` / `evaluate` are None when the spec turns those stages off; `export: false` keeps
    the result in the job folder instead of publishing it to STUDIO_HOME/exports/<output>, and
    `export_settings` says how it is written. Each stage's settings are the library's own type
    (`FlapSettings`, `CalibrationSpec`, `QuantizeSettings`, `ExportSettings`, `EvalSettings`), with
    the library's defaults.
    """

    model: str
    output: str
    plan: dict
    dtype: str = "bfloat16"
    flap: FlapSettings = field(default_factory=FlapSettings)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    quantize: QuantizeSettings | None = field(default_factory=QuantizeSettings)
    export: bool = True
    evaluate: EvalSettings | None = None
    export_settings: ExportSettings = field(default_factory=ExportSettings)

    def __post_init__(self):
        # GPTQ loads the model in the job's dtype and calibrates on the job's calibration windows.
        if self.quantize is not None and (self.quantize.dtype, self.quantize.calibration) != (self.dtype, self.calibration):
            object.__setattr__(self, "quantize", replace(self.quantize, dtype=self.dtype, calibration=self.calibration))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["quantize"] = self.quantize.section() if self.quantize is not None else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        """Rebuild a spec stored by `to_dict` (already normalised; not re-validated)."""
        quantize, evaluate = data.get("quantize"), data.get("evaluate")
        calibration = CalibrationSpec.from_dict(data["calibration"])
        return cls(
            model=data["model"],
            output=data["output"],
            plan=data["plan"],
            dtype=data["dtype"],
            flap=FlapSettings.from_dict(data["flap"]),
            calibration=calibration,
            quantize=QuantizeSettings.from_section(quantize, data["dtype"], calibration) if quantize is not None else None,
            export=data["export"],
            evaluate=EvalSettings.from_dict(evaluate) if evaluate is not None else None,
            export_settings=ExportSettings.from_dict(data.get("export_settings") or {}),
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
    reject_unknown("", data, TOP_LEVEL_KEYS)
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
    flap = FlapSettings.from_dict(_section(data, "flap"))  # validates, naming the field
    calibration = _calibration(_section(data, "calibration"), base)
    quantize = None
    if data.get("quantize", True) is not False:
        quantize = QuantizeSettings.from_section(_section(data, "quantize"), dtype, calibration)
    export = data.get("export", True)
    export_settings = ExportSettings()
    if isinstance(export, dict):
        export_settings, export = ExportSettings.from_dict(export), True
    export = _bool("export", export)
    evaluate = None if data.get("evaluate", False) is False else _evaluate(_section(data, "evaluate"), base)
    plan = _plan(data["plan"], base, model)
    return JobSpec(model, output, plan, dtype, flap, calibration, quantize, export, evaluate, export_settings)


def _section(data: dict, name: str) -> dict:
    """The mapping under `name` (`true` or absent means all defaults)."""
    value = data.get(name, {})
    if value is True or value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name}: must be a mapping (or false to skip the stage), got {value!r}")
    return value


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
    reject_unknown("calibration.", section, CALIBRATION_FIELDS)
    values = dict(section)
    values["source"] = _text_source("calibration.source", section.get("source", CalibrationSpec.source), base)
    return CalibrationSpec.from_dict(values)  # validates, naming the field


def _evaluate(section: dict, base: Path) -> EvalSettings:
    values = dict(section)
    values["source"] = _text_source("evaluate.source", section.get("source", EvalSettings.source), base)
    if "tasks" in section:  # lm-eval task names, or fact_recall=FILE relative to the spec
        from studio.eval.downstream import parse_tasks

        values["tasks"] = parse_tasks(section["tasks"], base, "evaluate.tasks")
    return EvalSettings.from_dict(values)  # validates, naming the field


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
