"""`python -m studio serve` and `python -m studio chat` as a user runs them, without vLLM: the
server is the stand-in `tests.serve.fake_vllm_server`, reached through STUDIO_VLLM_PYTHON, and the
chat talks to the loopback OpenAI test server or runs the demo model with transformers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from studio.serve.manager import REPO_ROOT, free_port
from tests.serve.conftest import alive
from tests.serve.openai_test_server import OpenAITestServer

# vLLM's interpreter as the manager calls it (`PYTHON -m vllm.entrypoints... ARGS`), standing in
# with the fake server.
FAKE_VLLM_PYTHON = f"""#!/bin/sh
shift 2
export PYTHONPATH="{REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"
exec "{sys.executable}" -m tests.serve.fake_vllm_server "$@"
"""


@pytest.fixture
def fake_vllm(tmp_path) -> Path:
    script = tmp_path / "fake-vllm-python"
    script.write_text(FAKE_VLLM_PYTHON)
    script.chmod(0o755)
    return script


def studio(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "studio", *args], cwd=REPO_ROOT, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kwargs,
    )  # fmt: skip


def descendants(pid: int) -> list[psutil.Process]:
    """A command's processes: its children and the members of their process groups."""
    children = psutil.Process(pid).children(recursive=True)
    groups = {os.getpgid(child.pid) for child in children} - {os.getpgrp()}
    found = {child.pid: child for child in children}
    for candidate in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(candidate.pid) in groups:
                found[candidate.pid] = candidate
    return list(found.values())


@contextlib.contextmanager
def cleaned_up(process: subprocess.Popen):
    """Ends a command and whatever it started, whatever the test did."""
    try:
        yield process
    finally:
        if process.poll() is None:
            leftovers = descendants(process.pid)
            process.kill()
            process.wait()
            for leftover in alive(leftovers):
                leftover.kill()


def wait_for_health(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing healthy on port {port}")


# --- serve ----------------------------------------------------------------------------------------


def test_serve_waits_for_health_and_ctrl_c_ends_every_process(fake_vllm, demo_model_dir):
    port = free_port()
    command = studio("serve", str(demo_model_dir), "--port", str(port), env={"STUDIO_VLLM_PYTHON": str(fake_vllm)})
    with cleaned_up(command):
        wait_for_health(port, command)
        first_line = command.stdout.readline()
        processes = descendants(command.pid)
        command.send_signal(signal.SIGINT)
        out, err = command.communicate(timeout=60)

    assert command.returncode == 0
    assert re.fullmatch(
        rf"serving demo at http://127\.0\.0\.1:{port}/v1 \(log: (.+/demo-{port}\.log)\); Ctrl-C stops it\n", first_line
    )
    assert len(processes) >= 2  # the server and its "engine" child, in the server's own group
    assert alive(processes) == []
    assert "stopping the vLLM server" in err
    log = Path(re.search(r"\(log: (.+?)\)", first_line)[1]).read_text()
    argv = log.splitlines()[0]
    assert f"'--port', '{port}'" in argv and "'--enforce-eager'" in argv  # the manager's command line


def test_sigterm_stops_serve_like_ctrl_c(fake_vllm, demo_model_dir):
    port = free_port()
    command = studio("serve", str(demo_model_dir), "--port", str(port), env={"STUDIO_VLLM_PYTHON": str(fake_vllm)})
    with cleaned_up(command):
        wait_for_health(port, command)
        processes = descendants(command.pid)
        command.send_signal(signal.SIGTERM)
        command.communicate(timeout=60)
    assert command.returncode == 0
    assert alive(processes) == []


def test_a_server_that_fails_to_start_shows_its_log_tail(fake_vllm, demo_model_dir):
    command = studio(
        "serve", str(demo_model_dir), "--port", str(free_port()),
        env={"STUDIO_VLLM_PYTHON": str(fake_vllm), "VLLM_FAKE_MODE": "crash"},
    )  # fmt: skip
    with cleaned_up(command):
        out, err = command.communicate(timeout=120)
    assert command.returncode == 1
    assert "exited with code 3 before becoming healthy" in err
    assert "--- last lines of the server log ---" in err
    assert "fake vllm: error: the model cannot be loaded (test)" in err
    engine_pid = int(re.search(r"engine pid (\d+)", err)[1])
    assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE


def test_serve_refuses_a_flap_folder_it_cannot_serve_in_one_line(fake_vllm, demo_model_dir, tmp_path):
    folder = tmp_path / "card"
    folder.mkdir()
    config = json.loads((demo_model_dir / "config.json").read_text())
    config["text_config"].update(flap_pruned=True, intermediate_sizes=[384] * 8)
    (folder / "config.json").write_text(json.dumps(config))
    env = {"STUDIO_VLLM_PYTHON": str(fake_vllm)}

    without_plugin = studio("serve", str(folder), env=env)
    with cleaned_up(without_plugin):
        _, err = without_plugin.communicate(timeout=120)
    assert without_plugin.returncode == 2
    assert err.startswith(f"error: model_dir: {folder} is FLAP-pruned but no vLLM plugin would load")
    assert err.count("\n") == 1

    two_gpus = studio("serve", str(folder), "--studio-plugin", "--tensor-parallel-size", "2", env=env)
    with cleaned_up(two_gpus):
        _, err = two_gpus.communicate(timeout=120)
    assert two_gpus.returncode == 2
    assert err.startswith("error: layer 0: intermediate_size 384 is not a multiple of 256 (128 x tensor_parallel_size 2)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "error: --port: must be between 1 and 65535, got 0"),
        (["--gpu-memory-utilization", "1.5"], "error: --gpu-memory-utilization: must be in (0, 1], got 1.5"),
        (["--tensor-parallel-size", "0"], "error: --tensor-parallel-size: must be at least 1, got 0"),
    ],
)
def test_serve_bad_options_are_named(demo_model_dir, args, message, capsys):
    from studio.cli import main

    assert main(["serve", str(demo_model_dir), *args]) == 2
    assert capsys.readouterr().err == message + "\n"


