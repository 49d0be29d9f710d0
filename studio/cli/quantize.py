"""`python -m studio quantize`: GPTQ W4A16 of a (pruned) Gemma 4 checkpoint through GPTQModel."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.checkpoint import DTYPE_NAMES
from studio.cli.prune import add_calibration_arguments, calibration_spec


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
    add_calibration_arguments(parser, samples=256, seqlen=2048)
    add_gptq_arguments(parser)
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=DTYPE_NAMES,
        help="dtype the model is loaded and unquantized modules are saved in (default: bfloat16)",
    )
    parser.add_argument("--device", default=None, help="where GPTQ runs, e.g. cuda:0 or cpu (default: first GPU, else cpu)")
    parser.add_argument("--max-shard-size", default="4GB", help="safetensors shard size (default: 4GB)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.set_defaults(func=run)


def add_gptq_arguments(parser) -> None:
    """The GPTQ options shared by `quantize` and `compress` (the card's settings as defaults)."""
    parser.add_argument("--bits", type=int, default=4, help="weight bits: 2, 3, 4 or 8 (default: 4)")
    parser.add_argument("--group-size", type=int, default=128, help="quantization group size, -1 for none (default: 128)")
    parser.add_argument("--no-sym", action="store_true", help="asymmetric quantization (default: symmetric)")
    parser.add_argument("--no-desc-act", action="store_true", help="quantize columns in order (default: desc_act)")
    parser.add_argument("--damp-percent", type=float, default=0.01, help="Hessian damping fraction (default: 0.01)")


def quantize_settings(args, calibration):
    """`QuantizeSettings` from the options of `add_gptq_arguments` and `--dtype`."""
    from studio.gptq.quantize import QuantizeSettings

    return QuantizeSettings(
        bits=args.bits,
        group_size=args.group_size,
        sym=not args.no_sym,
        desc_act=not args.no_desc_act,
        damp_percent=args.damp_percent,
        dtype=args.dtype,
        calibration=calibration,
    )


def print_progress(done: int, total: int, unit: str) -> None:
    print(f"\r  GPTQ: {done}/{total} {unit}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def run(args) -> int:
    from transformers import AutoTokenizer

    from studio.calibration import build_calibration_ids
    from studio.gptq.quantize import quantize_checkpoint

    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"--model: no config.json in {args.model}")
    spec = calibration_spec(args)
    settings = quantize_settings(args, spec)
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
