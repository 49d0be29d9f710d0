"""The studio's own cost: `compress` against raw GPTQModel quantizing the same pruned checkpoint.

    python benchmarks/bench_overhead.py [--layers 4 --hidden 512 --ffn 2048 --samples 8 --seqlen 256]

Builds a scaled-up demo model and prunes it once (uniform-20); then, each in a fresh child process,
alternating and keeping each one's best of `--repeats`:
- studio: `python -m studio compress` on the demo model (FLAP pruning, GPTQ, the export with its
  plugin and card), the whole command;
- raw: GPTQModel alone on the pruned checkpoint: the model built by the studio's loader (GPTQModel's
  own loader cannot hold per-layer widths), handed to GPTQModel's Gemma 4 definition with the same
  settings and calibration tokens, quantized and saved, nothing else.
Also times `studio prune` and `studio quantize` alone, to say where the difference goes.
Prints studio / raw (goal <= 1.15) and the time of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CALIBRATION = ROOT / "data" / "wikitext-2-valid.txt"

RAW_GPTQMODEL = """
import sys, torch
from transformers import AutoTokenizer
from studio.calibration import CalibrationSpec
from studio.flap.pipeline import calibration_ids
from studio.modeling import load_model
from studio.gptq.quantize import QuantizeSettings, _calibration_rows, _gptq_definition
pruned, out, samples, seqlen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spec = CalibrationSpec(source=sys.argv[5], samples=samples, seqlen=seqlen)
settings = QuantizeSettings(dtype="float32", calibration=spec)
model = load_model(pruned, dtype=settings.torch_dtype)
model.seqlen = 4096
gptq = _gptq_definition(model)(model, quantized=False, quantize_config=settings.gptqmodel_config("cpu"),
                               tokenizer=AutoTokenizer.from_pretrained(pruned), model_local_path=pruned)
gptq.quantize(_calibration_rows(calibration_ids(pruned, spec)), batch_size=1)
gptq.save(out)
"""


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from studio.demo_model import DemoModelShape, build_demo_model

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    python = sys.executable
    calibration = ["--calib", str(CALIBRATION), "--samples", str(args.samples), "--seqlen", str(args.seqlen)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shape = DemoModelShape(num_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.ffn)
        model = build_demo_model(tmp / "model", shape=shape)
        pruned = tmp / "pruned"
        prune_seconds = _timed([python, "-m", "studio", "prune", "--model", str(model), "--plan", "uniform-20",
                                *calibration, "--out", str(pruned)], env)
        runs = {"studio": [], "raw": [], "studio_quantize": []}
        for attempt in range(args.repeats):
            runs["studio_quantize"].append(_timed(
                [python, "-m", "studio", "quantize", "--model", str(pruned), *calibration, "--device", "cpu",
                 "--dtype", "float32", "--out", str(tmp / f"quantized-{attempt}")], env))
            runs["studio"].append(_timed(
                [python, "-m", "studio", "compress", "--model", str(model), "--plan", "uniform-20", *calibration,
                 "--device", "cpu", "--dtype", "float32", "--out", str(tmp / f"export-{attempt}")], env))
            runs["raw"].append(_timed(
                [python, "-c", RAW_GPTQMODEL, str(pruned), str(tmp / f"raw-{attempt}"), str(args.samples),
                 str(args.seqlen), str(CALIBRATION)], env))
    best = {kind: min(times) for kind, times in runs.items()}
    print(f"model: {args.layers} layers, hidden {args.hidden}, FFN {args.ffn}; {args.samples} x {args.seqlen} tokens")
    print(f"studio compress {best['studio']:.1f} s, raw GPTQModel {best['raw']:.1f} s: "
          f"ratio {best['studio'] / best['raw']:.2f} (goal <= 1.15)")
    print(f"of which: studio prune alone {prune_seconds:.1f} s; studio quantize alone {best['studio_quantize']:.1f} s "
          f"({best['studio_quantize'] / best['raw']:.2f} x raw)")
    print(json.dumps({"runs": runs, "best": best, "prune_seconds": prune_seconds, "ratio": best["studio"] / best["raw"]}))


if __name__ == "__main__":
    main()
