"""What compression costs in quality: channel scores x compensation x calibration mode, GPTQ against RTN.

On the small trained bench model (`studio.bench_model`), calibrated on the first half of WikiText-2
raw test and evaluated on its second half (neither in its training corpus), this measures two
things per model: held-out perplexity and fact recall on held-out phrasings (`studio.eval.facts`):
- the dense model, and the same architecture with random weights;
- FFN pruning at each ratio: channel scores (every FLAP metric the library registers, weight
  magnitude, random channels) x compensation (every one the library registers: bias, refit, none)
  x calibration (one-shot; sequential: each layer calibrated on the pruned layers before it), on
  the uniform plan and, with `--full`, on the widths FLAP suggests from its WIFV scores;
- GPTQ W4 g128 (GPTQModel, the card's settings) against round-to-nearest on the same grid, on the
  dense model and the models of the first ratio given by `--quant-models`;
- the cost of each stage (CPU and wall time, peak resident memory) as a ratio to one plain forward
  pass over the calibration batch.
Every pruned or quantized number is a mean +- standard deviation over `--seeds` calibration seeds;
seed i draws the calibration samples with seed i and, for random channels, the channels with seed i.

The default run is a subset that fits a shared 2-core machine: uniform plans, every score and
compensation one-shot, sequential for WIFV and random. `--full` runs the rest (sequential for every
score, FLAP-suggested widths); `--plans`, `--modes` and `--sequential-methods` pick any part of it.
Results go to a JSON file (`--json`); `--merge A.json B.json ...` renders several runs (say one per
ratio, or one per part of the grid, run side by side) into one report.

    python benchmarks/bench_quality.py                      # the subset in docs/results.md
    python benchmarks/bench_quality.py --ratios 0.5 --methods random --compensations none --no-quant \\
        --out /tmp/r.md                                     # quick look: does random pruning cost?
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.bench_model import HELD_OUT_QUERIES, RECIPE_FILE, TRAINING_QUERIES, bench_texts, ensure_bench_model  # noqa: E402
from studio.calibration import OFFLINE_EVALUATION_TEXT, leading_bos, pack_samples, tokenize_stream  # noqa: E402
from studio.eval import evaluate_perplexity_ids  # noqa: E402
from studio.eval.baselines import load_gptq_weights_, magnitude_scores, random_scores, rtn_quantize_model_  # noqa: E402
from studio.eval.facts import fact_recall, read_queries  # noqa: E402
from studio.eval.perplexity import tokenize_text  # noqa: E402
from studio.flap import COMPENSATIONS, METRICS, FlapSettings, collect_statistics, model_scores  # noqa: E402
from studio.flap.layerwise import measure_layer  # noqa: E402
from studio.flap.pipeline import apply_plan, suggested_plan  # noqa: E402
from studio.flap.prune import prune_layer  # noqa: E402
from studio.flap.stats import walk_layers  # noqa: E402
from studio.modeling import load_model, mark_pruned, text_config_of  # noqa: E402
from studio.plans.plan import uniform_plan  # noqa: E402

MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
GPTQ_STAGE = "GPTQ W4 (GPTQModel)"
FORWARD_STAGE = "plain forward pass"
NOTES_MARKER = "<!-- notes below are written by hand and kept by bench_quality.py -->"
BASELINE_SCORES = ("magnitude", "random")
MODES = ("one-shot", "sequential")
PLANS = ("uniform", "flap-suggested")
# The subset's sequential runs: FLAP's default score and the floor.
DEFAULT_SEQUENTIAL = ("wifv", "random")


def all_methods() -> tuple[str, ...]:
    """Channel scores: the library's FLAP metrics (so a new one, e.g. OBS, joins by itself), then the baselines."""
    return tuple(METRICS) + BASELINE_SCORES


# ---------------------------------------------------------------------------------------------
# Stage costs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class StageCost:
    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_delta: int = 0
    runs: int = 0


