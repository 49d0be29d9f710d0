"""ServerManager without vLLM: command lines, memory plans, and the process lifecycle run against
a stand-in server (`tests.serve.fake_vllm_server`) that takes vLLM's command line."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import psutil
import pytest

from studio.serve.chat import GenerationStats, SamplingSettings, user_message
from studio.serve.manager import (
    REPO_ROOT,
    VLLM_ENTRYPOINT,
    choose_engine,
    ServerManager,
    ServerSpec,
    ServerStartError,
    check_servable,
    free_port,
    read_log_tail,
    server_processes,
)
from studio.serve.memory import GIB, kv_cache_bytes, plan_gpu_shares, read_config, weights_bytes
from studio.export.plugin_files import write_plugin
from tests.conftest import E4B_CONFIG
from tests.serve.conftest import alive

FAKE_ENTRYPOINT = "tests.serve.fake_vllm_server"


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def e4b_folder(path: Path, weight_bytes: int) -> Path:
    """A checkpoint folder with E4B's config and a (sparse) weight file of the given size."""
    path.mkdir(parents=True)
    config = json.loads(E4B_CONFIG.read_text())
    config.pop("_note", None)
    config["text_config"]["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config))
    with open(path / "model.safetensors", "wb") as handle:
        handle.truncate(weight_bytes)
    return path


def flap_export(demo_model_dir: Path, path: Path) -> Path:
    """An export-like folder: the demo's config marked FLAP-pruned, with a vllm_config.yaml."""
    path.mkdir(parents=True)
    config = json.loads((demo_model_dir / "config.json").read_text())
    config["architectures"] = ["Gemma4FlapForConditionalGeneration"]
    config["text_config"].update(flap_pruned=True, intermediate_sizes=[384] * 8)
    (path / "config.json").write_text(json.dumps(config))
    (path / "vllm_config.yaml").write_text("dtype: bfloat16\nmax-model-len: 2048\n")
    return path


def pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def manager(tmp_path):
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs", entrypoint=FAKE_ENTRYPOINT) as m:
        yield m


def fake_spec(model_dir, mode="serve", name="echo") -> ServerSpec:
    return ServerSpec(model_dir, name=name, env={"PYTHONPATH": str(REPO_ROOT), "VLLM_FAKE_MODE": mode})


# --- command lines and environments ---------------------------------------------------------------


def test_cpu_command_serves_a_multimodal_checkpoint_as_text(demo_model_dir, tmp_path):
    with ServerManager(vllm_python="/opt/vllm/bin/python", device="cpu", log_dir=tmp_path) as manager:
        spec = ServerSpec(demo_model_dir, name="base")
        command = manager.command_for(spec, port=8123)
        env = manager.environment_for(spec)
    assert command[:3] == ["/opt/vllm/bin/python", "-m", VLLM_ENTRYPOINT]
    assert option(command, "--model") == str(demo_model_dir.resolve())
    assert (option(command, "--host"), option(command, "--port")) == ("127.0.0.1", "8123")
    assert option(command, "--served-model-name") == "base"
    assert json.loads(option(command, "--hf-overrides")) == {"architectures": ["Gemma4ForCausalLM"]}
    # The demo allows 4096 positions, and 4096 tokens of its KV cache fit in 1 GiB.
    assert option(command, "--max-model-len") == "4096"
    assert "--gpu-memory-utilization" not in command and "--config" not in command
    assert "--enforce-eager" in command  # no minutes-long torch.compile on CPU
    assert (env["VLLM_CPU_KVCACHE_SPACE"], env["VLLM_HOST_IP"], env["HF_HUB_OFFLINE"]) == ("1", "127.0.0.1", "1")
    assert "PYTHONPATH" not in env  # the studio's own path stays out of the vLLM environment


def test_an_export_gets_its_plugin_on_pythonpath_and_its_config_file(demo_model_dir, tmp_path):
    export = flap_export(demo_model_dir, tmp_path / "export")
    with ServerManager(vllm_python="/opt/vllm/bin/python", device="cpu", log_dir=tmp_path) as manager:
        command = manager.command_for(ServerSpec(export, extra_args=["--seed", "3"]), port=9000)
        env = manager.environment_for(ServerSpec(export))
        on_gpu_style = manager.command_for(ServerSpec(export, text_only=False), port=9000)
    # --config comes first so that the options after it take precedence over the file's.
    assert command[3:5] == ["--config", str(export / "vllm_config.yaml")]
    assert option(command, "--served-model-name") == "export"
    assert json.loads(option(command, "--hf-overrides")) == {"architectures": ["Gemma4FlapForCausalLM"]}
    assert command[-2:] == ["--seed", "3"]
    assert option(command, "--max-model-len") == "2048"  # the export's own setting is the cap
    assert env["PYTHONPATH"] == str(export)
    assert "--hf-overrides" not in on_gpu_style


def test_cpu_context_is_fitted_to_the_kv_cache_space(tmp_path):
    model = e4b_folder(tmp_path / "e4b", 1024)
    with ServerManager(vllm_python="/x", device="cpu", log_dir=tmp_path) as manager:
        command = manager.command_for(ServerSpec(model, max_model_len=131072), port=9000)
    length = int(option(command, "--max-model-len"))
    # E4B in bf16: 4 KV-storing full-attention layers at 16 KiB per token, plus 20 sliding layers
    # holding 512 tokens (20 MiB); (1 GiB - 20 MiB) / 16 KiB = 64256 tokens.
    assert length == 64256
    config = read_config(model)
    assert kv_cache_bytes(config, length) <= GIB < kv_cache_bytes(config, length + 16)


def test_kv_cache_bytes_follow_the_demo_layers(demo_model_dir):
    # 5 layers store KV (3 of 8 are shared): 4 sliding (window 64, head_dim 32) and 1 full
    # (head_dim 64), one KV head, float32.
    config = read_config(demo_model_dir)
    assert kv_cache_bytes(config, 1000) == 4 * (2 * 32 * 4 * 64) + 2 * 64 * 4 * 1000
    assert kv_cache_bytes(config, 10) == 4 * (2 * 32 * 4 * 10) + 2 * 64 * 4 * 10


def test_two_servers_on_one_gpu_get_shares_that_fit(tmp_path):
    base = e4b_folder(tmp_path / "base", 15_900_000_000)
    lite = e4b_folder(tmp_path / "lite", 5_000_000_000)
    total = 32 * GIB
    with ServerManager(vllm_python="/x", device="cuda", gpu_total_bytes=total, log_dir=tmp_path) as manager:
        specs = [ServerSpec(base, max_model_len=4096), ServerSpec(lite, max_model_len=131072)]
        share_base, share_lite = manager.plan_shares(specs)
        command = manager.command_for(specs[1], port=9000, share=share_lite)
    assert share_base.gpu_memory_utilization + share_lite.gpu_memory_utilization <= 0.9
    for share, model in ((share_base, base), (share_lite, lite)):
        kv = kv_cache_bytes(read_config(model), share.max_model_len)
        assert share.gpu_memory_utilization * total >= weights_bytes(model) + 2 * GIB + kv - total * 0.001
    assert share_base.gpu_memory_utilization > share_lite.gpu_memory_utilization
    # Each server keeps its own cap; E4B's KV cache is small, so the whole 131072 fits.
    assert (share_base.max_model_len, share_lite.max_model_len) == (4096, 131072)
    assert option(command, "--gpu-memory-utilization") == f"{share_lite.gpu_memory_utilization:.3f}"
    assert option(command, "--max-model-len") == "131072"
    assert "--hf-overrides" not in command  # multimodal on GPU
    assert "--enforce-eager" not in command  # CUDA graphs and compilation stay on


def test_models_too_big_for_the_gpu_are_an_input_error(tmp_path):
    base = e4b_folder(tmp_path / "base", 15_900_000_000)
    lite = e4b_folder(tmp_path / "lite", 5_000_000_000)
    with pytest.raises(ValueError, match=r"^model_dirs: weights of 19\.5 GiB .* do not fit in 21\.6 GiB"):
        plan_gpu_shares([base, lite], 24 * GIB)


def test_a_missing_vllm_environment_is_named(demo_model_dir, tmp_path):
    with ServerManager(vllm_python=tmp_path / "nope" / "python", device="cpu", log_dir=tmp_path) as manager:
        with pytest.raises(ValueError, match="^vllm_python: .* does not exist; create the vLLM environment"):
            manager.start(ServerSpec(demo_model_dir))


# --- lifecycle against the stand-in server ---------------------------------------------------------


def test_start_chat_and_stop_leaves_no_process(manager, demo_model_dir):
    server = manager.start(fake_spec(demo_model_dir))
    assert server.managed and server.alive
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
    events = list(server.backend().stream_chat([user_message("left right")], SamplingSettings()))
    assert isinstance(events[-1], GenerationStats)
    assert "".join(e.text for e in events[:-1]) == "right left"
    processes = server_processes(server.process)
    assert len(processes) >= 2  # the server and its "engine" child
    manager.stop(server)
    assert alive(processes) == []
    assert manager.servers == []


def test_a_crashing_server_is_reported_with_its_log_and_cleaned_up(manager, demo_model_dir):
    with pytest.raises(ServerStartError, match="exited with code 3 before becoming healthy") as caught:
        manager.start(fake_spec(demo_model_dir, mode="crash"))
    assert "fake vllm: error: the model cannot be loaded (test)" in caught.value.log_tail
    assert "--- last lines of the server log ---" in str(caught.value)
    engine_pid = int(re.search(r"engine pid (\d+)", caught.value.log_tail)[1])
    # The crashed server's child was left running by it; the manager ended it.
    assert not pid_running(engine_pid)
    assert manager.servers == []


def test_a_server_that_never_turns_healthy_times_out_and_is_stopped(manager, demo_model_dir):
    with pytest.raises(ServerStartError, match=r"was not healthy after 3 s") as caught:
        manager.start(fake_spec(demo_model_dir, mode="hang"), timeout_s=3)
    engine_pid = int(re.search(r"engine pid (\d+)", caught.value.log_tail)[1])
    assert not pid_running(engine_pid)


def test_shutdown_stops_every_started_server(tmp_path, demo_model_dir):
    manager = ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path, entrypoint=FAKE_ENTRYPOINT)
    first, second = manager.start_pair(fake_spec(demo_model_dir, name="echo"), fake_spec(demo_model_dir, name="paired-A"))
    assert first.url != second.url
    processes = server_processes(first.process) + server_processes(second.process)
    manager.shutdown()
    assert alive(processes) == []
    assert manager.servers == []


