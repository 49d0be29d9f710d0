"""`python -m studio quantize`: GPTQ W4A16 of a (pruned) Gemma 4 checkpoint through GPTQModel."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.calibration import CalibrationSpec
from studio.gptq.settings import DTYPES, QuantizeSettings


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="GPTQ-quantize a Gemma 4 checkpoint (FLAP-pruned or stock) to W4A16",
        description="Quantize the o_proj, gate_proj, up_proj and down_proj of every decoder layer with "
        "GPTQ through GPTQModel, keeping q/k/v, the per-layer-embedding projections, the vision and audio "
        "towers, embeddings, norms, biases and lm_head unquantized (the card's dynamic rules). Writes a "
        "GPTQ v1 checkpoint with quantize_config.json and quant_log.csv (per-module GPTQ loss). The "
        "output folder appears only when complete.",
    )
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder (pruned or stock)")
    CalibrationSpec.add_arguments(parser)
    QuantizeSettings.add_arguments(parser)
    parser.add_argument(
        "--dtype",
        default=QuantizeSettings.dtype,
        choices=DTYPES,
        help=f"dtype the model is loaded and unquantized modules are saved in (default: {QuantizeSettings.dtype})",
    )
    parser.add_argument("--device", default=None, help="where GPTQ runs, e.g. cuda:0 or cpu (default: first GPU, else cpu)")
    parser.add_argument("--max-shard-size", default="4GB", help="safetensors shard size (default: 4GB)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.set_defaults(func=run)


def print_progress(done: int, total: int, unit: str) -> None:
    print(f"\r  GPTQ: {done}/{total} {unit}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def run(args) -> int:
    from transformers import AutoTokenizer

    from studio.calibration import build_calibration_ids
    from studio.gptq.quantize import quantize_checkpoint

    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"--model: no config.json in {args.model}")
    spec = CalibrationSpec.from_args(args)
    settings = QuantizeSettings.from_args(args, spec)
    ids = build_calibration_ids(AutoTokenizer.from_pretrained(args.model), spec)
    result = quantize_checkpoint(
        args.model,
        args.out,
        ids,
        settings,
        progress=print_progress,
        device=args.device,
        max_shard_size=args.max_shard_size,
    )
    losses = [record.loss for record in result.modules]
    worst = max(result.modules, key=lambda record: record.loss)
    print(f"quantized checkpoint written to {result.out_dir}")
    print(
        f"  {len(result.modules)} modules in {result.num_layers} layers, W{settings.bits} g{settings.group_size}; "
        f"GPTQ loss mean {sum(losses) / len(losses):.3g}, max {worst.loss:.3g} "
        f"(layer {worst.layer} {worst.module}); {result.seconds:.0f} s"
    )
    return 0