@dataclass
class CostLog:
    stages: dict[str, StageCost] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, name: str):
        """Time the block and sample this process's resident memory every 5 ms."""
        start_rss = _rss_bytes()
        peak = [start_rss]
        done = threading.Event()

        def sample():
            while not done.wait(0.005):
                peak[0] = max(peak[0], _rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            peak[0] = max(peak[0], _rss_bytes())
            stage = self.stages.setdefault(name, StageCost(name))
            stage.wall_s += time.perf_counter() - wall
            stage.cpu_s += time.process_time() - cpu
            stage.peak_rss_delta = max(stage.peak_rss_delta, peak[0] - start_rss)
            stage.runs += 1


# ---------------------------------------------------------------------------------------------
# Pruning


def baseline_scores(method: str, dense, seed: int) -> list[torch.Tensor]:
    if method == "magnitude":
        return magnitude_scores(dense)
    return random_scores(dense, seed)


@torch.no_grad()
def prune_sequential_fixed(model, calib_ids, widths, scores, compensation, settings: FlapSettings) -> None:
    """Sequential calibration with channels chosen up front (the baselines' scores do not depend on
    activations): each layer's mean (bias) or Gram matrix (refit) is measured on the pruned prefix.

    `studio.flap.layerwise.prune_while_calibrating` scores each layer on the prefix instead, which
    is what a FLAP metric does sequentially; this is the same walk with fixed channels.
    """

    def visit(index, layer, inputs):
        measured = measure_layer(layer, inputs, compensation == "refit", advance=False)
        prune_layer(layer, scores[index], measured.moments.mean, widths[index], compensation, measured.gram,
                    settings.refit_damp)
        return inputs.advance(layer)

    walk_layers(model, calib_ids, settings.batch_size, None, visit)
    mark_pruned(model, list(widths))


def prune_copy(dense, method, compensation, mode, widths, stats, scores, calib_ids, batch_size,
               refit_damp=FlapSettings.refit_damp):
    """A pruned copy of `dense`. `scores` are the one-shot scores of `method`."""
    model = copy.deepcopy(dense)
    flap_metric = method in METRICS
    settings = FlapSettings(
        metric=method if flap_metric else "wifv", compensation=compensation, sequential=mode == "sequential",
        batch_size=batch_size, refit_damp=refit_damp,
    )
    if mode == "sequential" and not flap_metric:
        prune_sequential_fixed(model, calib_ids, widths, scores, compensation, settings)
    else:
        apply_plan(model, widths, settings, stats, None if settings.sequential else scores, calib_ids)
    return model


def compensation_label(compensation: str, refit_damp: float) -> str:
    """The grid's compensation column: the library's name, with the refit's ridge weight when it is
    not the default (the OBS metric damps its Gram matrix by the same weight)."""
    if compensation == "refit" and refit_damp != FlapSettings.refit_damp:
        return f"refit damp {refit_damp:g}"
    return compensation


def stage_name(compensation: str, mode: str) -> str:
    if mode == "sequential":
        return f"prune, sequential pass ({compensation})"
    if compensation == "refit":
        return "prune, refit pass (Gram matrices + solve)"
    return f"prune, slice ({compensation})"


# ---------------------------------------------------------------------------------------------
# Runs


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _random_init_model(model_dir: Path, seed: int):
    """The bench architecture with fresh random weights (what training started from)."""
    from transformers import AutoConfig

    from studio.modeling import model_class_for

    config = AutoConfig.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class_for(config)(config).eval()


def _evenly(items: list, count: int) -> list:
    """`count` of `items` drawn without replacement by a fixed seed, in file order (all of them when
    count is 0 or larger). Not every k-th item: the files cycle through relations and templates, so a
    stride would pick one template only."""
    if not count or count >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(0).sample(range(len(items)), count))]


def _facts_text(info: dict) -> str:
    """The facts' training text of the bench model `info` describes (its recipe regenerates it)."""
    from studio.eval.facts import FactSet

    if "recipe" not in info:
        raise SystemExit("--calib-facts: needs a bench model (its recipe regenerates the facts text)")
    return FactSet(entities=info["recipe"]["fact_entities"], seed=info["recipe"]["seed"]).training_text()


