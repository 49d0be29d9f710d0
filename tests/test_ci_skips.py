"""The CI rule, run on a small suite of its own: with CI set, skips fail with their reasons."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITE = {
    "conftest.py": "from tests.ci_skips import *  # noqa\n",
    "test_mixed.py": (
        "import pytest\n"
        "def test_passes():\n    assert True\n"
        "@pytest.mark.skipif(True, reason='tool-x is not installed')\n"
        "def test_marked():\n    pass\n"
        "def test_skips_inside():\n    pytest.skip('vLLM does not import')\n"
        "@pytest.mark.xfail(reason='known bug', strict=True)\n"
        "def test_expected_failure():\n    assert False\n"
    ),
    "test_module_level.py": "import pytest\npytest.skip('module needs chromium', allow_module_level=True)\n",
}


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_without_ci_skips_are_skips_and_their_reasons_are_printed(tmp_path):
    result = run_suite(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 passed, 3 skipped, 1 xfailed" in summary
    for reason in ("tool-x is not installed", "vLLM does not import", "module needs chromium"):
        assert reason in result.stdout


@pytest.mark.parametrize("value", ["true", "1"])
def test_under_ci_every_skip_fails_naming_its_reason(tmp_path, value):
    result = run_suite(tmp_path, ci=value)
    assert result.returncode == 1, result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    # A skip in the test body fails the test, a skipif marker fails its setup (an error); a
    # module-level skip is listed and fails the exit status, without stopping the session the way
    # a collection error would.
    assert summary.startswith("1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error in ")
    for reason in ("tool-x is not installed", "vLLM does not import", "module needs chromium"):
        assert f"a skip is a failure: Skipped: {reason}" in result.stdout
    assert "modules skipped under CI (the run fails)" in result.stdout


def test_ci_set_to_false_keeps_skips(tmp_path):
    assert run_suite(tmp_path, ci="false").returncode == 0
