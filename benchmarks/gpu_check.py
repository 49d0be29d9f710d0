"""The prepared GPU check: FLAP on an E4B-shaped model at the card's calibration size, on one GPU.

Needs only torch and transformers (plus the studio's own modules): no vLLM, no GPTQModel, no
weights, no network. It builds a random-weight Gemma 4 with E4B's text config
(data/gemma-4-e4b-text-config.json) directly on the device and measures, side by side in one run:

- the statistics pass, batched (hooks on whole-decoder forwards) and layerwise (one decoder layer
  at a time over cached layer inputs), each against its baseline: the same decoder computation
  with the statistics recorder replaced by a no-op;
- pruning to the card's widths (presets/gemma4-lite-round2.yaml) with bias compensation;
- peak device memory of each step over the model's bytes.

On one H200 (card's size: 256 x 2048 tokens, 42 layers):

    python benchmarks/gpu_check.py --out gpu_check.json

On a CPU, at a reduced size, to prove the script works:

    python benchmarks/gpu_check.py --device cpu --layers 2 --samples 2 --seqlen 64 --batch-size 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.flap import stats as flap_stats  # noqa: E402
from studio.flap.prune import prune_model  # noqa: E402
from studio.flap.scores import model_scores  # noqa: E402
from studio.modeling import load_text_config  # noqa: E402
from studio.plans.plan import find_preset, load_plan  # noqa: E402

E4B_CONFIG = ROOT / "data" / "gemma-4-e4b-text-config.json"
CARD_PRESET = "gemma4-lite-round2"


class _NoHook:
    def remove(self) -> None:
        pass


def _no_recorder(layer, moments, index):
    return _NoHook()


def build_model(layers: int | None, dtype: torch.dtype, device: torch.device):
    """Gemma4ForCausalLM with E4B's text config (first `layers` layers), random weights on `device`."""
    from transformers import Gemma4ForCausalLM

    from studio.demo_model import config_from_text_config

    text_config = config_from_text_config(E4B_CONFIG, layers).text_config
    text_config.dtype = dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = Gemma4ForCausalLM(text_config).eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # varied norm scales, as the demo model has, so scores spread
        generator = torch.Generator(device=device).manual_seed(1)
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.5 * torch.randn(parameter.shape, generator=generator, device=device))
    return model


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole-process peak on a CPU


def timed(device: torch.device, step):
    _synchronize(device)
    _reset_peak(device)
    start = time.perf_counter()
    result = step()
    _synchronize(device)
    return result, time.perf_counter() - start, _peak_bytes(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: E4B's 42)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (use --device cpu for a reduced-size run)")
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    model, build_seconds, _ = timed(device, lambda: build_model(args.layers, dtype, device))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    text_config = model.config
    card = load_plan(find_preset(CARD_PRESET), load_text_config(E4B_CONFIG)).widths
    widths = card[: text_config.num_hidden_layers]
    ids = torch.randint(
        16, text_config.vocab_size, (args.samples, args.seqlen), generator=torch.Generator().manual_seed(0)
    )

    def statistics(layerwise: bool, baseline: bool, tokens: torch.Tensor = ids):
        recorder = flap_stats._down_proj_recorder
        if baseline:
            flap_stats._down_proj_recorder = _no_recorder
        try:
            return flap_stats.collect_statistics(
                model, tokens, batch_size=args.batch_size, device=device, layerwise=layerwise
            )
        finally:
            flap_stats._down_proj_recorder = recorder

    with torch.no_grad():
        passes = {}
        for name, layerwise, baseline in (
            ("batched_baseline", False, True),
            ("batched_statistics", False, False),
            ("layerwise_baseline", True, True),
            ("layerwise_statistics", True, False),
        ):
            # Each pass once on one batch, untimed: first calls (kernel choice, allocator growth,
            # float64 reductions) would otherwise land on whichever pass runs first.
            statistics(layerwise, baseline, ids[: args.batch_size])
            result, seconds, peak = timed(device, lambda: statistics(layerwise, baseline))
            passes[name] = {"seconds": seconds, "peak_bytes": peak}
            if name == "layerwise_statistics":
                stats = result
        scores = model_scores(model, stats, "wifv")
        _, prune_seconds, prune_peak = timed(device, lambda: prune_model(model, scores, stats.means, widths))

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "layers": text_config.num_hidden_layers,
        "tokens": f"{args.samples} x {args.seqlen}",
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "model_bytes": model_bytes,
        "build_seconds": build_seconds,
        "passes": passes,
        "batched_statistics_over_baseline": passes["batched_statistics"]["seconds"] / passes["batched_baseline"]["seconds"],
        "layerwise_statistics_over_baseline": passes["layerwise_statistics"]["seconds"] / passes["layerwise_baseline"]["seconds"],
        "layerwise_statistics_over_batched_baseline": passes["layerwise_statistics"]["seconds"] / passes["batched_baseline"]["seconds"],
        "prune_seconds": prune_seconds,
        "prune_peak_bytes": prune_peak,
        "widths_equal_card": [layer.mlp.intermediate_size for layer in model.model.layers] == widths,
        "peak_over_model_bytes": {k: v["peak_bytes"] / model_bytes for k, v in passes.items() if v["peak_bytes"]},
        "total_seconds": time.perf_counter() - started,
    }
    if device.type != "cuda":
        report["note"] = "CPU run: peaks are the process's peak RSS, not device memory"
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