def run(args) -> dict:
    from transformers import AutoTokenizer

    model_dir = Path(args.model or ensure_bench_model(log=_log))
    recipe_file = model_dir / RECIPE_FILE
    info = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bos = leading_bos(tokenizer)
    calib_text, eval_text = bench_texts(args.text)
    eval_ids = tokenize_text(tokenizer, eval_text, args.max_tokens)
    calib_stream = tokenize_stream(tokenizer, calib_text)
    held_out = _evenly(read_queries(model_dir / HELD_OUT_QUERIES), args.recall_queries)
    trained = _evenly(read_queries(model_dir / TRAINING_QUERIES), args.recall_queries)
    costs = CostLog()
    out = {
        "info": {**info, "model_dir": str(model_dir)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "eval_tokens": len(eval_ids), "calibration_tokens_available": len(calib_stream),
        "recall_queries": len(held_out), "runs": [], "quant": [], "plans": {}, "threads": torch.get_num_threads(),
    }

    def measure(model) -> dict:
        with costs.measure("perplexity evaluation"):
            ppl = evaluate_perplexity_ids(model, eval_ids, seqlen=args.seqlen, batch_size=args.batch_size,
                                          bos_token_id=bos).ppl
        with costs.measure("fact recall evaluation"):
            recall = fact_recall(model, tokenizer, held_out, batch_size=args.batch_size * 4)
        return {"ppl": ppl, "recall": recall}

    # In-domain calibration: a share of the samples cut from the facts' training text (the knowledge
    # recall measures), the rest from the calibration half.
    fact_samples = round(args.calib_samples * args.calib_facts)
    facts_stream = tokenize_stream(tokenizer, _facts_text(info)) if fact_samples else None
    out["calibration_fact_samples"] = fact_samples

    def calibration(seed: int) -> torch.Tensor:
        ids = pack_samples(calib_stream, args.calib_samples - fact_samples, args.calib_seqlen, seed, bos,
                           source="calibration half")
        if not fact_samples:
            return ids
        facts = pack_samples(facts_stream, fact_samples, args.calib_seqlen, seed, bos, source="facts training text")
        return torch.cat([ids, facts])

    dense = load_model(model_dir)
    text_config = text_config_of(dense.config)
    with torch.no_grad():
        ids = calibration(0)
        for measured in (False, True):  # the first pass warms up kernels and allocator
            with costs.measure(FORWARD_STAGE) if measured else contextlib.nullcontext():
                for start in range(0, len(ids), args.calib_batch_size):
                    dense(input_ids=ids[start : start + args.calib_batch_size], use_cache=False)
    out["dense"] = measure(dense)
    out["dense"]["recall_training_templates"] = fact_recall(dense, tokenizer, trained, batch_size=args.batch_size * 4)
    out["random_init"] = measure(_random_init_model(model_dir, 0))
    _log(f"dense {out['dense']}, random init {out['random_init']}")

    methods = args.methods or all_methods()
    sequential = methods if args.full else [m for m in methods if m in args.sequential_methods]
    kinds = PLANS if args.full else args.plans
    modes = MODES if args.full else args.modes
    quant_models = {}
    for seed in range(args.seeds):
        calib_ids = calibration(seed)
        with costs.measure("FLAP statistics (calibration forward)"):
            stats = collect_statistics(dense, calib_ids, batch_size=args.calib_batch_size)
        scores = {}
        for method in methods:
            with costs.measure("channel scores"):
                scores[method] = (model_scores(dense, stats, method) if method in METRICS
                                  else baseline_scores(method, dense, seed))
        for ratio in args.ratios:
            for kind in kinds:
                if kind == "uniform":
                    widths = uniform_plan(text_config, ratio).widths
                else:
                    wifv = scores.get("wifv") or model_scores(dense, stats, "wifv")
                    widths = suggested_plan(wifv, text_config, ratio, max_ratio=args.max_layer_ratio).widths
                out["plans"].setdefault(f"{kind} {ratio:g}", []).append(widths)
                for method in methods:
                    for mode in modes:
                        if mode == "sequential" and method not in sequential:
                            continue
                        for compensation, damp in ((c, d) for c in args.compensations
                                                   for d in (args.refit_damps if c == "refit" else [FlapSettings.refit_damp])):
                            if mode == "sequential" and method not in METRICS and compensation == "none":
                                continue  # fixed channels and nothing measured: the one-shot model again
                            label = compensation_label(compensation, damp)
                            with costs.measure(stage_name(compensation, mode)):
                                model = prune_copy(dense, method, compensation, mode, widths, stats, scores[method],
                                                   calib_ids, args.calib_batch_size, damp)
                            row = {"method": method, "compensation": label, "mode": mode, "plan": kind,
                                   "ratio": ratio, "seed": seed, **measure(model)}
                            out["runs"].append(row)
                            save_partial(out, costs, args.json)
                            _log(f"seed {seed} {kind} {ratio:g} {method} {label} {mode}: "
                                 f"ppl {row['ppl']:.2f} recall {row['recall']:.3f}")
                            key = f"{method}/{label}/{mode}"
                            if (not args.no_quant and kind == "uniform" and ratio == args.ratios[0]
                                    and key in args.quant_models):
                                quant_models[key] = model
                            del model
        if not args.no_quant:
            quantize_all(args, out, {"dense": dense, **quant_models}, calib_ids, seed, tokenizer, measure, costs)
        quant_models.clear()
    save_partial(out, costs, None)
    return out


def save_partial(out: dict, costs: CostLog, path: Path | None) -> None:
    """Bring the costs and load up to date in `out`, and write it to `path` (so that a run cut short keeps its rows)."""
    out["costs"] = {name: asdict(stage) for name, stage in costs.stages.items()}
    out["load_average"] = os.getloadavg()
    if path is not None:
        path.write_text(json.dumps(out, indent=1) + "\n")


def quantize_all(args, out, candidates, calib_ids, seed, tokenizer, measure, costs) -> None:
    from studio.calibration import CalibrationSpec
    from studio.gptq.quantize import QuantizeSettings, load_quantized, quantize_checkpoint

    # The card's settings (W4, sym, desc_act, damp 0.01) at the chosen group size; the ids are given.
    spec = CalibrationSpec(source="calibration half", samples=args.calib_samples, seqlen=args.calib_seqlen, seed=seed)
    settings = QuantizeSettings(dtype="float32", calibration=spec, group_size=args.group_size)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as work:
        work = Path(work)
        for key, model in candidates.items():
            source = work / f"{key.replace('/', '-')}-fp32"
            model.save_pretrained(source)
            tokenizer.save_pretrained(source)
            with costs.measure(GPTQ_STAGE):
                quantize_checkpoint(source, work / f"{source.name}-gptq", calib_ids, settings, device="cpu")
            # float16 keeps the scales' precision better than bfloat16; weights are copied into float32.
            quantized = load_quantized(work / f"{source.name}-gptq", dtype=torch.float16)
            gptq_model = load_model(source)
            load_gptq_weights_(gptq_model, quantized)
            rtn_model = load_model(source)
            with costs.measure("RTN W4"):
                rtn_quantize_model_(rtn_model, group_size=args.group_size)
            row = {"model": key, "seed": seed, "fp32": measure(model), "gptq": measure(gptq_model),
                   "rtn": measure(rtn_model)}
            out["quant"].append(row)
            _log(f"quant seed {seed} {key}: {row}")
            del quantized, gptq_model, rtn_model


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))

    def fmt(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} +- {self.std:.{digits}f}"


