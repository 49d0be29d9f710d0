"""Peak RSS of `quantize_checkpoint` per phase, in memory or offloaded (GPTQModel's LazyTurtle).

    python benchmarks/quantize_memory.py --model /work/scale/e4b4-pruned --out DIR [--offload] [--samples 1 --seqlen 64]

Samples the process's RSS every 0.2 s in a thread and prints the peak of each phase: building the
model (`load_model` or the meta shell), reading the FLAP biases, GPTQModel's `quantize` and `save`,
writing the biases back, copying the side files. For the whole-process peak run it under
`/usr/bin/time -v`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pruned (or stock) checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must not exist)")
    parser.add_argument("--offload", action="store_true", help="quantize_checkpoint(offload=True)")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    import psutil
    from transformers import AutoTokenizer

    import studio.gptq.quantize as quantize
    import studio.modeling
    from studio.calibration import CalibrationSpec, build_calibration_ids
    from studio.gptq.runtime import import_gptqmodel

    base = import_gptqmodel("gptqmodel.models.base")
    process = psutil.Process()
    phase, peaks = ["start"], {}

    def sample() -> None:
        while True:
            peaks[phase[0]] = max(peaks.get(phase[0], 0), process.memory_info().rss)
            time.sleep(0.2)

    def mark(owner, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapped(*positional, **keywords):
            phase[0] = name
            try:
                return original(*positional, **keywords)
            finally:
                phase[0] = f"after {name}"

        setattr(owner, name, wrapped)

    for owner, name in [
        (studio.modeling, "load_model"),
        (quantize, "_checkpoint_backed_shell"),
        (quantize, "_quantized_module_biases"),
        (base.BaseQModel, "quantize"),
        (base.BaseQModel, "save"),
        (quantize, "_restore_biases"),
        (quantize, "_copy_side_files"),
    ]:
        mark(owner, name)
    threading.Thread(target=sample, daemon=True).start()

    spec = CalibrationSpec(source=str(ROOT / "data" / "wikitext-2-valid.txt"), samples=args.samples, seqlen=args.seqlen)
    ids = build_calibration_ids(AutoTokenizer.from_pretrained(args.model), spec)
    started = time.perf_counter()
    quantize.quantize_checkpoint(
        args.model, args.out, ids, quantize.QuantizeSettings(dtype=args.dtype, calibration=spec),
        device="cpu", offload=args.offload,
    )
    seconds = time.perf_counter() - started
    time.sleep(0.5)
    print(f"offload={args.offload}: {seconds:.1f} s")
    for name, rss in peaks.items():
        print(f"  peak RSS during {name}: {rss / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
