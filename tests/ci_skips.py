"""Under CI a skipped test is a failure: hooks that tests/conftest.py takes in.

A skip hides a missing dependency (vLLM, chromium, redis-server, hadolint) or, worse, a real
failure; CI (which sets `CI`) must install everything, so any skip there fails the run, with its
reason. Elsewhere skips stay skips, and `-rs` (pytest.ini) prints every reason.
Expected failures (xfail) are not skips and are left alone.
"""

from __future__ import annotations

import os

import pytest

CI_ENV = "CI"
# Skips raised while collecting a module: failing the collection would stop the whole session,
# so they are listed at the end and fail the run's exit status instead.
COLLECTION_SKIPS = pytest.StashKey[list]()


def skips_fail() -> bool:
    """True when `CI` is set to anything but an empty, "0" or "false" value."""
    return os.environ.get(CI_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _skip_text(report) -> str:
    where, reason = "", str(report.longrepr)
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        path, line, reason = report.longrepr
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    return f"{where}skipped, and under CI ({CI_ENV} is set) a skip is a failure: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and skips_fail():
        report.longrepr = _skip_text(report)
        report.outcome = "failed"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Module-level skips (pytest.skip(allow_module_level=True), importorskip at import time)."""
    report = yield
    if report.skipped and skips_fail():
        collector.config.stash.setdefault(COLLECTION_SKIPS, []).append(_skip_text(report))
    return report


def pytest_sessionfinish(session, exitstatus):
    if session.config.stash.get(COLLECTION_SKIPS, None) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped_modules = config.stash.get(COLLECTION_SKIPS, [])
    if skipped_modules:
        terminalreporter.section("modules skipped under CI (the run fails)", red=True)
        for line in skipped_modules:
            terminalreporter.write_line(line)