def beyond_noise(a: Stat, b: Stat) -> bool:
    """Whether |a - b| exceeds twice their combined standard deviation, sqrt(std_a^2 + std_b^2)."""
    return abs(a.mean - b.mean) > 2 * math.hypot(a.std, b.std)


def compare(name_a: str, a: Stat, name_b: str, b: Stat, lower_is_better: bool, digits: int = 2) -> str:
    """One "A beats B" sentence with its noise verdict."""
    gap, noise = abs(a.mean - b.mean), 2 * math.hypot(a.std, b.std)
    numbers = f"{name_a} {a.fmt(digits)} vs {name_b} {b.fmt(digits)}"
    if round(gap, digits) == 0:
        return f"{name_a} and {name_b} tie ({numbers})"
    better = a.mean < b.mean if lower_is_better else a.mean > b.mean
    winner, loser = (name_a, name_b) if better else (name_b, name_a)
    verdict = "beyond noise" if gap > noise else "within noise"
    return f"{winner} beats {loser} ({numbers}; gap {gap:.{digits}f}, 2 x combined std {noise:.{digits}f}: {verdict})"


class Grid:
    """The runs of one or more JSON results, looked up by (method, compensation, mode, plan, ratio)."""

    def __init__(self, runs: list[dict]):
        self.values: dict[tuple, dict[str, list[float]]] = {}
        for r in runs:
            cell = self.values.setdefault((r["method"], r["compensation"], r["mode"], r["plan"], r["ratio"]),
                                          {"ppl": [], "recall": []})
            cell["ppl"].append(r["ppl"])
            cell["recall"].append(r["recall"])

    def get(self, method, compensation, mode, plan, ratio, metric) -> Stat | None:
        cell = self.values.get((method, compensation, mode, plan, ratio))
        return Stat.of(cell[metric]) if cell else None

    def keys(self, position: int) -> list:
        seen = []
        for key in self.values:
            if key[position] not in seen:
                seen.append(key[position])
        return seen


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def discrimination(merged: dict, grid: Grid) -> list[str]:
    """Issue 13's bar: random 50% pruning (no compensation, one-shot, uniform) must cost >= 30% of the
    recall or >= 15% of the perplexity."""
    dense = merged["dense"]
    ppl = grid.get("random", "none", "one-shot", "uniform", 0.5, "ppl")
    recall = grid.get("random", "none", "one-shot", "uniform", 0.5, "recall")
    if ppl is None:
        return ["Random 50% pruning without compensation was not run: the discrimination check is missing."]
    recall_cost = 1 - recall.mean / dense["recall"] if dense["recall"] else float("nan")
    ppl_cost = ppl.mean / dense["ppl"] - 1
    passed = recall_cost >= 0.30 or ppl_cost >= 0.15
    return [
        f"Random channels, 50% of the FFN, no compensation (uniform, {recall.n} seeds): held-out recall "
        f"{recall.fmt(3)} against dense {dense['recall']:.3f} (costs {recall_cost:.0%} of it), perplexity "
        f"{ppl.fmt()} against dense {dense['ppl']:.2f} (+{ppl_cost:.0%}). The bar (>= 30% of the recall or "
        f">= 15% of the perplexity) is **{'met' if passed else 'NOT met'}**."
    ]


def findings(grid: Grid) -> list[str]:
    """Issue 13's expectations, each with its noise verdict."""
    out = []
    ratios = sorted(grid.keys(4))
    for ratio in [r for r in ratios if r >= 0.5] or ratios[-1:]:
        for metric, (what, lower, digits) in METRIC_NAMES.items():

            def versus(title, which, name_a, cell_a, name_b, cell_b):
                """One sentence comparing two uniform cells of this ratio, when both were run."""
                a, b = (grid.get(*cell, "uniform", ratio, metric) for cell in (cell_a, cell_b))
                if a and b:
                    out.append(f"{title}, {ratio:.0%}, {which}, {what}: "
                               + compare(name_a, a, name_b, b, lower, digits) + ".")

            for comp in grid.keys(1):
                versus("FLAP selection vs random", f"{comp}, one-shot",
                       "WIFV", ("wifv", comp, "one-shot"), "random", ("random", comp, "one-shot"))
            for method in ("wifv", "random"):
                for mode in grid.keys(2):
                    versus("Refit vs bias", f"{method}, {mode}",
                           "refit", (method, "refit", mode), "bias", (method, "bias", mode))
            for method in ("wifv", "random"):
                for comp in grid.keys(1):
                    versus("Sequential vs one-shot", f"{method}, {comp}",
                           "sequential", (method, comp, "sequential"), "one-shot", (method, comp, "one-shot"))
    for ratio in ratios:
        for method in grid.keys(0):
            for mode in grid.keys(2):
                for metric in ("ppl", "recall"):
                    bias, none = (grid.get(method, c, mode, "uniform", ratio, metric) for c in ("bias", "none"))
                    if bias and none:
                        digits = 2 if metric == "ppl" else 3
                        change = bias.mean - none.mean
                        helps = change < 0 if metric == "ppl" else change > 0
                        effect = "changes nothing" if round(change, digits) == 0 else "helps" if helps else "hurts"
                        noise = 2 * math.hypot(bias.std, none.std)
                        out.append(
                            f"Bias vs none, {ratio:.0%}, {method}, {mode}, {'perplexity' if metric == 'ppl' else 'recall'}: "
                            f"the bias {effect} by {abs(change):.{digits}f} "
                            f"({bias.fmt(digits)} with, {none.fmt(digits)} without; 2 x combined std {noise:.{digits}f}: "
                            f"{'beyond noise' if abs(change) > noise else 'within noise'})."
                        )
    return out


