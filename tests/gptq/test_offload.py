"""GPTQ with the model never held whole (GPTQModel's checkpoint-backed offload) against the in-memory
path, on the demo model pruned by hand: the same packed weights, biases and quant log, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from studio.gptq.quantize import QuantizeSettings, quantize_checkpoint, read_quant_log
from tests.gptq.conftest import WIDTHS


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update(load_file(str(shard)))
    return found


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_offloaded_quantization_equals_the_in_memory_one(pruned_dir, calibration_ids, tmp_path, dtype):
    settings = QuantizeSettings(dtype=dtype)
    in_memory = quantize_checkpoint(pruned_dir, tmp_path / "memory", calibration_ids, settings, offload=False)
    offloaded = quantize_checkpoint(pruned_dir, tmp_path / "offload", calibration_ids, settings, offload=True)

    assert [(r.layer, r.module, r.loss, r.samples, r.damp) for r in offloaded.modules] == [
        (r.layer, r.module, r.loss, r.samples, r.damp) for r in in_memory.modules
    ]
    assert len(offloaded.modules) == len(WIDTHS) * 4
    expected, got = tensors(tmp_path / "memory"), tensors(tmp_path / "offload")
    assert sorted(got) == sorted(expected)
    assert any(name.endswith("down_proj.qweight") for name in got)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
    # The FLAP bias comes from the checkpoint in the model dtype on both paths.
    bias = "model.language_model.layers.0.mlp.down_proj.bias"
    source = load_file(str(pruned_dir / "model.safetensors"))[bias]
    assert torch.equal(got[bias], source.to(settings.torch_dtype))
    assert [(r.layer, r.module) for r in read_quant_log(tmp_path / "offload" / "quant_log.csv")] == [
        (r.layer, r.module) for r in in_memory.modules
    ]
    # The scratch folder for offloaded layers is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory", "offload"]
