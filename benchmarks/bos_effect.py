"""What starting every calibration sample and evaluation window with BOS changes: FLAP statistics, the
channels FLAP keeps, and perplexity (dense and pruned), on one model.

    .venv/bin/python benchmarks/bos_effect.py [--model DIR] [--ratio 0.5] [--samples 32 --seqlen 128] [--seeds 3]

The model defaults to the bench model (`studio.bench_model`), calibrated on the first half of
WikiText-2 raw test and evaluated on its second half, as `bench_quality.py` does (`--texts offline`:
calibrate on wikitext-2-valid.txt, the bench model's training text, and evaluate on the whole test
text). Both arms draw their samples at the same seeded offsets of the same token stream; with BOS each
sample is BOS + seqlen - 1 tokens, without it seqlen tokens. Each seed is one calibration draw; the
summary gives mean and std over seeds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from studio.bench_model import bench_texts, ensure_bench_model  # noqa: E402
from studio.calibration import (  # noqa: E402
    OFFLINE_CALIBRATION_TEXT,
    OFFLINE_EVALUATION_TEXT,
    leading_bos,
    pack_samples,
    tokenize_stream,
)
from studio.eval import evaluate_perplexity_ids  # noqa: E402
from studio.eval.perplexity import tokenize_text  # noqa: E402
from studio.flap.pipeline import load_tokenizer, text_tokenizer  # noqa: E402
from studio.flap.prune import keep_indices, prune_model  # noqa: E402
from studio.flap.scores import model_scores  # noqa: E402
from studio.flap.stats import collect_statistics  # noqa: E402
from studio.modeling import load_model, original_widths, text_config_of  # noqa: E402


def _mean_std(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def summarize(per_seed: list[dict]) -> dict:
    """Mean +- std over seeds of each layer's changes and of the pruned perplexities."""
    layers = [
        {key: _mean_std([row["layers"][i][key] for row in per_seed])
         for key in ("mean_change", "variance_change", "kept_channels_differing")}
        for i in range(len(per_seed[0]["layers"]))
    ]
    pruned = {
        f"{arm} {windows}": _mean_std([row[arm][windows] for row in per_seed])
        for arm in ("pruned_calibrated_bos_ppl", "pruned_calibrated_no_bos_ppl")
        for windows in ("bos_windows", "no_bos_windows")
    }
    return {"layers": layers, "pruned_ppl": pruned}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the bench model)")
    parser.add_argument("--texts", choices=("bench", "offline"), default="bench",
                        help="bench: calibrate and evaluate on the two halves of the test text (default)")
    parser.add_argument("--seeds", type=int, default=3, help="calibration seeds (default: 3)")
    parser.add_argument("--ratio", type=float, default=0.5, help="uniform FFN pruning ratio (default: 0.5)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()

    model_dir = args.model or ensure_bench_model()
    tokenizer = text_tokenizer(load_tokenizer(model_dir))
    bos = leading_bos(tokenizer)
    if bos is None:
        raise SystemExit("model: its tokenizer adds no BOS, so there is nothing to compare")
    if args.texts == "bench":
        calib_text, eval_text = bench_texts(OFFLINE_EVALUATION_TEXT)
    else:
        calib_text, eval_text = OFFLINE_CALIBRATION_TEXT.read_text(encoding="utf-8"), OFFLINE_EVALUATION_TEXT.read_text(encoding="utf-8")
    stream = tokenize_stream(tokenizer, calib_text)
    model = load_model(model_dir)
    widths = [int(w * (1 - args.ratio)) // 128 * 128 for w in original_widths(text_config_of(model.config))]
    eval_ids = tokenize_text(tokenizer, eval_text, args.eval_tokens)

    def ppl(m, with_bos: bool) -> float:
        return evaluate_perplexity_ids(m, eval_ids, seqlen=args.seqlen, batch_size=8, bos_token_id=bos if with_bos else None).ppl

    per_seed = []
    for seed in range(args.seeds):
        ids = {"bos": pack_samples(stream, args.samples, args.seqlen, seed, bos),
               "no_bos": pack_samples(stream, args.samples, args.seqlen, seed)}  # fmt: skip
        stats = {arm: collect_statistics(model, batch, batch_size=8) for arm, batch in ids.items()}
        scores = {arm: model_scores(model, s) for arm, s in stats.items()}
        layers = []
        for index, (a, b) in enumerate(zip(stats["bos"].layers, stats["no_bos"].layers)):
            keep_a, keep_b = keep_indices(scores["bos"][index], widths[index]), keep_indices(scores["no_bos"][index], widths[index])
            shared = len(set(keep_a.tolist()) & set(keep_b.tolist()))
            layers.append({
                "layer": index,
                "mean_change": float((a.mean - b.mean).norm() / b.mean.norm()),
                "variance_change": float((a.variance - b.variance).norm() / b.variance.norm()),
                "kept_channels_differing": 1 - shared / widths[index],
            })  # fmt: skip
        row = {"seed": seed, "layers": layers}
        for arm in ids:
            pruned = copy.deepcopy(model)
            prune_model(pruned, scores[arm], stats[arm].means, widths, "bias")
            row[f"pruned_calibrated_{arm}_ppl"] = {"bos_windows": ppl(pruned, True), "no_bos_windows": ppl(pruned, False)}
        per_seed.append(row)
    result = {"model": str(model_dir), "texts": args.texts, "ratio": args.ratio, "widths": widths, "seeds": per_seed,
              "dense_ppl": {"bos_windows": ppl(model, True), "no_bos_windows": ppl(model, False)},
              "summary": summarize(per_seed)}  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