# The card's recipe: FLAP's WIFV channels, bias compensation, one-shot statistics, the plan's widths
# (uniform here, so every ratio has one).
CARD_CELL = ("wifv", "bias", "one-shot", "uniform")
METRIC_NAMES = {"ppl": ("perplexity", True, 2), "recall": ("recall", False, 3)}  # name, lower is better, digits


def against_card(grid: Grid, shown: int = 5) -> list[str]:
    """The cells that beat the card's recipe at the same ratio (the same FFN size): better beyond noise
    on one metric and not worse beyond noise on the other. Those better on both come first, then by
    recall (`shown` in full, the rest by name)."""
    out = []
    for ratio in sorted(grid.keys(4)):
        card = {m: grid.get(*CARD_CELL, ratio, m) for m in METRIC_NAMES}
        if not all(card.values()):
            continue
        out.append(f"At {ratio:.0%}, the card's recipe (WIFV, bias, one-shot, uniform): perplexity "
                   f"{card['ppl'].fmt()}, recall {card['recall'].fmt(3)}.")
        wins = []
        for key in grid.values:
            if key[4] != ratio or key[:4] == CARD_CELL:
                continue
            cell = {m: grid.get(*key, m) for m in METRIC_NAMES}
            if min(stat.n for stat in cell.values()) < 2:
                continue  # one seed: no noise to compare against
            parts, better, worse = [], 0, False
            for m, (name, lower, digits) in METRIC_NAMES.items():
                gain = (card[m].mean - cell[m].mean) if lower else (cell[m].mean - card[m].mean)
                noise = 2 * math.hypot(card[m].std, cell[m].std)
                better += gain > noise
                worse |= -gain > noise
                parts.append(f"{name} {cell[m].fmt(digits)} ({'better' if gain >= 0 else 'worse'} by "
                             f"{abs(gain):.{digits}f}, 2 x combined std {noise:.{digits}f}: "
                             f"{'beyond noise' if abs(gain) > noise else 'within noise'})")
            if better and not worse:
                both = better == len(METRIC_NAMES)
                name = "/".join(key[:4])
                line = f"  - {name}: " + "; ".join(parts) + (". **Better on both.**" if both else ".")
                wins.append((both, cell["recall"].mean, name, line))
        if wins:
            ranked = sorted(wins, reverse=True)
            out += [line for *_, line in ranked[:shown]]
            if len(ranked) > shown:
                rest = [name for _, _, name, _ in ranked[shown:]]
                out.append(f"  - {len(rest)} more, by recall: " + ", ".join(rest) + ".")
        else:
            out.append("  - nothing in the grid beats it beyond noise without losing beyond noise on the other metric.")
    return out


def plan_comparison(grid: Grid) -> list[str]:
    """FLAP-suggested widths (per-layer ratios from the WIFV scores) against uniform ones, one-shot:
    a table of suggested minus uniform per channel score, compensation, ratio and metric, each with
    twice the combined std; bold where the gap exceeds it."""
    ratios = sorted(grid.keys(4))
    columns = [(ratio, metric) for ratio in ratios for metric in METRIC_NAMES]
    rows = []
    for method in grid.keys(0):
        for comp in grid.keys(1):
            cells = []
            for ratio, metric in columns:
                suggested, uniform = (grid.get(method, comp, "one-shot", plan, ratio, metric)
                                      for plan in ("flap-suggested", "uniform"))
                if not (suggested and uniform):
                    cells.append("-")
                    continue
                digits = METRIC_NAMES[metric][2]
                gap, noise = suggested.mean - uniform.mean, 2 * math.hypot(suggested.std, uniform.std)
                text = f"{gap:+.{digits}f} (2 sigma {noise:.{digits}f})"
                cells.append(f"**{text}**" if abs(gap) > noise else text)
            if any(cell != "-" for cell in cells):
                rows.append([method, comp] + cells)
    if not rows:
        return []
    header = ["channels", "compensation"] + [f"{METRIC_NAMES[m][0]} {r:.0%}" for r, m in columns]
    return [_table(header, rows)]


