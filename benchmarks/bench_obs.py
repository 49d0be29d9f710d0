"""OBS channel selection against WIFV and random channels, each with the same compensation, on the bench model.

Held-out perplexity at one uniform pruning ratio, mean +- standard deviation (n-1) over calibration
seeds (the random channels take the same seed). The bench model was trained on wikitext-2-valid, so,
as in issue 13's probe, calibration windows are cut from the first half of the WikiText-2 test text
and perplexity is measured on the second half: neither was seen in training. Every prune runs the
layer-by-layer pass (`prune_while_calibrating`), one-shot; its wall time is printed as a ratio to
WIFV's in the same run.

    python benchmarks/bench_obs.py                          # the cached bench model, 50%, seeds 0 1 2
    python benchmarks/bench_obs.py --model DIR --ratio 0.5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.bench_model import ensure_bench_model  # noqa: E402
from studio.calibration import OFFLINE_EVALUATION_TEXT, leading_bos, pack_samples  # noqa: E402
from studio.eval import evaluate_perplexity_ids, load_eval_text  # noqa: E402
from studio.eval.baselines import random_scores  # noqa: E402
from studio.eval.perplexity import tokenize_text  # noqa: E402
from studio.flap import obs as obs_module  # noqa: E402
from studio.flap.layerwise import prune_while_calibrating  # noqa: E402
from studio.flap.scores import model_scores  # noqa: E402
from studio.flap.settings import FlapSettings  # noqa: E402
from studio.flap.stats import collect_statistics  # noqa: E402
from studio.modeling import load_model, text_config_of  # noqa: E402
from studio.plans.plan import uniform_plan  # noqa: E402

# (label, channel choice, compensation, OBS step size or None for the default)
ARMS = (
    ("obs + refit", "obs", "refit", None),
    ("obs (steps of 128) + refit", "obs", "refit", 128),
    ("wifv + refit", "wifv", "refit", None),
    ("random + refit", "random", "refit", None),
)
# With --with-bias: the same selections with FLAP's bias instead of the refit.
BIAS_ARMS = (
    ("obs + bias", "obs", "bias", None),
    ("wifv + bias", "wifv", "bias", None),
)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _prune(dense, ids, widths, choice, compensation, block, scores, batch_size):
    model = copy.deepcopy(dense)
    metric = "obs" if choice == "obs" else "wifv"
    settings = FlapSettings(metric=metric, compensation=compensation, batch_size=batch_size)
    original = obs_module.obs_select
    if block is not None:
        obs_module.obs_select = lambda gram, weight, width, damp: original(gram, weight, width, damp, block)
    try:
        start = time.perf_counter()
        prune_while_calibrating(model, ids, widths, settings, scores=None if choice == "obs" else scores)
        return model, time.perf_counter() - start
    finally:
        obs_module.obs_select = original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the cached bench model, trained if missing)")
    parser.add_argument("--text", default=str(OFFLINE_EVALUATION_TEXT), help="held-out text, split in halves")
    parser.add_argument("--ratio", type=float, default=0.5, help="uniform FFN pruning ratio (default: 0.5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration seeds")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--seqlen", type=int, default=128, help="evaluation window")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--with-bias", action="store_true", help="also obs and wifv with bias compensation")
    args = parser.parse_args(argv)
    arms = ARMS + (BIAS_ARMS if args.with_bias else ())

    from transformers import AutoTokenizer

    model_dir = args.model or ensure_bench_model(log=_log)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bos = leading_bos(tokenizer)
    stream = tokenize_text(tokenizer, load_eval_text(args.text))
    half = stream.numel() // 2
    calibration_stream, eval_ids = stream[:half], stream[half:][: args.eval_tokens]
    dense = load_model(model_dir, dtype=torch.float32)
    widths = uniform_plan(text_config_of(dense.config), args.ratio).widths

    def ppl(model) -> float:
        return evaluate_perplexity_ids(model, eval_ids, seqlen=args.seqlen, batch_size=args.batch_size, bos_token_id=bos).ppl

    dense_ppl = ppl(dense)
    _log(f"{model_dir}: dense ppl {dense_ppl:.2f}, widths {widths}, {eval_ids.numel()} eval tokens")
    results: dict[str, list[float]] = {label: [] for label, *_ in arms}
    seconds: dict[str, list[float]] = {label: [] for label, *_ in arms}
    for seed in args.seeds:
        ids = pack_samples(calibration_stream, args.calib_samples, args.calib_seqlen, seed, bos)
        scores = {
            "wifv": model_scores(dense, collect_statistics(dense, ids, batch_size=args.batch_size)),
            "random": random_scores(dense, seed),
        }
        for label, choice, compensation, block in arms:
            model, elapsed = _prune(dense, ids, widths, choice, compensation, block, scores.get(choice), args.batch_size)
            results[label].append(ppl(model))
            seconds[label].append(elapsed)
            _log(f"seed {seed} {label}: ppl {results[label][-1]:.2f} ({elapsed:.1f} s)")

    print(f"model {model_dir}; uniform {args.ratio:g} of the FFN; calibration {args.calib_samples} x "
          f"{args.calib_seqlen} tokens of the first half of {Path(args.text).name}, perplexity on "
          f"{eval_ids.numel()} tokens of its second half; seeds {args.seeds}; dense {dense_ppl:.2f}")
    print("| channels + compensation | perplexity (mean +- std) | prune time / wifv + refit's |")
    print("| --- | --- | --- |")
    reference = statistics.mean(seconds["wifv + refit"])
    for label, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {label} | {statistics.mean(values):.2f} +- {spread:.2f} | "
              f"{statistics.mean(seconds[label]) / reference:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
