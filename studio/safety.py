"""Checks on what visitors hand the studio: paths they type and files they upload.

On a Space, anyone can type into the studio's forms, so a path from a form is only accepted when
it names something inside the folders the studio may read (`readable_roots`: `STUDIO_HOME` and
the bundled `data/` texts): `~` is expanded and `..` and symlinks are resolved before the check,
so none of them leads out. Uploaded files have size limits per kind. Every error is a ValueError
naming the form field, as the rest of the studio's input errors are.

Specs and presets are data: they are read with safe YAML/JSON loaders, and no model is ever
loaded with `trust_remote_code=True` (tests/space/test_safety.py checks the tree for it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from studio.hub_text import HUB_PREFIX

MIB = 1024 * 1024
# What one upload may weigh, by kind: calibration / evaluation text can be large, a chat image a
# few MiB, a YAML spec or preset a few KiB.
TEXT_UPLOAD_MAX_BYTES = 64 * MIB
IMAGE_UPLOAD_MAX_BYTES = 16 * MIB
SPEC_UPLOAD_MAX_BYTES = 1 * MIB
# Text sources that are not paths: a hub dataset (`hf:DATASET/CONFIG/SPLIT`, studio.hub_text).
HUB_TEXT_PREFIX = HUB_PREFIX
# The cap Gradio applies to any upload before a handler sees it (`launch(max_file_size=...)`).
MAX_UPLOAD_BYTES = TEXT_UPLOAD_MAX_BYTES


def expand_path(user_path: str | Path, field: str, base: str | Path | None = None) -> Path:
    """`user_path` with `~` expanded, made absolute (relative to `base`, else the working folder)
    and resolved (`..` and symlinks), with no confinement. The path need not exist yet."""
    text = os.fspath(user_path) if isinstance(user_path, (str, Path)) else None
    if text is None or not text.strip():
        raise ValueError(f"{field}: a path is required")
    if "\x00" in text:
        raise ValueError(f"{field}: the path contains a NUL byte")
    candidate = Path(text.strip()).expanduser()
    if not candidate.is_absolute():
        candidate = Path(base or Path.cwd()).expanduser().resolve() / candidate
    return candidate.resolve()


def confine(user_path: str | Path, field: str, roots: Sequence[str | Path]) -> Path:
    """`user_path` expanded and resolved (relative to the first root), if it lies inside a root.

    Symlinks are followed before the check, so a link inside a root that points elsewhere is
    refused like a `..` path.
    """
    bases = [Path(root).expanduser().resolve() for root in roots]
    resolved = expand_path(user_path, field, base=bases[0])
    if not any(resolved.is_relative_to(base) for base in bases):
        where = f"the studio's data folder {bases[0]}" if len(bases) == 1 else "the folders the studio may read (" + ", ".join(map(str, bases)) + ")"
        raise ValueError(f"{field}: {os.fspath(user_path)!r} is outside {where}")
    return resolved


def resolve_inside(root: str | Path, user_path: str | Path, field: str) -> Path:
    """`user_path` (relative to `root`, or absolute) resolved, if it stays inside `root`."""
    return confine(user_path, field, [root])


def readable_roots(home: str | Path) -> tuple[Path, ...]:
    """Where paths typed on a Space may point: the studio's data folder, then the bundled texts."""
    from studio.calibration import BUNDLED_DATA

    return (Path(home), BUNDLED_DATA)


def studio_path(user_path: str | Path, field: str, home: Path | None = None) -> Path:
    """A user-supplied path, checked to stay inside `STUDIO_HOME` (or `home`)."""
    from studio.paths import studio_home

    return resolve_inside(home or studio_home(), user_path, field)


def _size(n: int) -> str:
    """1,048,577 bytes (1.0 MiB): exact, so a file just over a limit does not read as equal to it."""
    return f"{n:,} bytes ({n / MIB:.1f} MiB)" if n >= MIB else f"{n:,} bytes"


def _limit(n: int) -> str:
    return f"{n // MIB} MiB" if n % MIB == 0 else f"{n:,} bytes"


def check_upload(path: str | Path, field: str, max_bytes: int) -> Path:
    """An uploaded file, if it is a regular file of at most `max_bytes`."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{field}: the upload {file.name!r} is not a file")
    size = file.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{field}: the upload {file.name!r} is {_size(size)}, over the {_limit(max_bytes)} limit")
    return file


def read_utf8(path: str | Path, field: str) -> str:
    """A text file's content, or a ValueError naming the field and the file if it is not UTF-8."""
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{field}: {file.name} is not UTF-8 text (byte {err.start})") from None


def parse_yaml(text: str, field: str, name: str):
    """YAML data through the safe loader (data only: a tag that would build a Python object is
    refused), or a one-line ValueError naming the field, the file `name` and the position."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(err.problem or err.context or "syntax error").split())
        raise ValueError(f"{field}: {name} is not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{field}: {name} is not valid YAML: {' '.join(str(err).split())}") from None


def read_text_upload(path: str | Path, field: str, max_bytes: int = TEXT_UPLOAD_MAX_BYTES) -> str:
    """The text of an uploaded file: size-checked, then decoded as UTF-8."""
    file = check_upload(path, field, max_bytes)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{field}: the upload {file.name!r} is not UTF-8 text (byte {err.start})") from None