def _model_description(info: dict) -> str:
    if "recipe" not in info:
        return f"`{info['model_dir']}` (not a bench model: no {RECIPE_FILE})."
    recipe = info["recipe"]
    return (
        f"`studio.bench_model` (recipe hash `{info['recipe_hash']}`): Gemma 4 text stack, {recipe['num_layers']} layers "
        f"(sliding/full attention, PLE, KV-shared tail), hidden {recipe['hidden_size']}, FFN {recipe['intermediate_size']}, "
        f"vocabulary {recipe['vocab_size']} (BPE trained on `wikitext-2-valid.txt`), trained {recipe['steps']} steps x "
        f"{recipe['batch_size']} x {recipe['seqlen']} tokens (BOS-led rows; {recipe.get('fact_rows', 0)} of each batch's rows "
        f"from the facts text) on `wikitext-2-valid.txt` ({info['corpus_tokens']} tokens) and "
        f"{info.get('facts', 0)} generated facts ({recipe.get('fact_entities', 0)} entities x 5 relations, 4 training "
        f"templates each: {info.get('fact_tokens', 0)} tokens), in {info['train_seconds']:.0f} s wall with {recipe['threads']} "
        f"thread(s) (load average {info.get('load_average_at_end', float('nan')):.1f} at the end"
        + (f"; {info['train_cpu_seconds']:.0f} CPU s" if "train_cpu_seconds" in info else "")
        + "); final training loss "
        f"{info['final_train_loss']:.3f}."
    )


def _cell(stat: Stat | None, digits: int, seeds: int) -> str:
    """mean +- std; the seed count too when a run cut short has fewer seeds than asked for."""
    if stat is None:
        return "-"
    return stat.fmt(digits) + (f" (n={stat.n})" if stat.n != seeds else "")


def render(merged: dict, command: str) -> str:
    settings = merged["settings"]
    grid = Grid(merged["runs"])
    dense, rand_init = merged["dense"], merged["random_init"]
    seeds = settings["seeds"]
    lines = [
        "# Quality results: channel scores x compensation x calibration, GPTQ vs RTN",
        "",
        "Written by `benchmarks/bench_quality.py`; rerun it to refresh.",
        "",
        "```",
        command,
        "```",
        "",
        f"Rendered {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, torch {torch.__version__}; the runs used "
        f"{merged.get('threads', 1)} CPU thread(s) per process (`BENCH_THREADS`), on a shared 2-core machine (load "
        f"average up to {merged['load_average'][0]:.1f} at the end of a run; times are noisy, CPU-time ratios steadier).",
        "",
        "## Does the bench discriminate?",
        "",
        *discrimination(merged, grid),
        "",
        "The cells that beat the card's recipe are listed under [Against the card's recipe at the same size]"
        "(#against-the-cards-recipe-at-the-same-size); what the grid says, in words, is at the end, under "
        "[What this bench says](#what-this-bench-says) when its notes are there.",
        "",
        "## The model and the data",
        "",
        _model_description(merged["info"]),
        "",
        f"Three texts, none seen by the others: training on `wikitext-2-valid.txt` (+ the facts); calibration on the "
        f"first half of `wikitext-2-raw-test.txt` ({merged['calibration_tokens_available']} tokens; "
        f"{settings['calib_samples']} x {settings['calib_seqlen']} BOS-led samples per seed"
        + (f", {merged['calibration_fact_samples']} of them cut from the facts' training text instead (in-domain "
           "calibration: the facts recall measures, in their training phrasings)" if merged.get("calibration_fact_samples") else "")
        + "); perplexity on its second "
        f"half (first {merged['eval_tokens']} tokens, BOS-led windows of {settings['seqlen']}). Fact recall: "
        f"{merged['recall_queries']} held-out queries (templates never in the training corpus) spread over all facts, "
        "scored as lm-eval's greedy `acc`.",
        "",
        f"Dense: **perplexity {dense['ppl']:.2f}, held-out recall {dense['recall']:.3f}** (recall on the training "
        f"templates {dense['recall_training_templates']:.3f}); same architecture with random weights: perplexity "
        f"{rand_init['ppl']:.2f}, recall {rand_init['recall']:.3f}.",
        "",
        f"Every pruned number is mean +- std over {seeds} calibration seeds (random channels: seed i also draws the "
        "channels). Magnitude with no compensation does not depend on calibration: its std is 0.",
    ]
    for plan in grid.keys(3):
        for ratio in sorted(grid.keys(4)):
            for metric, title, digits in (("ppl", "perplexity, lower is better", 2), ("recall", "held-out fact recall, higher is better", 3)):
                comps = [c for c in COMPENSATIONS if c in grid.keys(1)] + [c for c in grid.keys(1) if c not in COMPENSATIONS]
                rows = []
                for method in grid.keys(0):
                    for mode in MODES:
                        cells = [grid.get(method, c, mode, plan, ratio, metric) for c in comps]
                        if any(cells):
                            rows.append([method, mode] + [_cell(c, digits, seeds) for c in cells])
                if rows:
                    lines += ["", f"## {ratio:.0%} of the FFN pruned, {plan} widths: {title}", ""]
                    lines.append(_table(["channels", "calibration"] + [f"compensation {c}" for c in comps], rows))
    lines += ["", "Widths per layer (per seed where they differ):", ""]
    for name, widths in merged["plans"].items():
        unique = [list(w) for w in dict.fromkeys(tuple(w) for w in widths)]
        lines.append(f"- {name}: {unique[0] if len(unique) == 1 else unique}")
    if merged["quant"]:
        lines += _render_quant(merged)
    lines += _render_costs(merged)
    lines += ["", "## Against the card's recipe at the same size", "",
              "Every cell of the grid (channels/compensation/calibration/widths) that beats the card's recipe at the same "
              "FFN ratio on one metric beyond twice the combined standard deviation, and loses on neither beyond it; "
              "those better on both metrics first, then by recall.", ""]
    lines += [f"- {f}" if not f.startswith("  ") else f for f in against_card(grid)]
    suggested = plan_comparison(grid)
    if suggested:
        lines += ["", "## FLAP-suggested against uniform widths", "",
                  "One-shot, FLAP-suggested minus uniform at the same ratio (perplexity: lower is better; recall: "
                  "higher is better), with twice the combined std; **bold** where the gap exceeds it.", ""] + suggested
    lines += ["", "## Issue 13's expectations, checked", "",
              "Each sentence says whether the gap exceeds twice the combined standard deviation.", ""]
    lines += [f"- {f}" for f in findings(grid)]
    return "\n".join(lines) + "\n"


