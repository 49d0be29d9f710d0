"""GPTQ settings: one type for the library, job specs, the CLI and the UI.

This module imports nothing heavy (no torch, no GPTQModel at import), so the job spec parser and the
CLI read it cheaply. Errors name the field as a job spec writes it (`quantize.bits: ...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from studio.calibration import CalibrationSpec
from studio.checkpoint import DTYPE_NAMES, dtype_of
from studio.fields import reject_unknown
from studio.gptq.rules import DEFAULT_DYNAMIC, validate_dynamic

GPTQ_BITS = (2, 3, 4, 8)
# GPTQ v1 ("gptq") is what vLLM's GPTQ and Marlin kernels read; GPTQModel converts on save.
CHECKPOINT_FORMATS = ("gptq",)
DTYPES = DTYPE_NAMES
# The fields a job spec's `quantize` section may set; the spec gives `dtype` and `calibration` at its top level.
SECTION_FIELDS = ("bits", "group_size", "sym", "desc_act", "damp_percent")


def _default_calibration() -> CalibrationSpec:
    return CalibrationSpec()


@dataclass(frozen=True)
class QuantizeSettings:
    """GPTQ settings; the defaults are the card's (W4, group 128, sym, desc_act, damp 0.01, GPTQ v1,
    256 x 2048 tokens of WikiText-2 train)."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = True
    damp_percent: float = 0.01
    checkpoint_format: str = "gptq"
    # dtype the model is loaded in; unquantized modules are saved in it (the card: bfloat16).
    dtype: str = "bfloat16"
    calibration: CalibrationSpec = field(default_factory=_default_calibration)
    dynamic: Mapping[str, Mapping] = field(default_factory=lambda: dict(DEFAULT_DYNAMIC))

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in GPTQ_BITS:
            raise ValueError(f"quantize.bits: must be one of {', '.join(map(str, GPTQ_BITS))}, got {self.bits!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or not (
            self.group_size == -1 or self.group_size > 0
        ):
            raise ValueError(f"quantize.group_size: must be a positive integer or -1, got {self.group_size!r}")
        for name in ("sym", "desc_act"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"quantize.{name}: must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.damp_percent, bool) or not isinstance(self.damp_percent, (int, float)) or not (
            0 < self.damp_percent < 1
        ):
            raise ValueError(f"quantize.damp_percent: must be a number in (0, 1), got {self.damp_percent!r}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"quantize.checkpoint_format: only {', '.join(CHECKPOINT_FORMATS)} (GPTQ v1, what vLLM reads) "
                f"is written, got {self.checkpoint_format!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"quantize.dtype: must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.calibration, CalibrationSpec):
            raise ValueError("quantize.calibration: must be a CalibrationSpec")
        validate_dynamic(self.dynamic)

    @classmethod
    def from_dict(cls, data: Mapping) -> QuantizeSettings:
        """Settings from a plain dict (any of the fields); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"quantize: unknown setting(s) {', '.join(sorted(unknown))}")
        values = dict(data)
        if isinstance(values.get("calibration"), Mapping):
            values["calibration"] = CalibrationSpec(**values["calibration"])
        return cls(**values)

    @classmethod
    def from_section(cls, section: Mapping, dtype: str, calibration: CalibrationSpec) -> QuantizeSettings:
        """Settings from a job spec's `quantize` section, with the spec's top-level dtype and calibration."""
        reject_unknown("quantize.", section, SECTION_FIELDS)
        return cls(**section, dtype=dtype, calibration=calibration)

    def section(self) -> dict:
        """The job spec's `quantize` section for these settings (what `from_section` reads)."""
        return {name: getattr(self, name) for name in SECTION_FIELDS}

    @classmethod
    def from_args(cls, args, calibration: CalibrationSpec) -> QuantizeSettings:
        """Settings from the options of `add_arguments` and `--dtype`."""
        return cls(
            bits=args.bits,
            group_size=args.group_size,
            sym=not args.no_sym,
            desc_act=not args.no_desc_act,
            damp_percent=args.damp_percent,
            dtype=args.dtype,
            calibration=calibration,
        )

    @staticmethod
    def add_arguments(parser) -> None:
        """The GPTQ options of `quantize` and `compress`, these settings' defaults as theirs."""
        defaults = QuantizeSettings()
        parser.add_argument(
            "--bits", type=int, default=defaults.bits,
            help=f"weight bits: {', '.join(map(str, GPTQ_BITS))} (default: {defaults.bits})",
        )  # fmt: skip
        parser.add_argument(
            "--group-size", type=int, default=defaults.group_size,
            help=f"quantization group size, -1 for none (default: {defaults.group_size})",
        )  # fmt: skip
        parser.add_argument("--no-sym", action="store_true", help="asymmetric quantization (default: symmetric)")
        parser.add_argument("--no-desc-act", action="store_true", help="quantize columns in order (default: desc_act)")
        parser.add_argument(
            "--damp-percent", type=float, default=defaults.damp_percent,
            help=f"Hessian damping fraction (default: {defaults.damp_percent})",
        )  # fmt: skip

    def to_dict(self) -> dict:
        data = asdict(self)
        data["dynamic"] = {pattern: dict(overrides) for pattern, overrides in self.dynamic.items()}
        return data

    @property
    def torch_dtype(self):
        return dtype_of(self.dtype, "dtype").torch

    def gptqmodel_config(self, device: str):
        """GPTQModel's QuantizeConfig for these settings, quantizing on `device`."""
        from studio.gptq.runtime import import_gptqmodel

        QuantizeConfig = import_gptqmodel().QuantizeConfig
        normalize_device = import_gptqmodel("gptqmodel.models._const").normalize_device

        config = QuantizeConfig(
            bits=self.bits,
            group_size=self.group_size,
            sym=self.sym,
            desc_act=self.desc_act,
            damp_percent=self.damp_percent,
            format=self.checkpoint_format,
            dynamic={pattern: dict(overrides) for pattern, overrides in self.dynamic.items()},
            device=device,
            # Off by default: the studio hands GPTQModel the model it built (in memory);
            # `quantize_checkpoint(offload=True)` turns it on with a studio-built meta skeleton.
            offload_to_disk=False,
        )
        # GPTQModel's from_pretrained normalises these two before quantizing; we bypass it.
        config.device = normalize_device(config.device)
        config.calculate_bits_per_weight()
        return config