# --- chat -----------------------------------------------------------------------------------------


def test_chat_two_urls_prints_both_replies_side_by_side_then_json():
    with OpenAITestServer(chunk_delay_s=0.05) as server:
        command = studio("chat", server.url, f"{server.url}/v1#echo-slow", "--prompt", "alpha beta gamma")
        with cleaned_up(command):
            out, err = command.communicate(timeout=120)
        requests = list(server.requests)

    assert command.returncode == 0, err
    result = json.loads(out)
    assert out.count("\n") == 1  # stdout holds the JSON object alone
    panes = result["panes"]
    assert [panes[p]["text"] for p in "AB"] == ["gamma beta alpha", "gamma beta alpha"]
    assert [panes[p]["source"] for p in "AB"] == [server.url, f"{server.url}/v1#echo-slow"]
    assert panes["B"]["model"] == f"echo-slow at {server.url}/v1"
    for pane in panes.values():
        stats = pane["stats"]
        assert (pane["engine"], pane["error"], stats["output_tokens"], stats["prompt_tokens"]) == ("url", None, 3, 3)
        assert stats["finish_reason"] == "stop" and stats["ttft_s"] > 0 and stats["tokens_per_s"] > 0
    assert sorted(r["model"] for r in requests) == ["echo", "echo-slow"]
    assert all(r["temperature"] == 0 for r in requests)
    # One table on the terminal, the replies in two columns of one row.
    assert re.search(r"│ gamma beta alpha +│ gamma beta alpha +│", err)
    assert "A: http://127.0.0.1:" in err and "B: echo-slow at" in err


