"""Figures and size estimates from config and summaries: real numbers, small payloads."""

from __future__ import annotations

import json

import pytest
import torch

from studio.model_summary import attention_kinds, kv_roles
from studio.modeling import load_text_config, original_widths
from studio.plans.plan import find_preset, load_plan
from studio.plots import (
    figure_payload_bytes,
    gptq_loss_figure,
    score_distribution_figure,
    score_summary,
    size_breakdown_figure,
    widths_figure,
)
from studio.gptq.quantize import ModuleQuantRecord, QuantizeSettings
from studio.sizes import config_from_file, estimate_stages, model_shapes
from studio.ui.context import REFERENCE_CONFIG

LAYERS, WIDTH = 42, 10240


@pytest.fixture(scope="module")
def e4b():
    config = load_text_config(REFERENCE_CONFIG)
    return config, model_shapes(config_from_file(REFERENCE_CONFIG)), load_plan(find_preset("gemma4-lite-round2"), config)


def bytes_by_stage(shapes, plan) -> dict[str, dict[str, int]]:
    """What the plan tab plots: bytes per component, original -> pruned -> pruned + GPTQ W4 g128."""
    stages = estimate_stages(shapes, plan.widths, QuantizeSettings())
    return {stage: report.bytes_by_component() for stage, report in stages.items()}


