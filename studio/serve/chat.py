"""The backend-neutral chat interface: messages, sampling settings, stream events, backends.

Every backend (an OpenAI-compatible server, the transformers CPU fallback) offers one call,
`stream_chat(messages, settings, stop=None)`, that yields events and never raises: a reply is zero
or more `TextDelta`s followed by exactly one final event, `GenerationStats` on success (also after a
stop) or `ChatError` when something went wrong. A UI can therefore render any backend the same way.

Messages use the OpenAI chat format. Images travel as base64 data URLs in `image_url` parts, the
form vLLM accepts and the one the CPU fallback decodes back to pictures.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

Message = dict[str, Any]


# --- sampling settings -------------------------------------------------------------------------


# The ranges `SamplingSettings` accepts (a UI's sliders span them): temperature [0, 2], top-p (0, 1].
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
# A form's seed field: this value (or nothing) means a random seed.
RANDOM_SEED = -1


@dataclass(frozen=True)
class SamplingSettings:
    """How a reply is sampled. `temperature == 0` means greedy decoding; `seed` None means random."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None

    def __post_init__(self):
        # UI widgets hand numbers over as floats; keep the integer fields integers.
        if isinstance(self.max_tokens, float) and self.max_tokens.is_integer():
            object.__setattr__(self, "max_tokens", int(self.max_tokens))
        if isinstance(self.seed, float) and self.seed.is_integer():
            object.__setattr__(self, "seed", int(self.seed))
        low, high = TEMPERATURE_RANGE
        if not low <= self.temperature <= high:
            raise ValueError(f"temperature: must be between {low:g} and {high:g}, got {self.temperature}")
        low, high = TOP_P_RANGE
        if not low < self.top_p <= high:
            raise ValueError(f"top_p: must be in ({low:g}, {high:g}], got {self.top_p}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be a positive integer, got {self.max_tokens}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed: must be a non-negative integer or None, got {self.seed}")

    @classmethod
    def from_form(cls, temperature, top_p, max_tokens, seed) -> SamplingSettings:
        """Settings as a form gives them (numbers as floats); a seed of `RANDOM_SEED` or empty means random."""
        seed = None if seed is None or seed == "" or seed == RANDOM_SEED else seed
        return cls(float(temperature), float(top_p), max_tokens, seed)

    def to_dict(self) -> dict:
        return asdict(self)


# --- stream events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply, in order."""

    text: str


@dataclass(frozen=True)
class GenerationStats:
    """The final event of a reply that ended normally or was stopped.

    `ttft_s`: seconds from sending the request to the first text. `tokens_per_s`: decode speed
    after the first token, (output_tokens - 1) / (end - first token), the reciprocal of the usual
    time-per-output-token; None when it cannot be measured (fewer than two tokens). Token counts are
    None when the backend did not report them.
    """

    ttft_s: float | None
    tokens_per_s: float | None
    prompt_tokens: int | None
    output_tokens: int | None
    total_s: float
    finish_reason: str | None  # "stop", "length", "stopped" (by the user), ...

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChatError:
    """The final event of a reply that failed, with a message meant for the user."""

    message: str


ChatEvent = TextDelta | GenerationStats | ChatError


class StatsClock:
    """Measures time to first token and decode speed for one reply."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first_token_at: float | None = None

    def mark_text(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def finish(self, prompt_tokens: int | None, output_tokens: int | None, finish_reason: str | None) -> GenerationStats:
        end = time.perf_counter()
        ttft = None if self.first_token_at is None else self.first_token_at - self.start
        rate = None
        if output_tokens and output_tokens > 1 and self.first_token_at is not None and end > self.first_token_at:
            rate = (output_tokens - 1) / (end - self.first_token_at)
        return GenerationStats(
            ttft_s=ttft,
            tokens_per_s=rate,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            total_s=end - self.start,
            finish_reason=finish_reason,
        )


# --- backends ----------------------------------------------------------------------------------


@runtime_checkable
class ChatBackend(Protocol):
    """What the side-by-side chat needs from a model: a name and a streaming call."""

    name: str

    def stream_chat(
        self, messages: Sequence[Message], settings: SamplingSettings, stop: threading.Event | None = None
    ) -> Iterator[ChatEvent]:
        """Yield `TextDelta`s then one `GenerationStats` or `ChatError`; never raise.

        Setting `stop` ends the reply early; it then finishes with `finish_reason == "stopped"`.
        """
        ...


# --- messages and images -----------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.DOTALL)


def image_to_data_url(image: Image.Image | str | Path, format: str = "PNG") -> str:
    """Encode a picture (a PIL image or a file path) as a base64 data URL."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.copy()
    buffer = io.BytesIO()
    if format.upper() == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(buffer, format=format)
    mime = Image.MIME.get(format.upper(), f"image/{format.lower()}")
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def data_url_to_image(url: str) -> Image.Image:
    """Decode a base64 image data URL to an RGB PIL image; ValueError names what is wrong."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ValueError(f"image_url: expected a base64 data URL (data:image/...;base64,...), got {url[:40]!r}")
    try:
        raw = base64.b64decode(match["data"], validate=True)
        with Image.open(io.BytesIO(raw)) as opened:
            return opened.convert("RGB")
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"image_url: the data URL is not valid base64: {err}") from err
    except OSError as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"image_url: the data URL does not hold a readable image: {err}") from err


def user_message(text: str, images: Sequence[Image.Image | str | Path] = ()) -> Message:
    """An OpenAI-format user message: images (as data URLs) first, then the text.

    Strings that already are data URLs are kept as they are; other strings are file paths.
    """
    if not text and not images:
        raise ValueError("message: needs text or at least one image")
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict] = []
    for image in images:
        url = image if isinstance(image, str) and image.startswith("data:") else image_to_data_url(image)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    if text:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def message_text(message: Message) -> str:
    """The text of a message, its image parts left out."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or () if part.get("type") == "text")


def message_image_urls(message: Message) -> list[str]:
    """The image URLs of a message, in order."""
    content = message.get("content")
    if isinstance(content, str) or not content:
        return []
    return [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]
