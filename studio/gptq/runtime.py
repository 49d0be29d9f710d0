"""The one way the studio imports GPTQModel: after making its CPU thread pool large enough.

GPTQModel sizes its CPU pool from `GPTQMODEL_CPU_WORKERS`, else half the machine's cores, and its
model-loader pool always asks that CPU pool for two workers. On one or two cores the default is a
single worker, and the first quantization or INT4 load stops with "Virtual pool 'model_loader:cpu'
requests 2 workers but parent 'cpu' only has 1". The pool is built lazily, on first use, so
setting the variable before any GPTQModel call is enough; every entry point (app, worker, job
children, CLI) reaches GPTQModel through `import_gptqmodel`, so none needs the variable set.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import MutableMapping
from types import ModuleType

CPU_WORKERS_VARIABLE = "GPTQMODEL_CPU_WORKERS"
# What GPTQModel's model-loader pool requests from its CPU pool (gptqmodel 7.6, `model_loader:cpu`).
MIN_CPU_WORKERS = 2

_log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def required_cpu_workers(cores: int, configured: str | None) -> str | None:
    """The value `GPTQMODEL_CPU_WORKERS` must take, or None when GPTQModel can start as it is.

    An explicit value of at least `MIN_CPU_WORKERS` is the user's and is kept; GPTQModel's own
    default (half the cores, rounded up) is kept wherever it already reaches the minimum.
    """
    if configured is not None:
        try:
            if int(configured) >= MIN_CPU_WORKERS:
                return None
        except ValueError:
            pass
        return str(MIN_CPU_WORKERS)
    if (cores + 1) // 2 >= MIN_CPU_WORKERS:
        return None
    return str(MIN_CPU_WORKERS)


def configure_cpu_workers(environ: MutableMapping[str, str] | None = None, cores: int | None = None) -> None:
    """Raise `GPTQMODEL_CPU_WORKERS` to what GPTQModel needs on this machine, if it needs it."""
    environ = os.environ if environ is None else environ
    configured = environ.get(CPU_WORKERS_VARIABLE)
    value = required_cpu_workers(usable_cores() if cores is None else cores, configured)
    if value is None:
        return
    if configured is not None:
        _log.warning(
            "%s=%s is below the %d workers GPTQModel's model loader needs; using %s",
            CPU_WORKERS_VARIABLE, configured, MIN_CPU_WORKERS, value,
        )
    environ[CPU_WORKERS_VARIABLE] = value


def import_gptqmodel(module: str = "gptqmodel") -> ModuleType:
    """`gptqmodel` (or one of its submodules), imported after `configure_cpu_workers`."""
    configure_cpu_workers()
    return importlib.import_module(module)