def test_plots_of_a_42_by_10240_model_ship_well_under_1mb(e4b):
    config, shapes, plan = e4b
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn(WIDTH, generator=generator, dtype=torch.float64) for _ in range(LAYERS)]
    summary = score_summary(scores, plan.widths)
    assert summary[0]["pruned_channels"] == WIDTH - 8192 and summary[4]["pruned"] is None
    assert summary[0]["pruned"]["max"] <= summary[0]["threshold"] == summary[0]["kept"]["min"]
    records = [ModuleQuantRecord(i, m, 1e-3 * (i + 1), 256, 0.01, 0.1) for i in range(LAYERS)
               for m in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    sizes_by_stage = bytes_by_stage(shapes, plan)
    kinds = ["full" if t == "full_attention" else "sliding" for t in config.layer_types]
    figures = [
        score_distribution_figure(summary),
        widths_figure(plan.widths, original_widths(config), kinds, kv_roles(config)),
        gptq_loss_figure(records),
        size_breakdown_figure(sizes_by_stage),
    ]
    sizes = [figure_payload_bytes(f) for f in figures]
    assert sum(sizes) < 100_000, sizes  # raw scores alone would be 42 x 10240 floats (several MB of JSON)
    heatmap = figures[2].data[0]
    assert len(heatmap.y) == 4 and len(heatmap.x) == LAYERS


def test_quality_is_shown_as_differences_from_the_base():
    from studio.plots import quality_figure

    quality = quality_figure({"base": 2088.0, "pruned": 2103.0, "compressed": 2110.5})
    bar = quality.data[0]
    assert list(bar.x) == ["pruned", "compressed"]
    assert list(bar.y) == [2103.0 - 2088.0, 2110.5 - 2088.0]  # the axis spans 0..22.5, not 0..2110
    assert list(bar.text) == ["+15 (+0.72%)", "+22.5 (+1.08%)"]
    assert "perplexity 2103.0000 (base 2088.0000, +15.0000)" in bar.hovertext[0]  # absolute values in the hover
    assert "base 2088" in quality.layout.title.text


def test_quality_without_a_base_zooms_the_axis_around_the_values():
    from studio.plots import quality_figure

    quality = quality_figure({"base": None, "pruned": 12.5, "compressed": 13.25})
    bar = quality.data[0]
    assert list(bar.x) == ["base", "pruned", "compressed"]
    assert list(bar.text) == ["not evaluated", "12.5", "13.25"]
    low, high = quality.layout.yaxis.range
    assert 0 < low < 12.5 and 13.25 < high  # not from 0, where 12.5 and 13.25 would look alike
    assert high - low == pytest.approx((13.25 - 12.5) * 1.5)


def test_kept_width_bars_are_one_layer_wide_and_coloured_by_attention_and_kv_role(e4b):
    config, _shapes, plan = e4b
    kinds, roles = attention_kinds(config), kv_roles(config)
    figure = widths_figure(plan.widths, original_widths(config), kinds, roles)
    kept = [t for t in figure.data if t.name != "original width"]
    assert [t.name for t in kept] == [
        "sliding · own KV", "sliding · stores KV for the tail", "sliding · reuses KV",
        "full · own KV", "full · stores KV for the tail", "full · reuses KV",
    ]
    assert all(t.width == 0.8 for t in figure.data)  # a full-attention bar is as wide as its neighbours
    drawn = sorted(layer for t in kept for layer in t.x)
    assert drawn == list(range(LAYERS))  # each layer once
    for trace in kept:
        kind, _, role = trace.name.partition(" · ")
        for layer, width in zip(trace.x, trace.y):
            assert kinds[layer] == kind and width == plan.widths[layer]
            assert {"own KV": "own", "stores KV for the tail": "stores", "reuses KV": "shared"}[role] == roles[layer]
    assert [t.x for t in kept if t.name == "full · stores KV for the tail"] == [(23,)]


def test_sizes_say_what_was_measured():
    from studio.plots import size_breakdown_figure

    estimated = {"original": {"ffn": 3_000_000, "embeddings": 1_000_000}, "pruned": {"ffn": 2_000_000, "embeddings": 1_000_000}}
    figure = size_breakdown_figure(estimated, measured={"pruned": 3_100_000, "quantized": None})
    measured = [t for t in figure.data if t.name == "measured files"]
    assert len(measured) == 1 and list(measured[0].x) == ["pruned"] and list(measured[0].y) == [3.1]
    totals = next(t for t in figure.data if t.type == "scatter" and t.mode == "text")
    assert list(totals.text) == ["4 MB est.", "3 MB est."]


def _job(name, widths, sizes=None, perplexity=None, gptq=None, measured=None):
    return {"output": name, "original": [512, 512], "widths": widths, "sizes": sizes, "perplexity": perplexity,
            "gptq": gptq, "measured_bytes": measured or {}}


def test_two_jobs_are_compared_on_widths_sizes_quality_and_gptq_loss():
    from studio.plots import compare_jobs_figure, compare_widths_figure

    compare = compare_widths_figure([256, 512], [384, 384], [512, 512], ("a", "b"))
    assert [t.name for t in compare.data] == ["original width", "a", "b"]
    assert list(compare.data[1].y) == [256, 512] and list(compare.data[2].y) == [384, 384]

    a = _job("a", [256, 512], sizes={"pruned": {"ffn": 2_000_000}, "quantized": {"ffn": 600_000}},
             perplexity={"base": 100.0, "pruned": 104.0, "compressed": 106.0},
             gptq=[{"layer": 0, "module": "m", "loss": 1e-2}, {"layer": 0, "module": "n", "loss": 1e-4},
                   {"layer": 1, "module": "m", "loss": 1e-3}],
             measured={"pruned": 2_100_000})
    b = _job("b", [384, 384], sizes={"pruned": {"ffn": 1_500_000}}, perplexity={"base": 100.0, "pruned": 103.0, "compressed": None})
    figure = compare_jobs_figure(a, b)
    by_name = {t.name: t for t in figure.data}
    widths = [t for t in figure.data if t.type == "bar" and t.xaxis in (None, "x")]
    assert [(t.name, list(t.y)) for t in widths] == [("a", [256, 512]), ("b", [384, 384])]
    sizes = [t for t in figure.data if t.type == "bar" and t.xaxis == "x2"]
    assert [list(t.y) for t in sizes] == [[2.0, 0.6], [1.5]]
    assert list(by_name["a measured"].y) == [2.1]
    quality = [t for t in figure.data if t.xaxis == "x3"]
    assert [list(t.y) for t in quality] == [[4.0, 6.0], [3.0, 0]]
    assert quality[1].text[1] == "not evaluated"
    gptq = by_name["a GPTQ"]
    assert list(gptq.x) == [0, 1] and list(gptq.y) == pytest.approx([-3.0, -3.0])  # mean of log10(1e-2), log10(1e-4)
    assert "b GPTQ" not in by_name  # b did not quantize


def test_a_comparison_panel_without_data_says_so():
    from studio.plots import compare_jobs_figure

    figure = compare_jobs_figure(_job("a", [256, 512]), _job("b", None))
    notes = [t.text[0] for t in figure.data if t.type == "scatter" and t.mode == "text"]
    assert notes == [
        "widths: both jobs need a finished prune stage of the same model",
        "sizes: neither job has a pruned model yet",
        "quality: neither job evaluated perplexity",
        "GPTQ: neither job quantized",
    ]


def test_the_figures_built_without_plotly_validation_are_valid(e4b):
    """widths_figure and size_breakdown_figure skip plotly.py's checks for speed: check them here."""
    import plotly.graph_objects as go

    config, shapes, plan = e4b
    figures = [
        widths_figure(plan.widths, original_widths(config), attention_kinds(config), kv_roles(config)),
        size_breakdown_figure(bytes_by_stage(shapes, plan), measured={"pruned": 14_000_000_000}),
    ]
    for figure in figures:
        validated = go.Figure(figure.to_dict())  # raises ValueError on any invalid property or value
        built, checked = json.loads(figure.to_json()), json.loads(validated.to_json())
        for layout in (built["layout"], checked["layout"]):
            layout.pop("template")  # plotly.py fills an empty template with a stub; both mean "none"
        assert built == checked  # nothing was left for plotly.py to coerce (a bare string title, say)
    assert json.loads(figures[0].to_json())["layout"]["title"] == {"text": "Kept FFN width per layer"}
    assert json.loads(figures[0].to_json())["layout"]["xaxis"]["title"] == {"text": "layer"}


TASKS_A = {
    "base": {"fact_recall": {"acc": 0.75, "acc_stderr": 0.25, "loglikelihood": -3.5, "loglikelihood_stderr": 0.5, "samples": 4}},
    "pruned": {"fact_recall": {"acc": 0.5, "acc_stderr": 0.29, "loglikelihood": -4.25, "loglikelihood_stderr": 0.75, "samples": 4}},
}


def test_quality_metrics_gather_perplexity_and_every_task_metric_by_stage():
    from studio.plots import quality_metrics

    metrics = quality_metrics({"base": 100.0, "pruned": 104.0, "compressed": None}, TASKS_A)
    assert metrics == {
        "perplexity": {"base": (100.0, None), "pruned": (104.0, None)},
        "fact_recall acc": {"base": (0.75, 0.25), "pruned": (0.5, 0.29)},
        "fact_recall loglikelihood": {"base": (-3.5, 0.5), "pruned": (-4.25, 0.75)},
    }
    assert quality_metrics(None, None) == {}


def test_two_jobs_quality_is_compared_per_metric_and_stage():
    from studio.plots import quality_metrics, quality_metrics_figure

    a = quality_metrics({"base": 100.0, "pruned": 104.0, "compressed": 106.0}, TASKS_A)
    b = quality_metrics({"base": 100.0, "pruned": 103.0, "compressed": None},
                        {"pruned": {"fact_recall": {"acc": 0.25, "acc_stderr": 0.25, "loglikelihood": -5.0, "samples": 4}}})
    figure = quality_metrics_figure([("a", a), ("b", b)], "a vs b")
    titles = [t.text for t in figure.layout.annotations]
    assert titles == ["perplexity (lower is better)", "fact_recall acc (higher is better)",
                      "fact_recall loglikelihood (higher is better)"]
    bars = [(t.name, t.xaxis, list(t.x), list(t.y)) for t in figure.data]
    assert bars == [
        ("a", "x", ["base", "pruned", "compressed"], [100.0, 104.0, 106.0]),
        ("b", "x", ["base", "pruned"], [100.0, 103.0]),
        ("a", "x2", ["base", "pruned"], [0.75, 0.5]),
        ("b", "x2", ["pruned"], [0.25]),
        ("a", "x3", ["base", "pruned"], [-3.5, -4.25]),
        ("b", "x3", ["pruned"], [-5.0]),
    ]
    assert list(figure.data[2].error_y.array) == [0.25, 0.29]  # lm-eval's standard errors as error bars
    assert figure.data[0].error_y.array is None  # perplexity has none
    assert figure.data[5].error_y.array is None  # b's log-likelihood came without one
    low, high = figure.layout.yaxis.range  # perplexity: zoomed around the values, not from 0
    assert 0 < low < 100.0 and 106.0 < high
    assert figure.layout.yaxis2.range is None  # accuracy keeps 0 on its axis
    assert [t.showlegend for t in figure.data][:2] == [True, True]
    with pytest.raises(ValueError, match="quality figure: no perplexity or task scores to show"):
        quality_metrics_figure([("a", {}), ("b", {})], "nothing")
