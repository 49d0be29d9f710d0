"""Atomic output folders and files: a failed write leaves nothing that looks complete."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; on success it is renamed to `target`.

    The staging folder lives in the same parent so the final rename is atomic on POSIX. On any
    exception the staging folder is removed and `target` is left as it was.
    """
    target = Path(target).resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"output folder already exists: {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as err:
        raise OSError(f"cannot create an output folder in {target.parent}: {err.strerror or err}") from err
    try:
        yield staging
        _replace_directory(staging, target)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        # A nested atomic folder (a job stage's export) already named the folder that failed.
        failure = None if getattr(err, "refused_folder", None) else _storage_failure(err)
        if failure is not None:
            code, reason = failure
            refused = OSError(f"{target}: {reason} while writing it (the partial output was removed)")
            refused.errno = code
            refused.refused_folder = target
            raise refused from err
        raise


# Write errors that are the storage's doing, not the caller's: full, over quota, file too large,
# read-only, failing.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def _storage_failure(err: BaseException) -> tuple[int | None, str] | None:
    """(errno, why) when the storage refused a write, else None. safetensors reports such
    failures as `SafetensorError: ... I/O error: No space left on device (os error 28)`."""
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        return err.errno, os.strerror(err.errno)
    text = str(err)
    if type(err).__name__ == "SafetensorError" and "I/O error: " in text:
        reason = text.split("I/O error: ", 1)[1].strip()
        code = re.search(r"\(os error (\d+)\)", reason)
        return (int(code.group(1)) if code else None), reason
    return None


def _replace_directory(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    # os.replace cannot swap non-empty folders: move the old one aside first, then drop it.
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
