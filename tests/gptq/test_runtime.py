"""GPTQModel starts on a 2-core machine with no environment variable set.

The subprocesses below make the machine look like 2 cores (`os.cpu_count` and the CPU affinity,
which are what GPTQModel and the studio read), so the failure and its fix show on any host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.gptq.runtime import CPU_WORKERS_VARIABLE, MIN_CPU_WORKERS, configure_cpu_workers, required_cpu_workers

from tests.conftest import CALIBRATION_TEXT

REPO = Path(__file__).resolve().parents[2]
# Runs the rest of the command line as `python -m studio ...` (or the given -c code) on what
# looks like a 2-core machine.
TWO_CORES = """
import os, runpy, sys
os.cpu_count = lambda: 2
os.sched_getaffinity = lambda pid: {0, 1}
if sys.argv[1] == "-c":
    exec(sys.argv[2])
else:
    sys.argv = ["studio", *sys.argv[1:]]
    runpy.run_module("studio", run_name="__main__")
"""


def _two_core_run(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != CPU_WORKERS_VARIABLE}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", TWO_CORES, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("cores", "configured", "expected"),
    [
        (1, None, "2"),
        (2, None, "2"),
        (3, None, None),  # GPTQModel's own default, ceil(3 / 2) = 2, already suffices
        (64, None, None),
        (2, "1", "2"),
        (2, "0", "2"),
        (2, "many", "2"),
        (2, "2", None),
        (64, "5", None),
    ],
)
def test_required_workers(cores, configured, expected):
    assert required_cpu_workers(cores, configured) == expected


def test_configure_keeps_a_sufficient_user_value_and_raises_a_low_one():
    environ = {CPU_WORKERS_VARIABLE: "7"}
    configure_cpu_workers(environ, cores=2)
    assert environ == {CPU_WORKERS_VARIABLE: "7"}
    environ = {CPU_WORKERS_VARIABLE: "1"}
    configure_cpu_workers(environ, cores=2)
    assert environ == {CPU_WORKERS_VARIABLE: str(MIN_CPU_WORKERS)}
    environ = {}
    configure_cpu_workers(environ, cores=16)
    assert environ == {}


def test_gptqmodel_alone_fails_on_two_cores():
    """The failure the studio works around, reproduced with GPTQModel alone (so the next test
    would fail without the studio's setting)."""
    result = _two_core_run(
        "-c", "import gptqmodel\ntry:\n    gptqmodel.get_device_thread_pool()\nexcept ValueError as error:\n"
        "    print('POOL ERROR', error)\nelse:\n    print('POOL OK')",
    )
    assert "POOL ERROR Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-2000:]
    )


def test_quantize_cli_on_two_cores_without_the_variable(demo_model_dir, tmp_path):
    out = tmp_path / "quantized"
    result = _two_core_run(
        "quantize", "--model", str(demo_model_dir), "--calib", str(CALIBRATION_TEXT),
        "--samples", "4", "--seqlen", "32", "--dtype", "float32", "--out", str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "quantize_config.json").read_text())
    assert config["bits"] == 4