def test_a_failing_second_server_stops_the_first(manager, demo_model_dir):
    with pytest.raises(ServerStartError):
        manager.start_pair(fake_spec(demo_model_dir), fake_spec(demo_model_dir, mode="crash"))
    assert manager.servers == []


def test_attach_to_a_running_endpoint(manager, openai_server):
    server = manager.attach(openai_server.url, model="echo-slow", name="remote")
    assert (server.managed, server.model, server.name, server.url) == (False, "echo-slow", "remote", openai_server.url)
    assert manager.attach(openai_server.url + "/v1").model == "echo"  # the first listed model
    events = list(server.backend().stream_chat([user_message("p q")], SamplingSettings()))
    assert "".join(e.text for e in events[:-1]) == "q p"
    manager.shutdown()  # an attached endpoint is never stopped
    assert manager.attach(openai_server.url).model == "echo"
    with pytest.raises(ValueError, match="^model: 'nope' is not served at"):
        manager.attach(openai_server.url, model="nope")


def test_attach_to_nothing_is_an_input_error(manager):
    with pytest.raises(ValueError, match=r"^url: no OpenAI-compatible server answers at http://127\.0\.0\.1:9/v1/models"):
        manager.attach("http://127.0.0.1:9", timeout_s=2)


def test_read_log_tail(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert read_log_tail(tmp_path / "missing.log") == ""


def test_int4_exports_on_cpu_go_to_the_transformers_fallback(demo_model_dir, tmp_path):
    int4 = tmp_path / "int4"
    int4.mkdir()
    config = json.loads((demo_model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (int4 / "config.json").write_text(json.dumps(config))
    assert choose_engine(int4, "cpu", vllm_available=True) == "transformers"
    assert choose_engine(int4, "cuda", vllm_available=True) == "vllm"
    assert choose_engine(demo_model_dir, "cpu", vllm_available=True) == "vllm"
    assert choose_engine(demo_model_dir, "cuda", vllm_available=False) == "transformers"


def test_a_server_that_dies_later_is_explained_in_the_pane(manager, demo_model_dir):
    server = manager.start(fake_spec(demo_model_dir))
    assert server.failure() is None
    processes = server_processes(server.process)
    for proc in processes:
        proc.kill()
    server.process.wait(timeout=30)
    events = list(server.backend(timeout_s=5).stream_chat([user_message("anyone?")], SamplingSettings()))
    assert len(events) == 1
    message = events[0].message
    assert message.startswith(f"cannot reach {server.url}/v1")
    assert f"the vLLM server 'echo' exited with code -9; last lines of {server.log_path}:" in message
    assert "fake vllm: serving on 127.0.0.1" in message


# --- the check before a FLAP-pruned folder starts -------------------------------------------------


def card_folder(demo_model_dir: Path, path: Path, plugin: bool = True, **text_config) -> Path:
    """The reference card's layout: stock architecture name, flap_pruned, widths, the plugin."""
    path.mkdir(parents=True)
    config = json.loads((demo_model_dir / "config.json").read_text())
    config["text_config"].update(flap_pruned=True, intermediate_sizes=[256] * 8)
    config["text_config"].update(text_config)
    (path / "config.json").write_text(json.dumps(config))
    if plugin:
        write_plugin(path)
    return path


def refusal(manager: ServerManager, spec: ServerSpec) -> str:
    with pytest.raises(ValueError) as caught:
        manager.start(spec)
    assert manager.servers == [] and not list(manager.log_dir.glob("*.log"))  # nothing was started
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_servable_card_folder_passes_the_check(demo_model_dir, tmp_path):
    folder = card_folder(demo_model_dir, tmp_path / "card")
    check_servable(folder, pythonpath=[folder])
    check_servable(demo_model_dir)  # unpruned: nothing to check
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs") as manager:
        manager.check(ServerSpec(folder))
        command = manager.command_for(ServerSpec(folder), port=9000)
    # On CPU the stock multimodal name is served as the stock text model; the plugin routes it.
    assert json.loads(option(command, "--hf-overrides")) == {"architectures": ["Gemma4ForCausalLM"]}


def test_flap_folders_that_cannot_be_served_are_refused_in_one_line(demo_model_dir, tmp_path):
    no_widths = card_folder(demo_model_dir, tmp_path / "no-widths", intermediate_sizes=None)
    short = card_folder(demo_model_dir, tmp_path / "short", intermediate_sizes=[256] * 7)
    no_plugin = card_folder(demo_model_dir, tmp_path / "no-plugin", plugin=False)
    no_egg_info = card_folder(demo_model_dir, tmp_path / "no-egg-info")
    shutil.rmtree(no_egg_info / "vllm_flap_plugin.egg-info")
    no_package = card_folder(demo_model_dir, tmp_path / "no-package")
    shutil.rmtree(no_package / "vllm_flap_plugin")
    other = card_folder(demo_model_dir, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))

    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs") as manager:
        assert refusal(manager, ServerSpec(no_widths)) == (
            f"model_dir: {no_widths} is FLAP-pruned but its config.json has no text_config.intermediate_sizes "
            "with one positive FFN width per layer (8), got None"
        )
        assert "(8), got [256, 256, 256, 256, 256, 256, 256]" in refusal(manager, ServerSpec(short))
        assert refusal(manager, ServerSpec(no_plugin)).startswith(
            f"model_dir: {no_plugin} is FLAP-pruned but no vLLM plugin would load: no *.egg-info declaring "
            "vllm.general_plugins in the folder or on PYTHONPATH"
        )
        assert refusal(manager, ServerSpec(no_egg_info)) == (
            f"model_dir: {no_egg_info} cannot be served: {no_egg_info / 'vllm_flap_plugin'} is there but no "
            "vllm_flap_plugin.egg-info declares its vllm.general_plugins entry point, so vLLM would not load it"
        )
        assert refusal(manager, ServerSpec(no_package)) == (
            f"model_dir: {no_package} cannot be served: {no_package} declares the vLLM plugin vllm-flap-plugin "
            "but holds no vllm_flap_plugin/ package"
        )
        assert refusal(manager, ServerSpec(other)).startswith(
            f"model_dir: {other}: architectures 'LlamaForCausalLM' is none the FLAP plugin serves "
            "(Gemma4FlapForConditionalGeneration, Gemma4FlapForCausalLM, Gemma4ForConditionalGeneration, Gemma4ForCausalLM)"
        )


def test_the_studio_plugin_serves_a_folder_without_one(demo_model_dir, tmp_path):
    folder = card_folder(demo_model_dir, tmp_path / "card", plugin=False)
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs") as manager:
        spec = ServerSpec(folder, studio_plugin=True)
        manager.check(spec)
        env = manager.environment_for(spec)
    broken = card_folder(demo_model_dir, tmp_path / "broken")
    shutil.rmtree(broken / "vllm_flap_plugin.egg-info")
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs") as manager:
        manager.check(ServerSpec(broken, studio_plugin=True))  # the studio's plugin loads; the stray package is shadowed
    plugin_dir = tmp_path / "logs" / "studio-plugin"
    # The studio's copy comes first, so it is the one imported even where the folder has its own.
    assert env["PYTHONPATH"] == f"{plugin_dir}:{folder}"
    assert (plugin_dir / "vllm_flap_plugin" / "__init__.py").read_text() == (
        Path(REPO_ROOT, "studio/vllm_plugin/vllm_flap_plugin/__init__.py").read_text()
    )


def test_widths_must_split_over_the_tensor_parallel_gpus(demo_model_dir, tmp_path):
    folder = card_folder(demo_model_dir, tmp_path / "card", intermediate_sizes=[256] * 7 + [384])
    with ServerManager(vllm_python=sys.executable, device="cuda", gpu_total_bytes=80 * GIB, log_dir=tmp_path / "logs") as manager:
        two_gpus = ServerSpec(folder, tensor_parallel_size=2, port=8123, gpu_memory_utilization=0.5)
        assert refusal(manager, two_gpus) == (
            "layer 7: intermediate_size 384 is not a multiple of 256 (128 x tensor_parallel_size 2): vLLM's "
            "GPTQ-Marlin needs each GPU's share of down_proj's input (192 here) to be a multiple of 128"
        )
        manager.check(ServerSpec(folder, tensor_parallel_size=1))
        command = manager.command_for(ServerSpec(folder, tensor_parallel_size=4), port=8123)
    assert option(command, "--tensor-parallel-size") == "4"
    assert "--tensor-parallel-size" not in manager.command_for(ServerSpec(folder), port=8123)
    # The unpruned demo's 512-wide FFNs split over 4 GPUs (128 each), not over 8.
    check_servable(demo_model_dir, tensor_parallel_size=4)
    with pytest.raises(ValueError, match=r"^layer 0: intermediate_size 512 is not a multiple of 1024"):
        check_servable(demo_model_dir, tensor_parallel_size=8)


def test_a_spec_port_is_used(manager, demo_model_dir):
    port = free_port()
    server = manager.start(ServerSpec(demo_model_dir, name="echo", port=port, env=fake_spec(demo_model_dir).env))
    assert server.url == f"http://127.0.0.1:{port}"


def test_tensor_parallel_servers_keep_vllms_memory_defaults(tmp_path):
    # 15.9 GB of weights do not fit one 16 GiB GPU's plan, but split over two GPUs they may.
    big = e4b_folder(tmp_path / "big", 15_900_000_000)
    with ServerManager(vllm_python="/x", device="cuda", gpu_total_bytes=16 * GIB, log_dir=tmp_path) as manager:
        with pytest.raises(ValueError, match="^model_dirs: weights of"):
            manager.plan_shares([ServerSpec(big)])
        split = ServerSpec(big, tensor_parallel_size=2, max_model_len=4096)
        assert manager.plan_shares([split]) == [None]
        command = manager.command_for(split, port=9000)
    assert "--gpu-memory-utilization" not in command
    assert (option(command, "--tensor-parallel-size"), option(command, "--max-model-len")) == ("2", "4096")


def test_vllm_plugins_that_leave_the_plugin_out_are_named(demo_model_dir, tmp_path):
    folder = card_folder(demo_model_dir, tmp_path / "card")
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs") as manager:
        assert refusal(manager, ServerSpec(folder, env={"VLLM_PLUGINS": "lora_filesystem_resolver"})) == (
            f"model_dir: {folder} cannot be served: VLLM_PLUGINS='lora_filesystem_resolver' leaves out its plugin "
            "vllm_flap_plugin; unset it or add that name"
        )
        manager.check(ServerSpec(folder, env={"VLLM_PLUGINS": "lora_filesystem_resolver,vllm_flap_plugin"}))


def test_a_context_cap_below_512_tokens_is_kept(demo_model_dir, tmp_path):
    with ServerManager(vllm_python="/x", device="cpu", log_dir=tmp_path) as manager:
        assert option(manager.command_for(ServerSpec(demo_model_dir, max_model_len=256), port=9000), "--max-model-len") == "256"
        assert option(manager.command_for(ServerSpec(demo_model_dir, max_model_len=1000), port=9000), "--max-model-len") == "992"


def test_flap_statistics_beside_the_weights_are_refused(demo_model_dir, tmp_path):
    # vLLM loads every *.safetensors of a folder without an index: the statistics would be read as weights.
    folder = card_folder(demo_model_dir, tmp_path / "pruned")
    (folder / "flap_stats.safetensors").write_bytes(b"")
    with ServerManager(vllm_python=sys.executable, device="cpu", log_dir=tmp_path / "logs") as manager:
        assert refusal(manager, ServerSpec(folder)) == (
            f"model_dir: {folder} cannot be served: it has no model.safetensors.index.json, so vLLM would load "
            "flap_stats.safetensors as weights; move it out of the folder (exports never hold it)"
        )
        (folder / "model.safetensors.index.json").write_text("{}")
        manager.check(ServerSpec(folder))
