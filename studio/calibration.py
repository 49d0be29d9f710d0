"""Calibration data: text from a local file or a Hugging Face dataset, packed into N x L token ids.

A calibration source is either a path to a text file or a dataset spec
`hf:DATASET/CONFIG/SPLIT` (`studio.hub_text`; the card's real default is `hf:wikitext/wikitext-2-raw-v1/train`).
Texts are tokenized once as one stream and N windows of L tokens are drawn from it at seeded random
offsets, as GPTQ and FLAP calibrate: the same spec and tokenizer always give the same tensor.

A sample starts the way the model sees text when it is trained and served: when the tokenizer puts
a BOS before text (Gemma's does; models degrade without it), every sample is BOS followed by L - 1
text tokens, so FLAP statistics, the refit and GPTQ all calibrate on BOS-led sequences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from studio.hub_text import HUB_GRAMMAR, is_hub_source, load_hub_text
from studio.fields import reject_unknown
from studio.safety import read_utf8

if TYPE_CHECKING:
    import torch

DEFAULT_SOURCE = "hf:wikitext/wikitext-2-raw-v1/train"
BUNDLED_DATA = Path(__file__).resolve().parent.parent / "data"
# Offline stand-ins shipped in data/: calibration text and held-out evaluation text.
OFFLINE_CALIBRATION_TEXT = BUNDLED_DATA / "wikitext-2-valid.txt"
OFFLINE_EVALUATION_TEXT = BUNDLED_DATA / "wikitext-2-raw-test.txt"
E4B_TEXT_CONFIG = BUNDLED_DATA / "gemma-4-e4b-text-config.json"


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration text comes from and how it is cut (defaults: the card's 256 x 2048)."""

    source: str = DEFAULT_SOURCE
    samples: int = 256
    seqlen: int = 2048
    seed: int = 0
    text_field: str = "text"

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"calibration.source: must be a text file path or '{HUB_GRAMMAR}'")
        for field in ("samples", "seqlen"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"calibration.{field}: must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"calibration.seed: must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationSpec:
        """A spec from a job spec's `calibration` section (or a stored one); unknown fields are errors."""
        reject_unknown("calibration.", data, (f.name for f in fields(cls)))
        return cls(**data)

    @staticmethod
    def add_arguments(parser) -> None:
        """The calibration options of the commands that calibrate, these defaults as theirs."""
        defaults = CalibrationSpec()
        parser.add_argument(
            "--calib",
            default=defaults.source,
            help=f"calibration text: a text file or {HUB_GRAMMAR} (default: {defaults.source})",
        )
        parser.add_argument(
            "--samples", type=int, default=defaults.samples, help=f"calibration samples (default: {defaults.samples})"
        )
        parser.add_argument(
            "--seqlen", type=int, default=defaults.seqlen, help=f"tokens per sample (default: {defaults.seqlen})"
        )
        parser.add_argument(
            "--seed", type=int, default=defaults.seed, help=f"calibration sampling seed (default: {defaults.seed})"
        )

    @classmethod
    def from_args(cls, args) -> CalibrationSpec:
        return cls(source=args.calib, samples=args.samples, seqlen=args.seqlen, seed=args.seed)


def load_calibration_text(spec: CalibrationSpec) -> str:
    """The raw text of the calibration source, documents joined by blank lines."""
    if is_hub_source(spec.source):
        return load_hub_text(spec.source, "calibration.source", spec.text_field, "calibration.text_field")
    path = Path(spec.source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"calibration.source: no such text file: {path}")
    return read_utf8(path, "calibration.source")


def tokenize_stream(tokenizer, text: str) -> torch.Tensor:
    """All of `text` as one 1-D tensor of token ids, without special tokens."""
    import torch  # here, not at module level: the CLI reads this module's defaults without torch

    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def leading_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer puts before encoded text (with special tokens), or None if it puts none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", return_attention_mask=False)["input_ids"]
    return bos if ids and ids[0] == bos else None


def pack_samples(
    stream: torch.Tensor, samples: int, seqlen: int, seed: int, bos: int | None = None, source: str | None = None
) -> torch.Tensor:
    """Cut `samples` windows of `seqlen` tokens from `stream` at seeded random offsets.

    With `bos`, each window is that token followed by `seqlen - 1` tokens of the stream. Each window
    starts at a distinct offset; windows may overlap only when the stream is short. `source` names
    the text in errors.
    """
    import torch

    if bos is not None and seqlen < 2:
        raise ValueError(f"calibration.seqlen: must be at least 2 when every sample starts with BOS, got {seqlen}")
    text_len = seqlen - (bos is not None)
    available = stream.numel()
    where = f" ({source})" if source else ""
    if available < text_len + 1:
        raise ValueError(
            f"calibration: the text has {available} tokens{where}, fewer than one sample of "
            f"calibration.seqlen={seqlen} tokens; use a longer text or a shorter seqlen"
        )
    if available < samples * text_len:
        raise ValueError(
            f"calibration: the text has {available} tokens{where} but calibration.samples x "
            f"calibration.seqlen = {samples} x {seqlen} = {samples * text_len} text tokens are needed"
            f"{' (each sample also has a BOS)' if bos is not None else ''}; "
            "use more text, fewer samples or a shorter seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randperm(available - text_len + 1, generator=generator)[:samples]
    windows = torch.stack([stream[s : s + text_len] for s in starts.tolist()])
    if bos is None:
        return windows
    return torch.cat([torch.full((samples, 1), bos, dtype=windows.dtype), windows], dim=1)


def build_calibration_ids(tokenizer, spec: CalibrationSpec) -> torch.Tensor:
    """The calibration batch for `spec`: a LongTensor of shape [samples, seqlen], BOS-led when the tokenizer adds BOS."""
    stream = tokenize_stream(tokenizer, load_calibration_text(spec))
    return pack_samples(stream, spec.samples, spec.seqlen, spec.seed, leading_bos(tokenizer), source=spec.source)
