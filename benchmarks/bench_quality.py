"""What compression costs in quality: FLAP against naive structured pruning, GPTQ against RTN.

On the small trained bench model (`studio.bench_model`), this measures held-out perplexity
(WikiText-2 raw test) of:
- the dense model and a random-weight model of the same architecture (the floor and the ceiling);
- FFN pruning at each ratio, with two plans of the same total width (uniform, and the widths FLAP
  suggests from its WIFV scores), by six channel choices: FLAP (WIFV + bias compensation), WIFV
  without bias, IFV, WIFN (both with bias), weight magnitude and random channels (no bias);
- each model of the first ratio (uniform plan) and the dense model after GPTQ W4 g128 (GPTQModel,
  the card's settings; `--group-size` changes the group) and after round-to-nearest W4 on the same
  grid, both evaluated in float32 with the dequantized weights;
- the cost of each stage (CPU time, wall time, peak resident memory above the stage's start) as a
  ratio to one plain forward pass over the calibration batch.
It prints the tables and writes them, with the command, to docs/results.md.

    python benchmarks/bench_quality.py                 # the defaults used for docs/results.md
    python benchmarks/bench_quality.py --max-tokens 8192 --no-quant --out /tmp/r.md   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.bench_model import RECIPE_FILE, BenchRecipe, ensure_bench_model  # noqa: E402
from studio.calibration import CalibrationSpec, build_calibration_ids, leading_bos  # noqa: E402
from studio.calibration import OFFLINE_EVALUATION_TEXT  # noqa: E402
from studio.demo_model import DEFAULT_TOKENIZER_CORPUS  # noqa: E402
from studio.eval import evaluate_perplexity_ids, load_eval_text  # noqa: E402
from studio.eval.perplexity import tokenize_text  # noqa: E402
from studio.eval.baselines import (  # noqa: E402
    load_gptq_weights_,
    magnitude_scores,
    random_scores,
    rtn_quantize_model_,
)
from studio.flap import collect_statistics, model_scores, prune_model  # noqa: E402
from studio.flap.pipeline import suggested_plan  # noqa: E402
from studio.modeling import load_model, text_config_of  # noqa: E402
from studio.plans.plan import uniform_plan  # noqa: E402

MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
GPTQ_STAGE = "GPTQ W4 (GPTQModel)"
NOTES_MARKER = "<!-- notes below are written by hand and kept by bench_quality.py -->"
DEFAULT_TEST_TEXT = OFFLINE_EVALUATION_TEXT


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    scores: str  # a FLAP metric, "magnitude" or "random"
    bias: bool


METHODS = (
    Method("flap", "FLAP: WIFV + bias compensation", "wifv", True),
    Method("wifv-nobias", "WIFV, no bias compensation", "wifv", False),
    Method("ifv", "IFV + bias compensation", "ifv", True),
    Method("wifn", "WIFN + bias compensation", "wifn", True),
    Method("magnitude", "weight-magnitude channels (no bias)", "magnitude", False),
    Method("random", "random channels (no bias)", "random", False),
)


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
# Models


def _scores(method: Method, dense, stats, seed: int) -> list[torch.Tensor]:
    if method.scores == "magnitude":
        return magnitude_scores(dense)
    if method.scores == "random":
        return random_scores(dense, seed)
    return model_scores(dense, stats, method.scores)


def _random_init_model(model_dir: Path, seed: int):
    """The bench architecture with fresh random weights (what training started from)."""
    from transformers import AutoConfig

    from studio.modeling import model_class_for

    config = AutoConfig.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class_for(config)(config).eval()


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Results:
    info: dict
    eval_settings: dict
    calibration: CalibrationSpec
    dense_ppl: float = 0.0
    random_init_ppl: float = 0.0
    plans: dict = field(default_factory=dict)  # (plan kind, ratio) -> widths
    pruned: dict = field(default_factory=dict)  # (method, plan kind, ratio) -> ppl
    quant: dict = field(default_factory=dict)  # (method or "dense") -> {"fp32", "gptq", "rtn"}
    gptq_kernel_ppl: dict = field(default_factory=dict)
    costs: CostLog = field(default_factory=CostLog)


def run(args) -> Results:
    import json

    from transformers import AutoTokenizer

    recipe = BenchRecipe()
    model_dir = args.model or ensure_bench_model(recipe, log=_log)
    recipe_file = Path(model_dir) / RECIPE_FILE
    info = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eval_ids = tokenize_text(tokenizer, load_eval_text(args.text), args.max_tokens)
    eval_kwargs = dict(seqlen=args.seqlen, stride=args.stride or args.seqlen, batch_size=args.batch_size)
    spec = CalibrationSpec(source=str(args.calibration), samples=args.calib_samples, seqlen=args.calib_seqlen, seed=0)
    results = Results(info={**info, "model_dir": str(model_dir)}, eval_settings=eval_kwargs, calibration=spec)
    costs = results.costs

    def ppl(model) -> float:
        with costs.measure("perplexity evaluation"):
            return evaluate_perplexity_ids(model, eval_ids, **eval_kwargs, bos_token_id=leading_bos(tokenizer)).ppl

    calib_ids = build_calibration_ids(tokenizer, spec)
    dense = load_model(model_dir)
    text_config = text_config_of(dense.config)
    with torch.no_grad():
        for _ in range(2):  # the first pass warms up kernels and allocator; the second is measured
            with contextlib.ExitStack() as stack:
                if _:
                    stack.enter_context(costs.measure("plain forward pass"))
                for start in range(0, len(calib_ids), args.calib_batch_size):
                    dense(input_ids=calib_ids[start : start + args.calib_batch_size], use_cache=False)

    results.dense_ppl = ppl(dense)
    results.random_init_ppl = ppl(_random_init_model(model_dir, recipe.seed))
    _log(f"dense ppl {results.dense_ppl:.2f}, random-init ppl {results.random_init_ppl:.2f}")

    with costs.measure("FLAP statistics (calibration forward)"):
        stats = collect_statistics(dense, calib_ids, batch_size=args.calib_batch_size)
    scores = {}
    for method in METHODS:
        if method.scores not in scores:
            with costs.measure("channel scores"):
                scores[method.scores] = _scores(method, dense, stats, seed=0)

    for ratio in args.ratios:
        results.plans[("uniform", ratio)] = uniform_plan(text_config, ratio).widths
        results.plans[("flap-suggested", ratio)] = suggested_plan(
            scores["wifv"], text_config, ratio, max_ratio=args.max_layer_ratio
        ).widths
    pruned_for_quant = {}
    for (kind, ratio), widths in results.plans.items():
        for method in METHODS:
            model = copy.deepcopy(dense)
            with costs.measure("prune (slice + bias)"):
                prune_model(model, scores[method.scores], stats.means, widths, "bias" if method.bias else "none")
            results.pruned[(method.key, kind, ratio)] = ppl(model)
            _log(f"{kind} {ratio:g} {method.key}: ppl {results.pruned[(method.key, kind, ratio)]:.2f}")
            if kind == "uniform" and ratio == args.ratios[0] and not args.no_quant:
                pruned_for_quant[method.key] = model

    if not args.no_quant:
        quantize_all(args, results, dense, pruned_for_quant, calib_ids, spec, tokenizer, ppl)
    return results


def quantize_all(args, results, dense, pruned, calib_ids, spec, tokenizer, ppl) -> None:
    from studio.gptq.quantize import QuantizeSettings, load_quantized, quantize_checkpoint

    costs = results.costs
    # The card's settings (W4, sym, desc_act, damp 0.01) at the chosen group size.
    settings = QuantizeSettings(dtype="float32", calibration=spec, group_size=args.group_size)
    candidates = {"dense": dense, **pruned}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as work:
        work = Path(work)
        for key, model in candidates.items():
            source = work / f"{key}-fp32"
            model.save_pretrained(source)
            tokenizer.save_pretrained(source)
            with costs.measure(GPTQ_STAGE):
                quantize_checkpoint(source, work / f"{key}-gptq", calib_ids, settings, device="cpu")
            # float16 keeps the scales' precision better than bfloat16; weights are copied into float32.
            quantized = load_quantized(work / f"{key}-gptq", dtype=torch.float16)
            gptq_model = load_model(source)
            load_gptq_weights_(gptq_model, quantized)
            rtn_model = load_model(source)
            with costs.measure("RTN W4"):
                rtn_quantize_model_(rtn_model, group_size=args.group_size)
            results.quant[key] = {"fp32": ppl(model), "gptq": ppl(gptq_model), "rtn": ppl(rtn_model)}
            if key in ("dense", "flap"):
                # Cross-check: the same checkpoint through GPTQModel's own torch kernel (float16).
                results.gptq_kernel_ppl[key] = ppl(quantized)
            _log(f"quant {key}: {results.quant[key]}")
            del quantized, gptq_model, rtn_model


# ---------------------------------------------------------------------------------------------
# Report


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def findings(results: Results, args) -> list[str]:
    """The issue's expectations, each checked against the numbers."""
    ratios = args.ratios
    out = []
    kinds = ("uniform", "flap-suggested")
    for kind in kinds:
        for ratio in ratios:
            flap = results.pruned[("flap", kind, ratio)]
            others = {m.key: results.pruned[(m.key, kind, ratio)] for m in METHODS if m.key != "flap"}
            beaten = [k for k, v in others.items() if v <= flap]
            verdict = "holds" if not beaten else f"does NOT hold: {', '.join(beaten)} scored at or below FLAP"
            out.append(f"FLAP below every other method, {kind} plan, {ratio:.0%}: {verdict} (FLAP {flap:.2f}).")
    for kind in kinds:
        for ratio in ratios:
            with_bias = results.pruned[("flap", kind, ratio)]
            without = results.pruned[("wifv-nobias", kind, ratio)]
            verdict = "holds" if with_bias < without else "does NOT hold"
            out.append(
                f"Bias compensation helps, {kind} plan, {ratio:.0%}: {verdict} ({with_bias:.2f} with, {without:.2f} without)."
            )
    for ratio in ratios:
        uniform, suggested = results.pruned[("flap", "uniform", ratio)], results.pruned[("flap", "flap-suggested", ratio)]
        verdict = "better" if suggested < uniform else "NOT better"
        out.append(f"FLAP-suggested widths vs uniform at {ratio:.0%} (FLAP channels): {verdict} ({suggested:.2f} vs {uniform:.2f}).")
    if results.quant:
        worse = [k for k, v in results.quant.items() if not v["gptq"] < v["rtn"]]
        verdict = "holds for every model" if not worse else f"does NOT hold for {', '.join(worse)}"
        out.append(f"GPTQ below RTN (W4 g{args.group_size}): {verdict}.")
        stages = results.costs.stages
        gptq = stages.get(GPTQ_STAGE)
        flap_cost = sum(
            stages[s].cpu_s / stages[s].runs
            for s in ("FLAP statistics (calibration forward)", "channel scores", "prune (slice + bias)")
            if s in stages
        )
        if gptq:
            ratio = (gptq.cpu_s / gptq.runs) / flap_cost
            verdict = "holds" if ratio < 0.5 else "does NOT hold"
            out.append(
                f"The INT4 step costs a small fraction of pruning: {verdict}: one GPTQ run takes {ratio:.1f}x the CPU "
                f"time of one FLAP pruning (statistics + scores + slicing) on the same calibration batch."
            )
    return out


