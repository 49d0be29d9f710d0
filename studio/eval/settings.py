"""How the evaluate stage measures perplexity (and runs lm-eval tasks): one settings type for the library, job specs and the UI.

Errors name the field as a job spec writes it (`evaluate.seqlen: ...`). A new option is one field
here with its check in `__post_init__`; `from_dict` and the job spec pick it up from the fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from studio.fields import reject_unknown

# The card calibrates on WikiText-2 train (CalibrationSpec's default) and reports perplexity on its test split.
DEFAULT_SOURCE = "hf:wikitext/wikitext-2-raw-v1/test"


@dataclass(frozen=True)
class EvalSettings:
    """Sliding-window perplexity: windows of `seqlen` tokens every `stride` (None: `seqlen`, disjoint
    windows), over the first `max_tokens` tokens of `source` (None: all of it)."""

    source: str = DEFAULT_SOURCE
    seqlen: int = 2048
    stride: int | None = None
    max_tokens: int | None = None
    batch_size: int = 1
    # lm-eval tasks run beside perplexity: names, or fact_recall=FILE (`studio.eval.downstream.parse_tasks`).
    tasks: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.tasks, list):  # a stored spec's JSON list
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if not isinstance(self.tasks, tuple) or not all(isinstance(t, str) for t in self.tasks):
            raise ValueError(f"evaluate.tasks: must be a list of task names, got {self.tasks!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"evaluate.source: must be a text file path or 'hf:DATASET/CONFIG/SPLIT', got {self.source!r}")
        if isinstance(self.seqlen, bool) or not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise ValueError(f"evaluate.seqlen: must be an integer of at least 2, got {self.seqlen!r}")
        if self.stride is not None:
            _positive_int("evaluate.stride", self.stride)
            if self.stride > self.seqlen:
                raise ValueError(f"evaluate.stride: must not exceed evaluate.seqlen ({self.seqlen}), got {self.stride}")
        if self.max_tokens is not None:
            _positive_int("evaluate.max_tokens", self.max_tokens)
            if self.max_tokens < 2:
                raise ValueError(f"evaluate.max_tokens: must be at least 2, got {self.max_tokens}")
        _positive_int("evaluate.batch_size", self.batch_size)

    @classmethod
    def from_dict(cls, data: dict) -> EvalSettings:
        """Settings from a job spec's `evaluate` section (or a stored one); unknown fields are errors."""
        reject_unknown("evaluate.", data, FIELDS)
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = tuple(f.name for f in fields(EvalSettings))


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
