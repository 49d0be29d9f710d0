"""Where the studio keeps its state: everything lives under one folder, `STUDIO_HOME`.

Job store and job folders, the embedded queue database, exports, user presets and logs are all
found under `studio_home()`, so a test, a Space (a persistent `/data` volume) or a user moves the
whole studio by setting one environment variable.

Default when `STUDIO_HOME` is unset: the user's data folder, `$XDG_DATA_HOME/gemma-lite-studio`
(`~/.local/share/gemma-lite-studio` when XDG_DATA_HOME is unset; on macOS
`~/Library/Application Support/gemma-lite-studio`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_FOLDER = "gemma-lite-studio"
HOME_ENV = "STUDIO_HOME"


def default_studio_home() -> Path:
    """The documented default location, used when `STUDIO_HOME` is not set."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_FOLDER
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / APP_FOLDER


def studio_home() -> Path:
    """The folder holding everything the studio keeps (`STUDIO_HOME`, else the default)."""
    configured = os.environ.get(HOME_ENV, "").strip()
    home = Path(configured).expanduser() if configured else default_studio_home()
    return home.resolve()


def jobs_dir(home: Path | None = None) -> Path:
    """One sub-folder per job: spec, state, log and stage outputs."""
    return (home or studio_home()) / "jobs"


def queue_db_path(home: Path | None = None) -> Path:
    """The SQLite file backing the embedded job queue."""
    return (home or studio_home()) / "queue.sqlite3"


def exports_dir(home: Path | None = None) -> Path:
    """Finished, servable checkpoints, one folder per job output name."""
    return (home or studio_home()) / "exports"


def presets_dir(home: Path | None = None) -> Path:
    """Pruning plans saved by users (the shipped ones stay in the repository's `presets/`)."""
    return (home or studio_home()) / "presets"


def logs_dir(home: Path | None = None) -> Path:
    """Logs of long-lived processes (workers); each job keeps its own log in its folder."""
    return (home or studio_home()) / "logs"