def _model_description(info: dict) -> str:
    if "recipe" not in info:
        return f"`{info['model_dir']}` (not a bench model: no {RECIPE_FILE})."
    recipe = info["recipe"]
    return (
        f"`studio.bench_model` (recipe hash `{info['recipe_hash']}`): Gemma 4 text stack, {recipe['num_layers']} layers "
        f"(sliding/full attention, PLE, KV-shared tail), hidden {recipe['hidden_size']}, FFN {recipe['intermediate_size']}, "
        f"vocabulary {recipe['vocab_size']} (BPE trained on the corpus), trained {recipe['steps']} steps x "
        f"{recipe['batch_size']} x {recipe['seqlen']} tokens on `wikitext-2-valid.txt` ({info['corpus_tokens']} tokens) "
        f"in {info['train_seconds']:.0f} s with {recipe['threads']} thread(s); final training loss "
        f"{info['final_train_loss']:.3f}."
    )


def render(results: Results, args, command: str) -> str:
    ratios = args.ratios
    info = results.info
    forward = results.costs.stages["plain forward pass"]
    lines = [
        "# Quality results: FLAP vs baselines, GPTQ vs RTN",
        "",
        "Written by `benchmarks/bench_quality.py`; rerun it to refresh (the numbers below come from one run).",
        "",
        "```",
        command,
        "```",
        "",
        f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, on a shared 2-core machine (times are noisy; CPU-time ratios are steadier).",
        "",
        "## The model",
        "",
        _model_description(info),
        "",
        f"Perplexity on WikiText-2 raw test (first {args.max_tokens} tokens, windows of {args.seqlen}, stride "
        f"{args.stride or args.seqlen}): **trained {results.dense_ppl:.2f}**, same architecture with random weights "
        f"{results.random_init_ppl:.2f}.",
        "",
        f"Calibration (FLAP statistics and GPTQ): {results.calibration.samples} x {results.calibration.seqlen} tokens "
        f"of `{Path(results.calibration.source).name}`, seed {results.calibration.seed}.",
        "",
        "## FFN pruning (perplexity, lower is better)",
        "",
        f"Dense: {results.dense_ppl:.2f}. Each column prunes the same total number of FFN channels; "
        "'uniform' prunes every layer alike, 'suggested' uses the per-layer widths FLAP's adaptive search picks from "
        f"its WIFV scores (each layer capped at {args.max_layer_ratio:.0%}). All methods in a column get the same widths.",
        "",
    ]
    columns = [(kind, r) for r in ratios for kind in ("uniform", "flap-suggested")]
    header = ["method"] + [f"{r:.0%} {'uniform' if k == 'uniform' else 'suggested'}" for k, r in columns]
    rows = [[m.label] + [f"{results.pruned[(m.key, k, r)]:.2f}" for k, r in columns] for m in METHODS]
    lines += [_table(header, rows), "", "Widths per layer:", ""]
    lines += [f"- {kind} {ratio:.0%}: {widths}" for (kind, ratio), widths in results.plans.items()]
    if results.quant:
        lines += [
            "",
            f"## INT4 after {ratios[0]:.0%} pruning (uniform plan), W4 g{args.group_size} symmetric",
            "",
            "GPTQ: GPTQModel through `studio.gptq.quantize.quantize_checkpoint` (desc_act, damp 0.01, the card's settings), "
            "read back and dequantized into float32. RTN: the same grid, nearest level. Both quantize o_proj, "
            "gate/up/down of every layer, as the card does.",
            "",
        ]
        rows = [
            [key if key == "dense" else next(m.label for m in METHODS if m.key == key)]
            + [f"{v['fp32']:.2f}", f"{v['gptq']:.2f}", f"{v['rtn']:.2f}"]
            for key, v in results.quant.items()
        ]
        lines.append(_table(["model", "float32", "GPTQ W4", "RTN W4"], rows))
        if results.gptq_kernel_ppl:
            checks = ", ".join(f"{k} {v:.2f}" for k, v in results.gptq_kernel_ppl.items())
            lines += ["", f"Cross-check, GPTQ checkpoints through GPTQModel's torch kernel in float16: {checks}."]
    lines += [
        "",
        "## Stage costs",
        "",
        f"Ratios to one plain forward pass of the dense model over the calibration batch "
        f"({forward.cpu_s:.2f} CPU s, {forward.wall_s:.2f} s wall, {forward.peak_rss_delta / 2**20:.0f} MiB peak RSS "
        "above its start). Per run; peak memory is this process's resident set above the stage's start (sampled every 5 ms).",
        "",
    ]
    rows = []
    for stage in results.costs.stages.values():
        cpu, wall = stage.cpu_s / stage.runs, stage.wall_s / stage.runs
        mem = stage.peak_rss_delta / max(forward.peak_rss_delta, 1)
        rows.append([stage.name, str(stage.runs), f"{cpu:.2f}", f"{cpu / forward.cpu_s:.2f}",
                     f"{wall / forward.wall_s:.2f}", f"{stage.peak_rss_delta / 2**20:.0f}", f"{mem:.2f}"])
    lines.append(_table(["stage", "runs", "CPU s/run", "CPU ratio", "wall ratio", "peak MiB", "memory ratio"], rows))
    lines += ["", "## Expectations from issue 7, checked", ""]
    lines += [f"- {f}" for f in findings(results, args)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the cached bench model, trained if missing)")
    parser.add_argument("--text", default=str(DEFAULT_TEST_TEXT), help="evaluation text (file or hf:...)")
    parser.add_argument("--calibration", default=str(DEFAULT_TOKENIZER_CORPUS), help="calibration text file")
    parser.add_argument("--seqlen", type=int, default=128, help="evaluation window (default: 128, the FLAP table's)")
    parser.add_argument("--stride", type=int, help="evaluation stride (default: seqlen)")
    parser.add_argument("--max-tokens", type=int, default=32768, help="evaluation token budget (default: 32768)")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation windows per batch")
    parser.add_argument("--calib-samples", type=int, default=64, help="calibration sequences (default: 64)")
    parser.add_argument("--calib-seqlen", type=int, default=128, help="calibration sequence length (default: 128)")
    parser.add_argument("--calib-batch-size", type=int, default=16, help="calibration forward batch (default: 16)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5], help="FFN pruning ratios")
    parser.add_argument("--max-layer-ratio", type=float, default=0.8, help="per-layer cap of suggested plans")
    parser.add_argument("--group-size", type=int, default=128, help="INT4 group size, GPTQ and RTN (default: 128)")
    parser.add_argument("--no-quant", action="store_true", help="skip the GPTQ/RTN comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md", help="report file")
    args = parser.parse_args(argv)
    if MMAP_THRESHOLD_ENV not in os.environ:
        # glibc serves big allocations from a heap that grows its mmap threshold as tensors are
        # freed, so freed memory stays resident and later stages show no growth. A fixed threshold
        # makes every large tensor its own mapping, returned on free: RSS then tracks live memory.
        os.environ[MMAP_THRESHOLD_ENV] = "65536"
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])])
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    command = "python benchmarks/bench_quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    results = run(args)
    report = render(results, args, command.strip())
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Hand-written notes below the marker survive a rerun.
    previous = args.out.read_text() if args.out.is_file() else ""
    if NOTES_MARKER in previous:
        report += "\n" + previous[previous.index(NOTES_MARKER) :]
    args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
