"""Exact sizes from safetensors headers, against the estimate from the config alone."""

from __future__ import annotations

import pytest

from studio.sizes import SizeReport, config_from_file, estimate, measure_checkpoint


def test_estimate_equals_the_demo_checkpoint(demo_model_dir):
    """The demo is stored in float32: same tensors, same bytes, from the config alone."""
    measured = measure_checkpoint(demo_model_dir)
    estimated = estimate(config_from_file(demo_model_dir), dtype="float32")
    assert measured.components == estimated.components
    assert "other" not in measured.components and "lm_head" not in measured.components  # tied
    assert 0 < measured.file_bytes - measured.tensor_bytes < 40_000
    in_bf16 = measure_checkpoint(demo_model_dir, float_dtype="bfloat16")
    assert in_bf16.params == measured.params and in_bf16.tensor_bytes * 2 == measured.tensor_bytes
    assert SizeReport.from_dict(measured.to_dict()) == measured


def test_measure_needs_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        measure_checkpoint(tmp_path)
