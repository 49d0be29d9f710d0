"""How FLAP scores, prunes and compensates: one settings type for the library, the CLI, job specs and the UI.

This module imports nothing heavy, so the job spec parser and the CLI read it without torch.
Errors name the field as a job spec writes it (`flap.compensation: ...`); the CLI renames the
field to its flag (`from_args`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from studio.fields import reject_unknown

METRICS = ("wifv", "wifn", "ifv", "obs")
# Metrics that choose a layer's channels from its Gram matrix while pruning it (`studio.flap.obs`).
GRAM_METRICS = ("obs",)
# What replaces the removed channels' contribution to a layer's down_proj output:
# - bias:  their mean, folded into a bias (FLAP, the card's method);
# - refit: a least-squares refit of the kept columns and the bias to the full layer's output;
# - none:  nothing.
COMPENSATIONS = ("bias", "refit", "none")


@dataclass(frozen=True)
class FlapSettings:
    """How channels are scored, how the removed ones are compensated and how calibration runs.

    `refit_damp` is the ridge weight of the refit, relative to the mean diagonal of its Gram
    matrix; the ridge pulls toward the bias solution, so the refit never fits worse than `bias`.
    The `obs` metric damps its Gram matrix by the same weight.
    `sequential` calibrates each layer on the outputs of the already-pruned layers before it.
    """

    metric: str = "wifv"
    compensation: str = "bias"
    refit_damp: float = 0.01
    sequential: bool = False
    batch_size: int = 1
    # One decoder layer at a time on the device: read from the checkpoint's shards when the model is
    # a local safetensors folder (never whole in memory), else moved from the CPU. Fits big models
    # and reports progress per layer; off holds the whole model on the device.
    layerwise: bool = True
    max_ratio: float = 0.5  # per-layer cap when a plan is suggested from a global ratio

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"flap.metric: must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.compensation not in COMPENSATIONS:
            raise ValueError(
                f"flap.compensation: must be one of {', '.join(COMPENSATIONS)}, got {self.compensation!r}"
            )
        if not _is_number(self.refit_damp) or not 0 <= self.refit_damp < 1:
            raise ValueError(f"flap.refit_damp: must be a number in [0, 1), got {self.refit_damp!r}")
        if not _is_number(self.max_ratio) or not 0 <= self.max_ratio < 1:
            raise ValueError(f"flap.max_ratio: must be a number in [0, 1), got {self.max_ratio!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"flap.batch_size: must be a positive integer, got {self.batch_size!r}")
        for name in ("sequential", "layerwise"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"flap.{name}: must be true or false, got {getattr(self, name)!r}")

    @property
    def needs_gram(self) -> bool:
        """Whether pruning a layer needs its Gram matrix (a refit, or channels chosen by obs)."""
        return self.compensation == "refit" or self.metric in GRAM_METRICS

    @property
    def calibrates_while_pruning(self) -> bool:
        """Whether pruning needs its own pass over the calibration data (a Gram matrix, or a pruned prefix)."""
        return self.needs_gram or self.sequential

    @classmethod
    def from_dict(cls, data: dict) -> FlapSettings:
        """Settings from a job spec's `flap` section or a stored spec; absent fields take the defaults.

        Unknown fields are errors. `bias_compensation: true|false` is the older spelling of
        `compensation: bias|none` (specs written before `compensation` existed).
        """
        reject_unknown("flap.", data, (*FIELDS, "bias_compensation"))
        values = {name: data[name] for name in FIELDS if name in data}
        if "bias_compensation" in data:
            if "compensation" in data:
                raise ValueError("flap.bias_compensation: replaced by flap.compensation; give only flap.compensation")
            legacy = data["bias_compensation"]
            if not isinstance(legacy, bool):
                raise ValueError(f"flap.bias_compensation: must be true or false, got {legacy!r}")
            values["compensation"] = "bias" if legacy else "none"
        return cls(**values)

    @staticmethod
    def add_arguments(parser, batch_size: bool = False) -> None:
        """The FLAP options of `prune` and `compress`, these settings' defaults as theirs
        (`--max-layer-ratio` goes with the plan options, `add_max_ratio_argument`)."""
        defaults = FlapSettings()
        parser.add_argument(
            "--metric",
            default=defaults.metric,
            choices=METRICS,
            help="channel score; obs removes channels greedily by their least-squares cost with the inverse Gram "
            f"matrix (docs/obs.md) (default: {defaults.metric})",
        )
        parser.add_argument(
            "--compensation",
            default=defaults.compensation,
            choices=COMPENSATIONS,
            help="what replaces the removed channels: bias (FLAP's mean-folding bias), refit (least-squares refit of "
            "the kept down_proj columns and the bias to the full layer's output, one layer's Gram matrix at a time) "
            f"or none (default: {defaults.compensation})",
        )
        parser.add_argument(
            "--refit-damp",
            type=float,
            default=defaults.refit_damp,
            help=f"with --compensation refit or --metric obs: ridge weight relative to the Gram matrix's mean diagonal, pulling toward "
            f"the bias solution (default: {defaults.refit_damp})",
        )
        parser.add_argument(
            "--sequential",
            action="store_true",
            default=defaults.sequential,
            help="calibrate each layer on the outputs of the already-pruned layers before it (one layer at a time; "
            "with --ratio the widths come from a one-shot statistics pass first)",
        )
        parser.add_argument(
            "--layerwise",
            action=argparse.BooleanOptionalAction,
            default=defaults.layerwise,
            help="one decoder layer at a time on --device: read from the checkpoint's shards when --model is a "
            "local safetensors folder (the model is never whole in memory), else moved from the CPU; "
            "--no-layerwise holds the whole model on --device (default: layerwise)",
        )
        if batch_size:
            parser.add_argument(
                "--batch-size",
                type=int,
                default=defaults.batch_size,
                help=f"calibration samples per forward (default: {defaults.batch_size})",
            )

    @staticmethod
    def add_max_ratio_argument(parser) -> None:
        default = FlapSettings().max_ratio
        parser.add_argument(
            "--max-layer-ratio",
            type=float,
            default=default,
            help=f"with --ratio: most any one layer may be pruned (default: {default})",
        )

    @classmethod
    def from_args(cls, args) -> FlapSettings:
        """The settings of parsed `prune`/`compress` arguments; errors name the flag."""
        try:
            return cls(
                metric=args.metric,
                compensation=args.compensation,
                refit_damp=args.refit_damp,
                sequential=args.sequential,
                batch_size=getattr(args, "batch_size", cls.batch_size),
                layerwise=args.layerwise,
                max_ratio=args.max_layer_ratio,
            )
        except ValueError as err:
            field, _, reason = str(err).partition(": ")
            flag = _FLAGS.get(field.removeprefix("flap."), field)
            raise ValueError(f"{flag}: {reason}") from err


FIELDS = tuple(f.name for f in fields(FlapSettings))
# Settings field -> the flag that sets it, so that CLI errors name what the user typed.
_FLAGS = {"refit_damp": "--refit-damp", "max_ratio": "--max-layer-ratio", "batch_size": "--batch-size"}


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))
