"""Sizes per component: measured from safetensors headers, estimated from a config (meta device),
the GPTQ v1 storage formula, and `python -m studio estimate` on the published E4B config with the
card's preset. (The estimate of a real compressed export is checked in tests/export/.)"""

from __future__ import annotations

import json

import pytest

from studio.cli import main
from studio.export.shards import parse_size
from studio.modeling import load_text_config
from studio.plans.plan import find_preset, load_plan
from studio.gptq.quantize import QuantizeSettings
from studio.sizes import (
    ComponentSize,
    SizeReport,
    component_of,
    config_from_file,
    estimate,
    gptq_tensor_infos,
    measure_checkpoint,
)
from tests.conftest import E4B_CONFIG

E4B_LAYERS, E4B_HIDDEN, E4B_FFN = 42, 2560, 10240


@pytest.mark.parametrize(
    ("name", "component"),
    [
        ("model.language_model.embed_tokens.weight", "embeddings"),
        ("model.embed_tokens_per_layer.weight", "ple_embeddings"),
        ("model.language_model.layers.3.self_attn.q_proj.weight", "attention"),
        ("model.language_model.layers.3.self_attn.o_proj.qweight", "attention"),
        ("model.language_model.layers.3.self_attn.q_norm.weight", "norms"),
        ("model.layers.0.mlp.down_proj.bias", "ffn"),
        ("model.layers.0.mlp.gate_proj.g_idx", "ffn"),
        ("model.language_model.layers.0.per_layer_input_gate.weight", "ple_projections"),
        ("model.language_model.per_layer_model_projection.weight", "ple_projections"),
        ("model.language_model.per_layer_projection_norm.weight", "norms"),
        ("model.language_model.layers.0.layer_scalar", "norms"),
        ("model.vision_tower.encoder.layers.0.mlp.gate_proj.linear.weight", "vision_tower"),
        ("model.embed_vision.embedding_projection.weight", "vision_tower"),
        ("model.audio_tower.layers.0.ffw.weight", "audio_tower"),
        ("lm_head.weight", "lm_head"),
    ],
)
def test_component_of(name, component):
    assert component_of(name) == component


def test_gptq_storage_formula():
    infos = {i.name.rsplit(".", 1)[-1]: i for i in gptq_tensor_infos("m", 2560, 10240, bits=4, group_size=128)}
    assert infos["qweight"].shape == (320, 10240) and infos["qweight"].dtype == "I32"
    assert infos["qzeros"].shape == (20, 1280) and infos["scales"].shape == (20, 10240)
    assert infos["scales"].dtype == "F16" and infos["g_idx"].shape == (2560,)
    total = sum(i.nbytes for i in infos.values())
    assert total == 2560 * 10240 // 2 + 20 * 1280 * 4 + 20 * 10240 * 2 + 2560 * 4
    whole_rows = {i.name.rsplit(".", 1)[-1]: i.shape for i in gptq_tensor_infos("m", 256, 64, bits=8, group_size=-1)}
    assert whole_rows["qzeros"] == (1, 16) and whole_rows["scales"] == (1, 64) and whole_rows["qweight"] == (64, 64)
    with pytest.raises(ValueError, match="m: 20 x 64 features do not pack into int32 at 4 bits"):
        gptq_tensor_infos("m", 20, 64, bits=4, group_size=128)


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


def test_e4b_estimate_with_the_cards_preset():
    config = config_from_file(E4B_CONFIG)
    plan = load_plan(find_preset("gemma4-lite-round2"), load_text_config(E4B_CONFIG))
    base = estimate(config)
    assert base.component("ffn").params == E4B_LAYERS * 3 * E4B_HIDDEN * E4B_FFN
    assert base.component("ple_embeddings").params == 262144 * E4B_LAYERS * 256
    assert set(base.components) == {"embeddings", "ple_embeddings", "attention", "ffn", "ple_projections", "norms"}
    pruned = estimate(config, plan, None)
    # The studio's FLAP MLP gives every layer of a pruned model a down_proj bias (zero where the
    # layer keeps all its channels), so a pruned checkpoint stores 42 biases, not 23.
    assert sum(w < E4B_FFN for w in plan.widths) == 23
    assert pruned.component("ffn").params == 3 * E4B_HIDDEN * sum(plan.widths) + E4B_HIDDEN * E4B_LAYERS
    assert pruned.params == base.params - 3 * E4B_HIDDEN * 46080 + E4B_HIDDEN * E4B_LAYERS
    compressed = estimate(config, plan, QuantizeSettings())
    assert compressed.params == pruned.params  # quantization changes bytes, not parameters
    assert compressed.quantized_params == 3 * E4B_HIDDEN * sum(plan.widths) + compressed.component("attention").quantized_params
    # int4 + per-group scales/zeros + g_idx: about 26% of the same weights in bf16.
    assert 0.255 < compressed.quantized_bytes / (2 * compressed.quantized_params) < 0.265
    assert compressed.component("embeddings") == base.component("embeddings")


def test_tower_sizes_are_assumptions():
    config = config_from_file(E4B_CONFIG)
    report = estimate(config, tower_params=1000)
    assert report.component("towers") == ComponentSize(1000, 2000)
    assert report.assumptions == ("vision + audio towers (combined): 1,000 parameters given, stored in bfloat16, not quantized",)
    with pytest.raises(ValueError, match="audio_params: must be a non-negative integer"):
        estimate(config, audio_params=-1)


def test_towers_cannot_be_given_twice(demo_model_dir):
    with pytest.raises(ValueError, match="vision_params: the config already defines the vision tower"):
        estimate(config_from_file(demo_model_dir), vision_params=10)


def test_measure_needs_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        measure_checkpoint(tmp_path)


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("4GiB") == 4 * 2**30
    assert parse_size(1234) == 1234 and parse_size("1.5 kb") == 1500
    with pytest.raises(ValueError, match="max_shard_size: expected a size"):
        parse_size("2 parsecs")


def test_estimate_command_compares_with_the_card(capsys):
    args = ["estimate", "--config", str(E4B_CONFIG), "--plan", "gemma4-lite-round2", "--base-bytes", "15.9e9", "--compare-card"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vision + audio towers (combined)" in out and "15.900" in out
    assert "the plan's widths remove 10.7% of FFN channels" in out and "the card overstates it" in out
    assert "GPTQ storage is 26.0% of the same weights in bfloat16" in out


def test_estimate_command_json_and_errors(capsys):
    assert main(["estimate", "--config", str(E4B_CONFIG), "--no-quant", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"] is None and data["base"] == data["estimate"]
    assert data["base"]["params"] == 7_463_013_418
    assert main(["estimate", "--config", str(E4B_CONFIG), "--base-bytes", "1e9"]) == 2
    assert "--base-bytes: 1e+09 is below the text model alone" in capsys.readouterr().err
