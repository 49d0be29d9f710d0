"""What starting every calibration sample and evaluation window with BOS changes: FLAP statistics, the
channels FLAP keeps, and perplexity (dense and pruned), on one model.

    .venv/bin/python benchmarks/bos_effect.py --model models/demo [--ratio 0.5] [--samples 32 --seqlen 128]

Both arms draw their samples at the same seeded offsets of the same token stream; with BOS each sample
is BOS + seqlen - 1 tokens, without it seqlen tokens. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from studio.calibration import (  # noqa: E402
    OFFLINE_CALIBRATION_TEXT,
    OFFLINE_EVALUATION_TEXT,
    CalibrationSpec,
    leading_bos,
    load_calibration_text,
    pack_samples,
    tokenize_stream,
)
from studio.eval import evaluate_perplexity_ids, load_eval_text  # noqa: E402
from studio.eval.perplexity import tokenize_text  # noqa: E402
from studio.flap.pipeline import load_tokenizer, text_tokenizer  # noqa: E402
from studio.flap.prune import keep_indices, prune_model  # noqa: E402
from studio.flap.scores import model_scores  # noqa: E402
from studio.flap.stats import collect_statistics  # noqa: E402
from studio.modeling import load_model, original_widths, text_config_of  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--ratio", type=float, default=0.5, help="uniform FFN pruning ratio (default: 0.5)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()

    tokenizer = text_tokenizer(load_tokenizer(args.model))
    bos = leading_bos(tokenizer)
    if bos is None:
        raise SystemExit("model: its tokenizer adds no BOS, so there is nothing to compare")
    spec = CalibrationSpec(source=str(OFFLINE_CALIBRATION_TEXT), samples=args.samples, seqlen=args.seqlen)
    stream = tokenize_stream(tokenizer, load_calibration_text(spec))
    ids = {"bos": pack_samples(stream, spec.samples, spec.seqlen, spec.seed, bos),
           "no_bos": pack_samples(stream, spec.samples, spec.seqlen, spec.seed)}  # fmt: skip
    model = load_model(args.model)
    widths = [int(w * (1 - args.ratio)) // 128 * 128 for w in original_widths(text_config_of(model.config))]
    eval_ids = tokenize_text(tokenizer, load_eval_text(OFFLINE_EVALUATION_TEXT), args.eval_tokens)

    def ppl(m, with_bos: bool) -> float:
        return evaluate_perplexity_ids(m, eval_ids, seqlen=args.seqlen, batch_size=8, bos_token_id=bos if with_bos else None).ppl

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
    result = {"model": str(args.model), "ratio": args.ratio, "widths": widths, "layers": layers,
              "dense_ppl": {"bos_windows": ppl(model, True), "no_bos_windows": ppl(model, False)}}  # fmt: skip
    for arm in ids:
        pruned = copy.deepcopy(model)
        prune_model(pruned, scores[arm], stats[arm].means, widths, "bias")
        result[f"pruned_calibrated_{arm}_ppl"] = {"bos_windows": ppl(pruned, True), "no_bos_windows": ppl(pruned, False)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
