"""Running real vLLM servers from the separate vLLM environment in tests.

Each server runs in its own session (process group) so that stopping it also ends vLLM's engine
core and worker processes; nothing is left behind even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = REPO_ROOT / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
# Generous: start-up is 30-65 s on an idle 2-core machine, more when tests share it.
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_environment(plugin_dir: Path | None) -> dict[str, str]:
    """The server's environment: CPU settings, offline, and `PYTHONPATH` = the export or nothing."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLLM_PLUGINS")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1", HF_HUB_OFFLINE="1")
    if plugin_dir is not None:
        env["PYTHONPATH"] = str(plugin_dir)
    return env


def server_command(model_dir: Path, port: int, *options: str) -> list[str]:
    """`vllm serve` through the API server module (vllm-cpu's `vllm` command is broken)."""
    return [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", "model",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
        *options,
    ]  # fmt: skip


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    else:
        # The API server is gone; make sure no engine or worker outlived it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class VllmServer:
    """A vLLM OpenAI-compatible server, started on enter and stopped (whole group) on exit."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, port: int):
        self.command, self.env, self.log_path, self.port = command, env, log_path, port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """Launch the server without waiting (servers started together warm up in parallel)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)

    def __enter__(self) -> VllmServer:
        if self.process is None:
            self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(2)
        raise TimeoutError(f"vLLM not healthy after {START_TIMEOUT_S} s:\n{self.log()[-4000:]}")

    def greedy(self, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        """Greedy continuation of `prompt_ids`: token ids and each one's log-probability."""
        return greedy_completion(self.url, "model", prompt_ids, max_tokens)


def greedy_completion(url: str, model: str, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy continuation of `prompt_ids` by the server at `url`: token ids and their log-probabilities."""
    body = {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": 1,
        "return_tokens_as_token_ids": True,
    }
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    response.raise_for_status()
    logprobs = response.json()["choices"][0]["logprobs"]
    tokens = [int(token.removeprefix("token_id:")) for token in logprobs["tokens"]]
    return tokens, [float(x) for x in logprobs["token_logprobs"]]


def run_until_exit(command: list[str], env: dict[str, str], log_path: Path) -> tuple[int | None, str]:
    """Run a server expected to fail at start-up; returns (exit code or None if it got healthy, log)."""
    server = VllmServer(command, env, log_path, port=int(command[command.index("--port") + 1]))
    try:
        with server:
            return None, server.log()
    except RuntimeError:
        return server.process.returncode, server.log()


def hf_overrides(architecture: str) -> list[str]:
    return ["--hf-overrides", json.dumps({"architectures": [architecture]})]
