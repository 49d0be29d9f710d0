"""Does the BOS position dominate the channel means that FLAP's bias folds in?

On the bench model (calibrated and evaluated as `bench_quality.py` does: first half of WikiText-2 raw
test, then its second half, and the held-out fact queries), this prints per layer how the down_proj
input at the BOS position compares with the other positions, then prunes 50% of every FFN with WIFV
channels and bias compensation twice per seed: once with the mean over all positions (FLAP's, the
studio's), once with the mean over the non-BOS positions only (same channels, same variances). Both
pruned models are scored on held-out perplexity and fact recall.

    .venv/bin/python benchmarks/bias_without_bos.py [--seeds 3] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from studio.bench_model import HELD_OUT_QUERIES, bench_texts, ensure_bench_model  # noqa: E402
from studio.calibration import OFFLINE_EVALUATION_TEXT, leading_bos, pack_samples, tokenize_stream  # noqa: E402
from studio.eval import evaluate_perplexity_ids  # noqa: E402
from studio.eval.facts import fact_recall, read_queries  # noqa: E402
from studio.eval.perplexity import tokenize_text  # noqa: E402
from studio.flap import FlapSettings, collect_statistics, model_scores  # noqa: E402
from studio.flap.pipeline import apply_plan  # noqa: E402
from studio.flap.stats import ChannelMoments, FlapStatistics  # noqa: E402
from studio.modeling import decoder_layers, load_model, text_config_of  # noqa: E402
from studio.plans.plan import uniform_plan  # noqa: E402

SAMPLES, SEQLEN, BATCH, QUERIES = 64, 128, 16, 500


def split_moments(model, ids: torch.Tensor) -> tuple[list[ChannelMoments], list[ChannelMoments]]:
    """Per layer, the down_proj input moments at position 0 (BOS) and at the other positions."""
    layers = decoder_layers(model)
    at_bos = [ChannelMoments.empty(layer.mlp.down_proj.in_features) for layer in layers]
    elsewhere = [ChannelMoments.empty(layer.mlp.down_proj.in_features) for layer in layers]

    def recorder(index):
        def hook(_module, inputs):
            x = inputs[0].detach()
            at_bos[index] = at_bos[index].merge(ChannelMoments.of(x[:, :1]))
            elsewhere[index] = elsewhere[index].merge(ChannelMoments.of(x[:, 1:]))
        return hook

    hooks = [layer.mlp.down_proj.register_forward_pre_hook(recorder(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for start in range(0, len(ids), BATCH):
                model(input_ids=ids[start : start + BATCH], use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return at_bos, elsewhere


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = ensure_bench_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bos = leading_bos(tokenizer)
    calib_text, eval_text = bench_texts(OFFLINE_EVALUATION_TEXT)
    eval_ids, stream = tokenize_text(tokenizer, eval_text, 8192), tokenize_stream(tokenizer, calib_text)
    queries = read_queries(model_dir / HELD_OUT_QUERIES)
    queries = [queries[i] for i in sorted(random.Random(0).sample(range(len(queries)), QUERIES))]  # as bench_quality
    dense = load_model(model_dir)
    widths = uniform_plan(text_config_of(dense.config), args.ratio).widths
    settings = FlapSettings(metric="wifv", compensation="bias", batch_size=BATCH)

    def measure(model) -> dict:
        ppl = evaluate_perplexity_ids(model, eval_ids, seqlen=SEQLEN, batch_size=BATCH, bos_token_id=bos).ppl
        return {"ppl": round(ppl, 2), "recall": fact_recall(model, tokenizer, queries, batch_size=64)}

    report = {"dense": measure(dense), "layers": [], "seeds": []}
    for seed in range(args.seeds):
        ids = pack_samples(stream, SAMPLES, SEQLEN, seed, bos)
        stats = collect_statistics(dense, ids, batch_size=BATCH)
        at_bos, elsewhere = split_moments(dense, ids)
        if seed == 0:
            for everywhere, first, rest in zip(stats.layers, at_bos, elsewhere):
                report["layers"].append({
                    "mean_shift_without_bos": round(float((everywhere.mean - rest.mean).norm() / rest.mean.norm()), 3),
                    "bos_mean_norm_ratio": round(float(first.mean.norm() / rest.mean.norm()), 2),
                })
        scores = model_scores(dense, stats, "wifv")
        without_bos = FlapStatistics([ChannelMoments(m.count, rest.mean, m.m2) for m, rest in zip(stats.layers, elsewhere)])
        row = {"seed": seed}
        for name, moments in (("all positions", stats), ("without BOS", without_bos)):
            model = copy.deepcopy(dense)
            apply_plan(model, widths, settings, moments, scores, ids)
            row[name] = measure(model)
        report["seeds"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