def _render_quant(merged: dict) -> list[str]:
    settings = merged["settings"]
    by_model: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in merged["quant"]:
        cell = by_model.setdefault(row["model"], {})
        for arm in ("fp32", "gptq", "rtn"):
            for metric in ("ppl", "recall"):
                cell.setdefault(f"{arm} {metric}", []).append(row[arm][metric])
    lines = [
        "",
        f"## INT4 after {merged.get('quant_ratio', settings['ratios'][0]):.0%} pruning (uniform), "
        f"W4 g{settings['group_size']} symmetric",
        "",
        "GPTQ: GPTQModel through `studio.gptq.quantize.quantize_checkpoint` (desc_act, damp 0.01, the card's settings), "
        "calibrated on the seed's samples, read back and dequantized into float32. RTN: the same grid, nearest level. "
        "Both quantize o_proj and gate/up/down of every layer, as the card does. Mean +- std over the seeds "
        "(the pruned models differ per seed; RTN is deterministic given the model).",
        "",
    ]
    rows, sentences = [], []
    for model, cell in by_model.items():
        stats = {k: Stat.of(v) for k, v in cell.items()}
        rows.append([model] + [stats[f"{arm} {m}"].fmt(2 if m == "ppl" else 3)
                               for m in ("ppl", "recall") for arm in ("fp32", "gptq", "rtn")])
        sentences.append(f"- {model}, perplexity: " + compare("GPTQ", stats["gptq ppl"], "RTN", stats["rtn ppl"], True) + ".")
        sentences.append(f"- {model}, recall: "
                         + compare("GPTQ", stats["gptq recall"], "RTN", stats["rtn recall"], False, 3) + ".")
    header = ["model (channels/compensation/calibration)", "ppl float32", "ppl GPTQ", "ppl RTN",
              "recall float32", "recall GPTQ", "recall RTN"]
    return lines + [_table(header, rows), ""] + sentences


def _render_costs(merged: dict) -> list[str]:
    costs = {name: StageCost(**c) for name, c in merged["costs"].items()}
    forward = costs[FORWARD_STAGE]
    lines = [
        "",
        "## Stage costs",
        "",
        f"Ratios to one plain forward pass of the dense model over one calibration batch "
        f"({merged['settings']['calib_samples']} x {merged['settings']['calib_seqlen']} tokens: {forward.cpu_s:.2f} CPU s, "
        f"{forward.wall_s:.2f} s wall, {forward.peak_rss_delta / 2**20:.0f} MiB peak RSS above its start), measured in "
        "the same process. Per run; a prune stage includes copying the dense model; the refit and sequential stages "
        "include their own pass over the calibration data (the refit's extra cost over slicing is the difference of "
        "their rows). Peak memory is this process's resident set above the stage's start (sampled every 5 ms).",
        "",
    ]
    rows = []
    for stage in costs.values():
        cpu, wall = stage.cpu_s / stage.runs, stage.wall_s / stage.runs
        mem = stage.peak_rss_delta / max(forward.peak_rss_delta, 1)
        rows.append([stage.name, str(stage.runs), f"{cpu:.2f}", f"{cpu / forward.cpu_s:.2f}",
                     f"{wall / forward.wall_s:.2f}", f"{stage.peak_rss_delta / 2**20:.0f}", f"{mem:.2f}"])
    lines.append(_table(["stage", "runs", "CPU s/run", "CPU ratio", "wall ratio", "peak MiB", "memory ratio"], rows))
    return lines


