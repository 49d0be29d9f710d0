"""Figures and size estimates from config and summaries: real numbers, small payloads."""

from __future__ import annotations

import pytest
import torch

from studio.model_summary import QuantSettings, estimate_sizes, parameter_shapes, structure_summary
from studio.modeling import load_text_config, original_widths
from studio.plan import find_preset, load_plan
from studio.plots import (
    figure_payload_bytes,
    gptq_loss_figure,
    score_distribution_figure,
    score_summary,
    size_breakdown_figure,
    widths_figure,
)
from studio.quantize import ModuleQuantRecord
from studio.ui.context import REFERENCE_CONFIG

HIDDEN, LAYERS, WIDTH = 2560, 42, 10240


@pytest.fixture(scope="module")
def e4b():
    config = load_text_config(REFERENCE_CONFIG)
    return config, parameter_shapes(REFERENCE_CONFIG), load_plan(find_preset("gemma4-lite-round2"), config)


def test_structure_summary_of_e4b(e4b):
    config, shapes, _plan = e4b
    summary = structure_summary(config, shapes)
    assert summary["layers"] == LAYERS and summary["attention"] == {"sliding": 35, "full": 7}
    assert summary["kv_shared_layers"] == list(range(24, 42))
    assert summary["params_by_component"]["ffn"] == 3 * HIDDEN * WIDTH * LAYERS
    assert summary["params_by_component"]["embeddings"] == 262144 * HIDDEN


def test_size_estimate_of_the_card_plan(e4b):
    config, shapes, plan = e4b
    estimate = estimate_sizes(shapes, plan.widths, plan.original, QuantSettings(bits=4, group_size=128))
    kept = sum(plan.widths)
    assert estimate.params["pruned"]["ffn"] == 3 * HIDDEN * kept + LAYERS * HIDDEN  # a bias in every layer
    assert estimate.ffn_params_removed == pytest.approx(46080 / 430080, abs=1e-4)
    # GPTQ bytes of one pruned layer's down_proj (in = 8192, out = 2560): packed weight, fp16 scales,
    # packed zeros, int32 g_idx.
    down = 8192 * HIDDEN // 2 + 64 * HIDDEN * 2 + 64 * HIDDEN // 2 + 8192 * 4
    gate = HIDDEN * 8192 // 2 + 20 * 8192 * 2 + 20 * 8192 // 2 + HIDDEN * 4
    assert down < 8192 * HIDDEN * 2 / 3.5 and gate < HIDDEN * 8192 * 2 / 3.5
    unquantized = estimate.bytes["pruned"]["embeddings"] + estimate.bytes["pruned"]["per-layer embeddings (PLE)"]
    assert estimate.bytes["quantized"]["embeddings"] + estimate.bytes["quantized"]["per-layer embeddings (PLE)"] == unquantized
    assert 9.0e9 < estimate.total_bytes("quantized") < 9.9e9  # text model only; the card's 9.9 GB has towers


def test_estimate_agrees_with_studio_sizes(e4b):
    from studio import sizes
    from studio.quantize import QuantizeSettings

    config, shapes, plan = e4b
    mine = estimate_sizes(shapes, plan.widths, plan.original, QuantSettings(bits=4, group_size=128))
    for stage, stage_plan, quantize in (("original", None, None), ("pruned", plan, None), ("quantized", plan, QuantizeSettings())):
        report = sizes.estimate(config, stage_plan, quantize)
        assert mine.total_params(stage) == report.params, stage
        assert mine.total_bytes(stage) == report.tensor_bytes, stage
        assert mine.params[stage]["ffn"] == report.components["ffn"].params, stage


def test_plots_of_a_42_by_10240_model_ship_well_under_1mb(e4b):
    config, shapes, plan = e4b
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn(WIDTH, generator=generator, dtype=torch.float64) for _ in range(LAYERS)]
    summary = score_summary(scores, plan.widths)
    assert summary[0]["pruned_channels"] == WIDTH - 8192 and summary[4]["pruned"] is None
    assert summary[0]["pruned"]["max"] <= summary[0]["threshold"] == summary[0]["kept"]["min"]
    records = [ModuleQuantRecord(i, m, 1e-3 * (i + 1), 256, 0.01, 0.1) for i in range(LAYERS)
               for m in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    estimate = estimate_sizes(shapes, plan.widths, plan.original)
    kinds = ["full" if t == "full_attention" else "sliding" for t in config.layer_types]
    figures = [
        score_distribution_figure(summary),
        widths_figure(plan.widths, original_widths(config), kinds, [i >= 24 for i in range(LAYERS)]),
        gptq_loss_figure(records),
        size_breakdown_figure(estimate.bytes),
    ]
    sizes = [figure_payload_bytes(f) for f in figures]
    assert sum(sizes) < 100_000, sizes  # raw scores alone would be 42 x 10240 floats (several MB of JSON)
    heatmap = figures[2].data[0]
    assert len(heatmap.y) == 4 and len(heatmap.x) == LAYERS


def test_quality_and_comparison_figures():
    from studio.plots import compare_widths_figure, quality_figure

    quality = quality_figure({"base": None, "pruned": 12.5, "compressed": 13.25})
    bar = quality.data[0]
    assert list(bar.x) == ["base", "pruned", "compressed"]
    assert list(bar.text) == ["not evaluated", "12.500", "13.250"]
    compare = compare_widths_figure([256, 512], [384, 384], [512, 512], ("a", "b"))
    assert [t.name for t in compare.data] == ["original", "a", "b"]
    assert list(compare.data[1].y) == [256, 512] and list(compare.data[2].y) == [384, 384]
