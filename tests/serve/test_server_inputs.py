"""What a vLLM server gets from the studio: an allow-listed environment (no secrets) and a
`vllm_config.yaml` checked against an allow-list of keys before anything starts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from studio.serve.manager import REPO_ROOT, ServerManager, ServerSpec, child_environment, export_options
from studio.export.plugin_files import vllm_config_yaml

FAKE_ENTRYPOINT = "tests.serve.fake_vllm_server"
SECRETS = {
    "HF_TOKEN": "hf_not_for_children",
    "HUGGING_FACE_HUB_TOKEN": "hf_also_not",
    "STUDIO_REDIS_URL": "redis://:pw@queue:6379/0",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "VLLM_API_KEY": "would-lock-the-studio-out",
    "CUDA_AUTH_TOKEN": "a secret in an allowed family",
}
SETTINGS = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/home/studio",
    "LC_ALL": "C.UTF-8",
    "CUDA_VISIBLE_DEVICES": "1",
    "VLLM_LOGGING_LEVEL": "DEBUG",
    "OMP_NUM_THREADS": "2",
    "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor",
    "HF_HOME": "/data/hf",
}


def test_child_environment_keeps_settings_and_drops_secrets_and_the_rest():
    parent = {**SECRETS, **SETTINGS, "PYTHONPATH": "/studio", "PYTHONHOME": "/x", "DISPLAY": ":0", "GRADIO_SERVER_PORT": "7860"}
    assert child_environment(parent) == SETTINGS


def test_a_started_server_process_sees_no_secret(monkeypatch, tmp_path, demo_model_dir):
    for name, value in {**SECRETS, "OMP_NUM_THREADS": "2", "VLLM_LOGGING_LEVEL": "DEBUG"}.items():
        monkeypatch.setenv(name, value)
    spec = ServerSpec(demo_model_dir, name="env-probe", env={"PYTHONPATH": str(REPO_ROOT), "VLLM_FAKE_MODE": "serve"})
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path, entrypoint=FAKE_ENTRYPOINT) as manager:
        server = manager.start(spec)
        seen = psutil.Process(server.process.pid).environ()  # what the running process was given
        manager.stop(server)
    assert not set(SECRETS) & set(seen)
    assert (seen["OMP_NUM_THREADS"], seen["VLLM_LOGGING_LEVEL"], seen["PATH"]) == ("2", "DEBUG", os.environ["PATH"])
    assert (seen["HF_HUB_OFFLINE"], seen["VLLM_HOST_IP"], seen["VLLM_CPU_KVCACHE_SPACE"]) == ("1", "127.0.0.1", "1")
    assert (seen["PYTHONPATH"], seen["VLLM_FAKE_MODE"]) == (str(REPO_ROOT), "serve")  # the spec's own env


def served_folder(demo_model_dir: Path, path: Path, config_text: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text((demo_model_dir / "config.json").read_text())
    (path / "vllm_config.yaml").write_text(config_text)
    return path


def test_the_exports_own_vllm_config_passes(demo_model_dir, tmp_path):
    text = vllm_config_yaml(served_model_name="lite", dtype="bfloat16", max_model_len=2048,
                            extra={"hf-overrides": {"architectures": ["Gemma4FlapForCausalLM"]}, "gpu_memory_utilization": 0.8})
    folder = served_folder(demo_model_dir, tmp_path / "export", text)
    assert export_options(folder) == {
        "dtype": "bfloat16", "served-model-name": "lite", "max-model-len": 2048,
        "hf-overrides": {"architectures": ["Gemma4FlapForCausalLM"]}, "gpu_memory_utilization": 0.8,
    }
    with ServerManager(vllm_python="/opt/vllm/bin/python", device="cpu", log_dir=tmp_path) as manager:
        command = manager.command_for(ServerSpec(folder), port=9000)
    assert command[3:5] == ["--config", str(folder / "vllm_config.yaml")]


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("dtype: bfloat16\ntrust-remote-code: true\n",
         "vllm_config.yaml: trust-remote-code is refused: it would let the checkpoint run its own Python code"),
        ("trust_remote_code: true\n", "vllm_config.yaml: trust_remote_code is refused"),
        ("dtype: bfloat16\ntool-parser-plugin: /tmp/evil.py\n", "vllm_config.yaml: unknown option 'tool-parser-plugin'"),
        ("host: 0.0.0.0\n", "vllm_config.yaml: unknown option 'host'"),
        ("- dtype\n", "vllm_config.yaml: expected option: value pairs"),
        ("dtype: [bfloat16\n", "vllm_config.yaml: not valid YAML"),
    ],
    ids=["trust-remote-code", "underscore-spelling", "code-plugin", "host", "a-list", "bad-yaml"],
)
def test_refused_keys_are_named_and_no_server_starts(demo_model_dir, tmp_path, config_text, message):
    folder = served_folder(demo_model_dir, tmp_path / "export", config_text)
    spec = ServerSpec(folder, name="refused", env={"PYTHONPATH": str(REPO_ROOT), "VLLM_FAKE_MODE": "serve"})
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs", entrypoint=FAKE_ENTRYPOINT) as manager:
        with pytest.raises(ValueError) as caught:
            manager.start(spec)
        assert manager.servers == []
    assert str(caught.value).startswith(message)
    assert str(folder / "vllm_config.yaml") in str(caught.value)
    assert not (tmp_path / "logs").exists()  # refused before any process or log was made


def test_an_unknown_key_message_lists_what_is_allowed(demo_model_dir, tmp_path):
    folder = served_folder(demo_model_dir, tmp_path / "export", "model-impl: transformers\n")
    with pytest.raises(ValueError) as caught:
        export_options(folder)
    assert str(caught.value).startswith(f"vllm_config.yaml: unknown option 'model-impl' ({folder / 'vllm_config.yaml'}); allowed: block-size, cpu-offload-gb, ")
