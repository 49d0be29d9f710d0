"""Helpers for the job tests: small specs on the demo model, real worker processes, a Redis server, polling."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import CALIBRATION_TEXT

REPO_ROOT = Path(__file__).resolve().parents[2]
# Generous safety limit for one job on a busy 2-core machine; tests never assert durations.
JOB_TIMEOUT_S = 600


def small_spec(model_dir: Path, **overrides) -> dict:
    """A job spec that runs in seconds on the demo model (FLAP 25%, no GPTQ, nothing exported)."""
    spec = {
        "model": str(model_dir),
        "output": "demo-lite",
        "dtype": "float32",
        "plan": 0.25,
        "calibration": {"source": str(CALIBRATION_TEXT), "samples": 8, "seqlen": 64, "seed": 0},
        "quantize": False,
        "export": False,
    }
    spec.update(overrides)
    return spec


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(spec) if name.endswith(".json") else yaml.safe_dump(spec))
    return path


def studio_env(home: Path, **extra: str) -> dict:
    env = {**os.environ, "STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env.pop("STUDIO_REDIS_URL", None)
    env.pop("STUDIO_JOBS_FAILPOINT", None)
    env.update(extra)
    return env


def studio_cli(home: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", *args],
        env=studio_env(home, **extra_env),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=JOB_TIMEOUT_S,
    )


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def read_state(home: Path, job_id: str) -> dict:
    return json.loads((home / "jobs" / job_id / "state.json").read_text())


def wait_for(predicate, what: str, timeout: float = JOB_TIMEOUT_S, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_status(home: Path, job_id: str, statuses=("done", "failed", "cancelled")) -> dict:
    def reached():
        state = read_state(home, job_id)
        return state if state["status"] in statuses else None

    return wait_for(reached, f"job {job_id} to reach {statuses}")


def safetensors_in(folder: Path) -> dict:
    """Every tensor of every .safetensors file under `folder`, keyed by file and name."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            tensors[f"{path.relative_to(folder)}:{name}"] = tensor
    return tensors


def assert_same_tensors(left: Path, right: Path) -> int:
    """Both folders hold the same tensor names with bit-identical values; returns the count."""
    import torch

    a, b = safetensors_in(left), safetensors_in(right)
    assert a, f"no tensors under {left}"
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), f"{name} differs"
    return len(a)


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch) -> Path:
    """An empty STUDIO_HOME for every test here, also set in this process's environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.delenv("STUDIO_REDIS_URL", raising=False)
    monkeypatch.delenv("STUDIO_JOBS_FAILPOINT", raising=False)
    return home


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    """A real redis-server on loopback for the session (no persistence); fails when none is installed."""
    import redis

    server_binary = shutil.which("redis-server")
    if server_binary is None:
        pytest.fail("redis-server is not installed (make system-deps, or apt-get install redis-server)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [server_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(30)


@pytest.fixture()
def redis_url(redis_server) -> str:
    """The session's Redis, emptied for this test (every test's queue has the same name)."""
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    return redis_server
