"""Packages whose public names load their module on first use.

The CLI, the job queue and the job spec parser import `studio`, `studio.flap` and `studio.eval`; a
lazy table keeps those imports free of torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """A module `__getattr__` for `package` that imports `exports[name]` when `name` is first
    asked for, and the matching `__all__`."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__, sorted(exports)
