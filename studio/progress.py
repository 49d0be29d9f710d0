"""Progress reporting and cancellation shared by every long-running stage."""

from __future__ import annotations

from collections.abc import Callable

# progress(done, total, unit): e.g. (3, 42, "layers") after the third of 42 layers.
ProgressFn = Callable[[int, int, str], None]
# should_stop(): polled at layer (or batch) boundaries; True asks the stage to stop there.
StopFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised at a layer or batch boundary when the caller asked to stop."""


def check_stop(should_stop: StopFn | None, message: str = "cancelled") -> None:
    """Raise `Cancelled` if `should_stop` says so."""
    if should_stop is not None and should_stop():
        raise Cancelled(message)
