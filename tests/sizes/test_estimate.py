"""Sizes from a config alone: the GPTQ v1 storage formula, the shapes of one meta build re-laid out
per plan and GPTQ settings (against a meta build at the plan's widths), and E4B with the card's
preset. (The estimate of a real compressed export is checked in tests/export/.)"""

from __future__ import annotations

import copy
import math

import pytest

from studio.gptq.quantize import QuantizeSettings
from studio.gptq.rules import DEFAULT_DYNAMIC, is_quantized
from studio.modeling import load_text_config, original_widths
from studio.plans.plan import find_preset, load_plan
from studio.sizes import (
    ComponentSize,
    config_from_file,
    estimate,
    estimate_stages,
    gptq_tensor_infos,
    model_shapes,
    tally,
)
from studio.sizes.report import TensorInfo, safetensors_dtype
from tests.conftest import E4B_CONFIG

E4B_LAYERS, E4B_HIDDEN, E4B_FFN = 42, 2560, 10240


@pytest.fixture(scope="module")
def e4b():
    """E4B's config, its shapes and the card's plan."""
    config = config_from_file(E4B_CONFIG)
    return config, model_shapes(config), load_plan(find_preset("gemma4-lite-round2"), load_text_config(E4B_CONFIG))


def meta_build_report(config, widths, quantize, dtype):
    """The independent computation: the model built on the meta device at `widths` with the
    studio's FLAP classes, its modules replaced by GPTQ storage one by one."""
    import torch

    from studio.modeling import mark_config_pruned, model_class_for, model_construction, text_config_of

    config = copy.deepcopy(config)
    if widths is None:
        text_config_of(config).flap_pruned = False
        config.architectures = ["Gemma4ForConditionalGeneration" if hasattr(config, "text_config") else "Gemma4ForCausalLM"]
    else:
        config.architectures = ["Gemma4ForConditionalGeneration" if hasattr(config, "text_config") else "Gemma4ForCausalLM"]
        mark_config_pruned(config, widths)
    with model_construction(), torch.device("meta"):
        model = model_class_for(config)(config)
    model.get_output_embeddings().weight = model.get_input_embeddings().weight  # tied in every config here
    target = safetensors_dtype(dtype)
    infos = [TensorInfo(n, tuple(p.shape), target) for n, p in model.named_parameters()]
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer_name not in module._non_persistent_buffers_set:
                infos.append(TensorInfo(f"{module_name}.{buffer_name}", tuple(buffer.shape), target))
    if quantize is None:
        return tally(infos)
    stored = []
    for info in infos:
        module, _, kind = info.name.rpartition(".")
        if kind == "weight" and len(info.shape) == 2 and is_quantized(module, quantize.dynamic):
            stored += gptq_tensor_infos(module, info.shape[1], info.shape[0], quantize.bits, quantize.group_size)
        else:
            stored.append(info)
    return tally(stored, quantize.bits)


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