def test_chat_with_a_folder_on_the_cpu_matches_its_greedy_generation(demo_model_dir):
    from transformers import AutoProcessor

    from studio.modeling import load_model

    prompt, new_tokens = "The tower is tall", 6
    processor = AutoProcessor.from_pretrained(demo_model_dir)
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        sequences = load_model(demo_model_dir).generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    expected = processor.tokenizer.decode(sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    with OpenAITestServer(chunk_delay_s=0.0) as server:
        command = studio(
            "chat", str(demo_model_dir), server.url, "--prompt", prompt, "--max-tokens", str(new_tokens),
            "--engine", "transformers",
        )  # fmt: skip
        with cleaned_up(command):
            out, err = command.communicate(timeout=300)
    assert command.returncode == 0, err[-3000:]
    panes = json.loads(out)["panes"]
    assert (panes["A"]["engine"], panes["A"]["model"]) == ("transformers", f"{demo_model_dir.name} (transformers)")
    assert panes["A"]["text"] == expected
    assert panes["A"]["stats"]["output_tokens"] == new_tokens and panes["A"]["stats"]["finish_reason"] == "length"
    assert panes["B"]["text"] == "tall is tower The"


def test_chat_reports_a_failed_pane_in_the_json_and_its_exit_status():
    with OpenAITestServer() as server:
        command = studio("chat", server.url, f"{server.url}#broken", "--prompt", "x y")
        with cleaned_up(command):
            out, err = command.communicate(timeout=120)
    assert command.returncode == 1
    panes = json.loads(out)["panes"]
    assert panes["A"]["text"] == "y x" and panes["A"]["error"] is None
    assert panes["B"]["stats"] is None and panes["B"]["error"].startswith("server answered HTTP 500")


def test_chat_bad_sources_are_named(tmp_path, capsys):
    from studio.cli import main

    assert main(["chat", str(tmp_path / "nowhere"), "http://127.0.0.1:9", "--prompt", "hi"]) == 2
    assert capsys.readouterr().err == f"error: A: {tmp_path / 'nowhere'} is neither a URL nor a model folder (no config.json)\n"
    assert main(["chat", "http://127.0.0.1:9", "ftp://x", "--prompt", "hi"]) == 2
    assert "error: B: " in capsys.readouterr().err
    assert main(["chat", "http://127.0.0.1:9", "http://127.0.0.1:9", "--prompt", "hi", "--image", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == f"error: --image: no such file {tmp_path / 'x.png'}\n"
    assert main(["chat", "http://127.0.0.1:9", "http://127.0.0.1:9", "--prompt", "hi", "--temperature", "3"]) == 2
    assert capsys.readouterr().err == "error: temperature: must be between 0 and 2, got 3.0\n"


def test_chat_sends_the_image_to_both_panes(tmp_path):
    from PIL import Image

    picture = tmp_path / "red.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(picture)
    with OpenAITestServer(chunk_delay_s=0.0) as server:
        command = studio("chat", server.url, server.url, "--prompt", "what colour", "--image", str(picture))
        with cleaned_up(command):
            out, err = command.communicate(timeout=120)
        requests = list(server.requests)
    assert command.returncode == 0, err
    assert json.loads(out)["image"] == str(picture)
    assert len(requests) == 2
    for request in requests:
        image_part, text_part = request["messages"][-1]["content"]
        assert text_part == {"type": "text", "text": "what colour"}
        assert image_part["image_url"]["url"].startswith("data:image/png;base64,")


def test_chat_reports_a_server_that_fails_to_start_with_its_log(fake_vllm, demo_model_dir):
    with OpenAITestServer() as server:
        command = studio(
            "chat", str(demo_model_dir), server.url, "--prompt", "hi", "--engine", "vllm",
            env={"STUDIO_VLLM_PYTHON": str(fake_vllm), "VLLM_FAKE_MODE": "crash"},
        )  # fmt: skip
        with cleaned_up(command):
            out, err = command.communicate(timeout=120)
    assert command.returncode == 1 and out == ""
    assert "error: vLLM server 'demo' exited with code 3 before becoming healthy" in err
    assert "fake vllm: error: the model cannot be loaded (test)" in err


def test_serve_options_reach_vllms_command_line(fake_vllm, demo_model_dir):
    port = free_port()
    command = studio(
        "serve", str(demo_model_dir), "--port", str(port), "--gpu-memory-utilization", "0.45",
        "--tensor-parallel-size", "2", "--max-model-len", "256", "--name", "lite",
        env={"STUDIO_VLLM_PYTHON": str(fake_vllm)},
    )  # fmt: skip
    with cleaned_up(command):
        wait_for_health(port, command)
        first_line = command.stdout.readline()
        command.send_signal(signal.SIGINT)
        command.communicate(timeout=60)
    assert first_line.startswith(f"serving lite at http://127.0.0.1:{port}/v1")
    argv = Path(re.search(r"\(log: (.+?)\)", first_line)[1]).read_text().splitlines()[0]
    for pair in (("--gpu-memory-utilization", "0.450"), ("--tensor-parallel-size", "2"),
                 ("--max-model-len", "256"), ("--served-model-name", "lite")):  # fmt: skip
        assert "'{}', '{}'".format(*pair) in argv, pair
