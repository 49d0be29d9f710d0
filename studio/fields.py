"""Checks shared by the settings types when they parse a mapping (a job spec section, a stored spec)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def reject_unknown(prefix: str, data: Mapping, allowed: Iterable[str]) -> None:
    """Refuse the first key of `data` not in `allowed`, naming it as a spec writes it (`prefix` + key)."""
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise ValueError(f"{prefix}{key}: unknown field (allowed: {', '.join(allowed)})")