# Keeps the last two layers' down_proj in bfloat16: a rule other than the defaults.
CUSTOM_DYNAMIC = {**DEFAULT_DYNAMIC, r"-:.*\.layers\.(?:6|7)\.mlp\.down_proj$": {}}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "quantize",
    [None, QuantizeSettings(), QuantizeSettings(bits=8, group_size=-1), QuantizeSettings(dynamic=CUSTOM_DYNAMIC)],
    ids=["unquantized", "w4g128", "w8", "custom-dynamic"],
)
def test_shapes_re_laid_out_equal_a_meta_build_at_the_widths(demo_model_dir, quantize, dtype):
    """The multimodal demo (towers, PLE, KV sharing), pruned unevenly, one layer kept whole."""
    config = config_from_file(demo_model_dir)
    original = original_widths(load_text_config(demo_model_dir))
    widths = [w // 2 if i % 3 else w for i, w in enumerate(original)]
    shapes = model_shapes(config, dtype)
    for plan in (None, widths):
        assert shapes.report(plan, quantize) == meta_build_report(config, plan, quantize, dtype), plan


def test_e4b_card_plan_equals_a_meta_build(e4b):
    config, shapes, plan = e4b
    for quantize in (None, QuantizeSettings()):
        assert shapes.report(plan.widths, quantize) == meta_build_report(config, plan.widths, quantize, "bfloat16")


def test_custom_rules_keep_their_modules_unquantized(demo_model_dir):
    config = config_from_file(demo_model_dir)
    shapes = model_shapes(config)
    default, custom = shapes.report(None, QuantizeSettings()), shapes.report(None, QuantizeSettings(dynamic=CUSTOM_DYNAMIC))
    hidden = load_text_config(demo_model_dir).hidden_size
    down = [w * hidden for w in original_widths(load_text_config(demo_model_dir))[6:]]
    assert default.component("ffn").quantized_params - custom.component("ffn").quantized_params == sum(down)
    assert custom.params == default.params


def test_widths_must_cover_every_layer(e4b):
    _config, shapes, plan = e4b
    with pytest.raises(ValueError, match="widths: 41 given, the model has 42 decoder layers"):
        shapes.report(plan.widths[:-1])


def test_stages_of_the_card_plan(e4b):
    _config, shapes, plan = e4b
    stages = estimate_stages(shapes, plan.widths, QuantizeSettings(bits=4, group_size=128))
    assert list(stages) == ["original", "pruned", "quantized"]
    original, pruned, quantized = stages.values()
    kept = sum(plan.widths)
    assert pruned.component("ffn").params == 3 * E4B_HIDDEN * kept + E4B_LAYERS * E4B_HIDDEN  # a bias in every layer
    assert 1 - pruned.component("ffn").params / original.component("ffn").params == pytest.approx(46080 / 430080, abs=1e-4)
    # GPTQ bytes of each layer's gate/up (in = hidden, out = width) and down (in = width, out =
    # hidden): packed int4 weight, fp16 scales and packed zeros per group of 128 inputs, int32 g_idx.
    def gptq_bytes(k, n):
        groups = math.ceil(k / 128)
        return k * n // 2 + groups * n * 2 + groups * n // 2 + k * 4

    ffn = sum(2 * gptq_bytes(E4B_HIDDEN, w) + gptq_bytes(w, E4B_HIDDEN) + 2 * E4B_HIDDEN for w in plan.widths)
    assert quantized.component("ffn").bytes == ffn
    down = gptq_bytes(8192, E4B_HIDDEN)
    gate = gptq_bytes(E4B_HIDDEN, 8192)
    assert down < 8192 * E4B_HIDDEN * 2 / 3.5 and gate < E4B_HIDDEN * 8192 * 2 / 3.5
    unquantized = ("embeddings", "ple_embeddings", "ple_projections")
    assert [quantized.component(c) for c in unquantized] == [pruned.component(c) for c in unquantized]
    assert 9.0e9 < quantized.tensor_bytes < 9.9e9  # text model only; the card's 9.9 GB has towers
    assert estimate_stages(shapes, plan.widths).keys() == {"original", "pruned"}


def test_e4b_estimate_with_the_cards_preset(e4b):
    config, _shapes, plan = e4b
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


def test_tower_sizes_are_assumptions(e4b):
    config = e4b[0]
    report = estimate(config, tower_params=1000)
    assert report.component("towers") == ComponentSize(1000, 2000)
    assert report.assumptions == ("vision + audio towers (combined): 1,000 parameters given, stored in bfloat16, not quantized",)
    with pytest.raises(ValueError, match="audio_params: must be a non-negative integer"):
        estimate(config, audio_params=-1)


def test_towers_cannot_be_given_twice(demo_model_dir):
    with pytest.raises(ValueError, match="vision_params: the config already defines the vision tower"):
        estimate(config_from_file(demo_model_dir), vision_params=10)


def test_shapes_are_a_hashable_value(e4b):
    """The model tab keeps them in a Gradio state, which hashes its value on every event."""
    config, shapes, _plan = e4b
    assert hash(shapes) == hash(model_shapes(config)) and shapes == model_shapes(config)
    assert shapes != model_shapes(config, "float32")
