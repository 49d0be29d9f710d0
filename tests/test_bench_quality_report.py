"""The quality benchmark's report logic (benchmarks/bench_quality.py): pooling runs from several JSON
results, and the list of cells that beat the card's recipe beyond noise."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up by name while the script runs
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(sys.modules, "bench_quality", module)
    spec.loader.exec_module(module)
    yield module
    monkeypatch.undo()


def runs(method, compensation, ppls, recalls, mode="one-shot", plan="uniform", ratio=0.5):
    return [{"method": method, "compensation": compensation, "mode": mode, "plan": plan, "ratio": ratio,
             "seed": seed, "ppl": ppl, "recall": recall}
            for seed, (ppl, recall) in enumerate(zip(ppls, recalls))]


def result(rows, ratios, quant=()):
    return {"runs": rows, "quant": list(quant), "plans": {}, "settings": {"ratios": ratios},
            "load_average": [1.0, 1.0, 1.0]}


def test_merge_keeps_a_run_repeated_across_results_once_and_each_ratio_once(bench):
    card = runs("wifv", "bias", [100, 101, 102], [0.10, 0.11, 0.12])
    repeated = [dict(r, ppl=r["ppl"] + 50) for r in card]  # the same cells and seeds, other numbers
    extra = runs("obs", "refit", [99, 100, 101], [0.2, 0.2, 0.2])
    quant = [{"model": "wifv/bias/one-shot", "seed": 0}]
    merged = bench.merge([result(card, [0.5]), result(repeated + extra, [0.2, 0.5], quant)])
    assert len(merged["runs"]) == 6
    assert [r["ppl"] for r in merged["runs"][:3]] == [100, 101, 102]  # the first result's
    assert merged["settings"]["ratios"] == [0.5, 0.2]
    assert merged["quant_ratio"] == 0.2  # the first ratio of the run that quantized


def test_against_card_lists_only_cells_better_beyond_noise_and_worse_nowhere(bench):
    grid = bench.Grid(
        runs("wifv", "bias", [100, 101, 102], [0.10, 0.11, 0.12])        # the card's recipe
        + runs("obs", "refit", [100, 101, 102], [0.20, 0.21, 0.22])      # recall +0.10: beyond noise
        + runs("random", "none", [130, 131, 132], [0.30, 0.31, 0.32])    # recall up, perplexity up beyond noise
        + runs("wifn", "none", [100, 101, 102], [0.11, 0.12, 0.13])      # recall +0.01: within noise
        + runs("ifv", "none", [100], [0.5])                              # one seed: no noise measured
    )
    lines = bench.against_card(grid)
    assert lines[0].startswith("At 50%, the card's recipe (WIFV, bias, one-shot, uniform): perplexity 101.00 +- 1.00")
    assert len(lines) == 2 and lines[1].startswith("  - obs/refit/one-shot/uniform:")
    noise = 2 * math.hypot(0.01, 0.01)  # both recall stds are 0.01
    assert f"better by 0.100, 2 x combined std {noise:.3f}: beyond noise" in lines[1]
    assert "perplexity 101.00 +- 1.00 (better by 0.00, 2 x combined std 2.83: within noise)" in lines[1]


def test_against_card_names_the_cells_past_the_first_few(bench):
    grid = bench.Grid(runs("wifv", "bias", [100, 101, 102], [0.10, 0.11, 0.12])
                      + runs("obs", "refit", [100, 101, 102], [0.30, 0.31, 0.32])
                      + runs("obs", "none", [100, 101, 102], [0.20, 0.21, 0.22])
                      + runs("wifv", "refit", [100, 101, 102], [0.25, 0.26, 0.27]))
    lines = bench.against_card(grid, shown=1)
    assert lines[1].startswith("  - obs/refit/one-shot/uniform: perplexity")
    assert lines[2:] == ["  - 2 more, by recall: wifv/refit/one-shot/uniform, obs/none/one-shot/uniform."]


def test_against_card_puts_cells_better_on_both_metrics_first(bench):
    grid = bench.Grid(runs("wifv", "bias", [100, 101, 102], [0.10, 0.11, 0.12])
                      + runs("obs", "refit", [100, 101, 102], [0.30, 0.31, 0.32])          # recall only
                      + runs("obs", "refit damp 0.5", [90, 91, 92], [0.20, 0.21, 0.22]))  # both
    lines = bench.against_card(grid)
    assert lines[1].startswith("  - obs/refit damp 0.5/one-shot/uniform: perplexity 91.00 +- 1.00 (better by 10.00")
    assert lines[1].endswith(". **Better on both.**")
    assert lines[2].startswith("  - obs/refit/one-shot/uniform:") and lines[2].endswith("beyond noise).")


def test_against_card_says_so_when_nothing_beats_it(bench):
    grid = bench.Grid(runs("wifv", "bias", [100, 101, 102], [0.10, 0.11, 0.12], ratio=0.2)
                      + runs("random", "bias", [120, 121, 122], [0.10, 0.11, 0.12], ratio=0.2))
    assert bench.against_card(grid) == [
        "At 20%, the card's recipe (WIFV, bias, one-shot, uniform): perplexity 101.00 +- 1.00, recall 0.110 +- 0.010.",
        "  - nothing in the grid beats it beyond noise without losing beyond noise on the other metric.",
    ]
