"""FLAP statistics cost against a plain forward pass, measured side by side in one run.

    python benchmarks/bench_flap_stats.py [--layers 8 --hidden 1024 --ffn 4096 --samples 4 --seqlen 512]

Builds a scaled-up demo model, then, each in a fresh child process (so peak memory is its own):
- the statistics pass, batched (hooks on whole-model forwards), and its baseline;
- the statistics pass, layerwise (one decoder layer at a time on cached layer inputs), and its
  baseline.
A baseline is the very same decoder computation with the statistics recorder replaced by a no-op
(no LM head, no multimodal wrapper, the same layer loop), so a ratio is what the statistics cost.
Prints each pass's time over its baseline (goal <= 1.2) and peak RSS growth over the loaded model's
bytes (goal <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _NoHook:
    def remove(self) -> None:
        pass


KINDS = ("batched-baseline", "batched", "layerwise-baseline", "layerwise")


def _measure(kind: str, model_dir: str, samples: int, seqlen: int, batch_size: int, queue) -> None:
    import torch

    from studio.flap import stats
    from studio.modeling import load_model

    mode, _, baseline = kind.partition("-")
    if baseline:
        # The same loops without the statistics: a recorder that records nothing.
        stats._down_proj_recorder = lambda layer, moments, index: _NoHook()

    torch.manual_seed(0)
    ids = torch.randint(20, 2000, (samples, seqlen))
    rss_before = _rss_bytes()
    model = load_model(model_dir)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # Run the pass once untimed first: a process's first calls are several times slower (kernel and
    # allocator set-up, float64 reductions included), and that would swamp what is measured.
    stats.collect_statistics(model, ids, batch_size=batch_size, layerwise=mode == "layerwise")
    start = time.perf_counter()
    stats.collect_statistics(model, ids, batch_size=batch_size, layerwise=mode == "layerwise")
    seconds = time.perf_counter() - start
    queue.put({"seconds": seconds, "peak_growth": _peak_rss_bytes() - rss_before, "model_bytes": model_bytes})


def run_in_child(kind: str, *args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(kind, *args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from studio.demo_model import DemoModelShape, build_demo_model

    with tempfile.TemporaryDirectory() as tmp:
        shape = DemoModelShape(num_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.ffn)
        model_dir = str(build_demo_model(Path(tmp) / "model", shape=shape))
        run = (model_dir, args.samples, args.seqlen, args.batch_size)
        # Alternate the passes and keep each one's best of `--repeats`, so that load from other
        # processes on the machine skews all three alike.
        rounds = [
            {kind: run_in_child(kind, *run) for kind in KINDS}
            for _ in range(args.repeats)
        ]
        results = {kind: min((r[kind] for r in rounds), key=lambda m: m["seconds"]) for kind in rounds[0]}

    base = results["batched-baseline"]
    print(f"model: {args.layers} layers, hidden {args.hidden}, FFN {args.ffn}; "
          f"{base['model_bytes'] / 2**20:.0f} MiB of weights; {args.samples} x {args.seqlen} tokens")
    ratios = {kind: results[kind]["seconds"] / results[f"{kind}-baseline"]["seconds"] for kind in ("batched", "layerwise")}
    print(f"{'pass':<20}{'seconds':>10}{'time / baseline':>17}{'peak RSS growth / model':>26}")
    for kind, r in results.items():
        ratio = f"{ratios[kind]:.2f}" if kind in ratios else "-"
        print(f"{kind:<20}{r['seconds']:>10.2f}{ratio:>17}{r['peak_growth'] / r['model_bytes']:>26.2f}")
    print("goals: statistics time / its baseline <= 1.2; peak RSS growth / model bytes <= 1.5")
    print(json.dumps({k: {**v, "time_ratio": ratios.get(k)} for k, v in results.items()}))


if __name__ == "__main__":
    main()
