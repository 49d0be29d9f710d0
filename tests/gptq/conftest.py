"""Shared by the GPTQ tests: the demo model pruned by hand (FLAP format, nonzero down_proj bias) and
its calibration ids. Module-scoped: each test module builds its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

WIDTHS = [384, 256, 512, 128, 384, 256, 512, 384]
SAMPLES, SEQLEN = 8, 64


def prune_by_hand(source: Path, target: Path, widths: list[int], seed: int = 1) -> Path:
    """A FLAP-format checkpoint: random channels kept per layer and a random nonzero down_proj bias
    (what FLAP's bias compensation adds), written the way pruned checkpoints are."""
    from studio.modeling import FlapGemma4MLP, decoder_layers, load_model, mark_pruned, text_config_of

    model = load_model(source, dtype=torch.float32)
    text_config = text_config_of(model.config)
    generator = torch.Generator().manual_seed(seed)
    for layer, width in zip(decoder_layers(model), widths):
        old = layer.mlp
        keep = torch.randperm(old.gate_proj.out_features, generator=generator)[:width].sort().values
        new = FlapGemma4MLP(text_config.hidden_size, width, text_config.hidden_activation)
        with torch.no_grad():
            new.gate_proj.weight.copy_(old.gate_proj.weight[keep])
            new.up_proj.weight.copy_(old.up_proj.weight[keep])
            new.down_proj.weight.copy_(old.down_proj.weight[:, keep])
            new.down_proj.bias.copy_(torch.randn(text_config.hidden_size, generator=generator) * 0.05)
        layer.mlp = new
    mark_pruned(model, widths)
    model.save_pretrained(target)
    for entry in Path(source).iterdir():
        if entry.is_file() and not entry.name.endswith(".safetensors") and entry.name != "config.json":
            shutil.copy(entry, target / entry.name)
    return target


@pytest.fixture(scope="module")
def pruned_dir(demo_model_dir, tmp_path_factory) -> Path:
    return prune_by_hand(demo_model_dir, tmp_path_factory.mktemp("pruned") / "model", WIDTHS)


@pytest.fixture(scope="module")
def calibration_ids(pruned_dir, calibration_text):
    from transformers import AutoTokenizer

    from studio.calibration import CalibrationSpec, build_calibration_ids

    tokenizer = AutoTokenizer.from_pretrained(pruned_dir)
    return build_calibration_ids(tokenizer, CalibrationSpec(source=str(calibration_text), samples=SAMPLES, seqlen=SEQLEN))