def merge(results: list[dict]) -> dict:
    """One result from several runs of the same model and settings (e.g. one process per ratio).

    Runs, quantization rows and plans are pooled; a run present in several (same cell and seed) is
    kept once, from the first. Dense numbers and stage costs come from the first (each process
    measures its own forward pass, so ratios stay within one process).
    """
    shares = {res["settings"].get("calib_facts") or 0.0 for res in results}  # absent from older results
    if len(shares) > 1:
        raise SystemExit(f"--merge: the results were calibrated on different mixes (--calib-facts {sorted(shares)})")
    first = dict(results[0])
    runs = {}
    for run in (r for res in results for r in res["runs"]):
        runs.setdefault(tuple(run[k] for k in ("method", "compensation", "mode", "plan", "ratio", "seed")), run)
    first["runs"] = list(runs.values())
    first["quant"] = [q for res in results for q in res["quant"]]
    # Quantized models come from the first ratio of the run that made them.
    first["quant_ratio"] = next((res["settings"]["ratios"][0] for res in results if res["quant"]),
                                first["settings"]["ratios"][0])
    first["plans"] = {k: v for res in results for k, v in res["plans"].items()}
    ratios = [r for res in results for r in res["settings"]["ratios"]]
    first["settings"] = {**first["settings"], "ratios": list(dict.fromkeys(ratios))}
    first["load_average"] = max((res["load_average"] for res in results), key=lambda load: load[0])
    return first


def write_report(report: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Hand-written notes below the marker survive a rerun.
    previous = out.read_text() if out.is_file() else ""
    if NOTES_MARKER in previous:
        report += "\n" + previous[previous.index(NOTES_MARKER) :]
    out.write_text(report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the cached bench model, trained if missing)")
    parser.add_argument("--text", type=Path, default=OFFLINE_EVALUATION_TEXT,
                        help="text cut in two: calibration half, evaluation half (default: WikiText-2 raw test)")
    parser.add_argument("--seqlen", type=int, default=128, help="evaluation window (default: 128)")
    parser.add_argument("--max-tokens", type=int, default=8192, help="evaluation token budget (default: 8192)")
    parser.add_argument("--recall-queries", type=int, default=500,
                        help="held-out recall queries, spread over all facts (0: all; default: 500)")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation windows per batch")
    parser.add_argument("--calib-samples", type=int, default=64, help="calibration sequences (default: 64)")
    parser.add_argument("--calib-seqlen", type=int, default=128, help="calibration sequence length (default: 128)")
    parser.add_argument("--calib-batch-size", type=int, default=16, help="calibration forward batch (default: 16)")
    parser.add_argument("--calib-facts", type=float, default=0.0,
                        help="share of the calibration samples cut from the bench model's facts training text "
                        "(in-domain calibration; default: 0, all from the calibration half)")
    parser.add_argument("--seeds", type=int, default=3, help="calibration (and random-channel) seeds (default: 3)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5], help="FFN pruning ratios")
    parser.add_argument("--methods", nargs="+", choices=all_methods(), help="channel scores (default: all)")
    parser.add_argument("--compensations", nargs="+", choices=COMPENSATIONS, default=list(COMPENSATIONS))
    parser.add_argument("--refit-damps", type=float, nargs="+", default=[FlapSettings.refit_damp],
                        help="ridge weights of the refit (and of OBS's Gram matrix), each its own column "
                        f"(default: {FlapSettings.refit_damp:g})")
    parser.add_argument("--full", action="store_true",
                        help="the whole grid: sequential for every score, and FLAP-suggested widths")
    parser.add_argument("--plans", nargs="+", choices=PLANS, default=["uniform"],
                        help="width plans (default: uniform; FLAP-suggested widths come from the WIFV scores)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="calibration modes")
    parser.add_argument("--sequential-methods", nargs="+", choices=all_methods(), default=list(DEFAULT_SEQUENTIAL),
                        help="channel scores also run sequentially (default: wifv random)")
    parser.add_argument("--max-layer-ratio", type=float, default=0.8, help="per-layer cap of suggested plans")
    parser.add_argument("--group-size", type=int, default=128, help="INT4 group size, GPTQ and RTN (default: 128)")
    parser.add_argument("--quant-models", nargs="+", default=["wifv/bias/one-shot", "wifv/refit/one-shot"],
                        help="pruned models (channels/compensation/calibration) of the first ratio to quantize")
    parser.add_argument("--no-quant", action="store_true", help="skip the GPTQ/RTN comparison")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--merge", type=Path, nargs="+", help="render these JSON results instead of running")
    parser.add_argument("--command", help="the command line to print in the report (with --merge)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md", help="report file")
    args = parser.parse_args(argv)
    if args.merge:
        merged = merge([json.loads(p.read_text()) for p in args.merge])
        write_report(render(merged, args.command or "python benchmarks/bench_quality.py"), args.out)
        return 0
    if args.seeds < 1:
        parser.error("--seeds: must be at least 1")
    if not 0 <= args.calib_facts <= 1:
        parser.error(f"--calib-facts: must be a share in [0, 1], got {args.calib_facts}")
    for damp in args.refit_damps:  # checked here, not after the dense model has been measured
        try:
            FlapSettings(refit_damp=damp)
        except ValueError as err:
            parser.error(str(err).replace("flap.refit_damp", "--refit-damps"))
    if MMAP_THRESHOLD_ENV not in os.environ:
        # glibc serves big allocations from a heap that grows its mmap threshold as tensors are
        # freed, so freed memory stays resident and later stages show no growth. A fixed threshold
        # makes every large tensor its own mapping, returned on free: RSS then tracks live memory.
        os.environ[MMAP_THRESHOLD_ENV] = "65536"
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])])
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    command = "python benchmarks/bench_quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    report = render(results, command.strip())
    print(report)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
