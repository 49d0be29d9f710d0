"""The studio app launched as `python app.py` on a free port, with STUDIO_HOME in a temporary folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300  # first start builds the demo model; imports are slow on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/config", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the app did not answer within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def start_studio(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Launch `python app.py` on a free port for STUDIO_HOME=`home`; returns (process, base URL)."""
    port = free_port()
    env = {
        **os.environ,
        "STUDIO_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log)
    except Exception:
        stop_studio(process)
        raise
    return process, url


def stop_studio(process: subprocess.Popen) -> None:
    """SIGTERM (the app stops its worker, which requeues a running job), SIGKILL if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def studio_app(tmp_path_factory):
    """(base URL, STUDIO_HOME) of a running studio; stopped (worker included) after the session."""
    home = tmp_path_factory.mktemp("studio-home")
    process, url = start_studio(home, home.parent / "app.log")
    try:
        yield url, home
    finally:
        stop_studio(process)
