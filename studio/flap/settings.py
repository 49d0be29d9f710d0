"""How FLAP scores, prunes and compensates: one settings type for the library, the CLI and job specs.

This module imports nothing heavy, so the job spec parser and the CLI read it without torch.
Errors name the field as a job spec writes it (`flap.compensation: ...`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    # Keep the model where it loads (the CPU) and move one decoder layer at a time to the device.
    layerwise: bool = False
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
        """Settings from a stored mapping; specs written before `compensation` existed carry `bias_compensation`."""
        data = dict(data)
        legacy = data.pop("bias_compensation", None)
        if legacy is not None and "compensation" not in data:
            data["compensation"] = "bias" if legacy else "none"
        return cls(**data)


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))
