"""The studio's own cost: `compress` against the same work done by the libraries directly.

    python benchmarks/bench_overhead.py [--layers 4 --hidden 512 --ffn 2048 --samples 8 --seqlen 256 --repeats 3]

Builds a scaled-up demo model and prunes it once (uniform-20); then runs, each in a fresh child
process, in turn (A B C D A B C D ...), `--repeats` times:
- studio: `python -m studio compress` on the demo model (FLAP pruning, GPTQ, the export with its
  plugin and card), the whole command;
- direct: the same computation with no studio orchestration, in one script: load the model once,
  tokenise the calibration once, FLAP statistics and bias-compensated pruning in memory (the
  studio's FLAP functions: no library implements FLAP), the pruned model handed straight to
  GPTQModel's Gemma 4 definition, quantized and saved. compress / direct is the studio's own
  overhead (goal <= 1.15): the intermediate checkpoint written and read back, the second
  tokenisation, the export, the CLI;
- raw GPTQ: GPTQModel alone on the pruned checkpoint (the model built by the studio's loader, as
  GPTQModel's own loader cannot hold per-layer widths), quantized and saved, nothing else: it does no
  FLAP, so compress / raw GPTQ also counts the FLAP statistics pass, about one forward pass of the
  model against GPTQ's several per layer;
- studio quantize: `python -m studio quantize` on the pruned checkpoint, against raw GPTQ.
Prints each side's wall and CPU seconds (mean, standard deviation, minimum), and each ratio's mean
and range over the repeats (each ratio from one round, so that the machine's drift hits both sides
alike; on a machine shared with other work the CPU-time ratio is the steadier one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CALIBRATION = ROOT / "data" / "wikitext-2-valid.txt"
PLAN = "uniform-20"

# argv: model (or pruned checkpoint), out, samples, seqlen, calibration text.
_COMMON = """
import sys, torch
from transformers import AutoTokenizer
from studio.calibration import CalibrationSpec, build_calibration_ids
from studio.modeling import load_model
from studio.gptq.quantize import QuantizeSettings, _calibration_rows, _gptq_definition
source, out, samples, seqlen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spec = CalibrationSpec(source=sys.argv[5], samples=samples, seqlen=seqlen)
settings = QuantizeSettings(dtype="float32", calibration=spec)
tokenizer = AutoTokenizer.from_pretrained(source)
ids = build_calibration_ids(tokenizer, spec)
model = load_model(source, dtype=settings.torch_dtype)
"""
_GPTQ = """
model.seqlen = 4096
gptq = _gptq_definition(model)(model, quantized=False, quantize_config=settings.gptqmodel_config("cpu"),
                               tokenizer=tokenizer, model_local_path=source)
gptq.quantize(_calibration_rows(ids), batch_size=1)
gptq.save(out)
"""
RAW_GPTQMODEL = _COMMON + _GPTQ
DIRECT = _COMMON + f"""
from studio.flap.prune import prune_model
from studio.flap.scores import model_scores
from studio.flap.settings import FlapSettings
from studio.flap.stats import collect_statistics
from studio.plans.plan import find_preset, load_plan
from studio.modeling import text_config_of
flap = FlapSettings()
plan = load_plan(find_preset({PLAN!r}), text_config_of(model.config))
stats = collect_statistics(model, ids, flap.batch_size)
prune_model(model, model_scores(model, stats, flap.metric), stats.means, plan.widths, flap.compensation)
""" + _GPTQ


def _timed(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, from the child's rusage) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from studio.demo_model import DemoModelShape, build_demo_model

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    python = sys.executable
    calibration = ["--calib", str(CALIBRATION), "--samples", str(args.samples), "--seqlen", str(args.seqlen)]
    script_args = [str(args.samples), str(args.seqlen), str(CALIBRATION)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shape = DemoModelShape(num_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.ffn)
        model = build_demo_model(tmp / "model", shape=shape)
        pruned = tmp / "pruned"
        _timed([python, "-m", "studio", "prune", "--model", str(model), "--plan", PLAN, *calibration,
                "--out", str(pruned)], env)
        sides = {
            "studio": lambda out: [python, "-m", "studio", "compress", "--model", str(model), "--plan", PLAN,
                                   *calibration, "--device", "cpu", "--dtype", "float32", "--out", out],
            "direct": lambda out: [python, "-c", DIRECT, str(model), out, *script_args],
            "raw_gptq": lambda out: [python, "-c", RAW_GPTQMODEL, str(pruned), out, *script_args],
            "studio_quantize": lambda out: [python, "-m", "studio", "quantize", "--model", str(pruned), *calibration,
                                            "--device", "cpu", "--dtype", "float32", "--out", out],
        }
        runs = {side: {"wall": [], "cpu": []} for side in sides}
        for attempt in range(args.repeats):
            for side, command in sides.items():
                wall, cpu = _timed(command(str(tmp / f"{side}-{attempt}")), env)
                runs[side]["wall"].append(wall)
                runs[side]["cpu"].append(cpu)
    pairs = [("studio", "direct"), ("studio", "raw_gptq"), ("direct", "raw_gptq"), ("studio_quantize", "raw_gptq")]
    ratios = {
        f"{a} / {b}": {clock: [x / y for x, y in zip(runs[a][clock], runs[b][clock])] for clock in ("wall", "cpu")}
        for a, b in pairs
    }
    print(f"model: {args.layers} layers, hidden {args.hidden}, FFN {args.ffn}; {args.samples} x {args.seqlen} tokens; "
          f"{args.repeats} rounds; wall seconds, then CPU seconds (user + system)")
    for side, clocks in runs.items():
        line = []
        for clock, times in clocks.items():
            stats = _summary(times)
            line.append(f"{clock} {stats['mean']:.1f} +- {stats['std']:.1f} (min {stats['min']:.1f})")
        print(f"{side:>16}: " + "; ".join(line))
    for name, clocks in ratios.items():
        line = []
        for clock, values in clocks.items():
            stats = _summary(values)
            line.append(f"{clock} {stats['mean']:.3f} +- {stats['std']:.3f} ({stats['min']:.3f}-{stats['max']:.3f})")
        goal = " (goal <= 1.15)" if name == "studio / direct" else ""
        print(f"{name:>28}: " + "; ".join(line) + goal)
    print(json.dumps({"runs": runs, "ratios": ratios}))


if __name__ == "__main__":
    main()
