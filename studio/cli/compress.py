"""`python -m studio compress`: FLAP-prune, GPTQ-quantize and export a vLLM-ready folder in one go."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from studio.checkpoint import DTYPE_NAMES
from studio.cli.prune import (
    add_calibration_arguments,
    add_flap_arguments,
    add_plan_arguments,
    calibration_spec,
    flap_settings,
    resolve_plan_argument,
)
from studio.cli.quantize import add_gptq_arguments, quantize_settings


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="prune (FLAP), quantize (GPTQ W4A16) and export a vLLM-ready folder in one command",
        description="Run the card's recipe end to end: FLAP-prune the FFNs to the planned widths with bias "
        "compensation (or --compensation refit/none), quantize o_proj/gate_proj/up_proj/down_proj with GPTQ through GPTQModel (skipped with "
        "--no-quant), and write the export folder: safetensors shards with an index, config.json, "
        "quantize_config.json, quant_log.csv, tokenizer and processor files, vllm_config.yaml, the "
        "vllm_flap_plugin package with its egg-info, and a generated README.md model card. Both stages "
        "calibrate on the same token windows. Intermediate checkpoints live in a temporary folder beside "
        "--out and are removed; --out appears only when everything succeeded.",
    )
    parser.add_argument("--model", required=True, help="base checkpoint folder (or Hugging Face model id)")
    add_plan_arguments(parser)
    add_calibration_arguments(parser, samples=256, seqlen=2048)
    add_flap_arguments(parser)
    parser.add_argument("--no-quant", action="store_true", help="export the pruned model unquantized (servable by vLLM on CPU)")
    add_gptq_arguments(parser)
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=DTYPE_NAMES,
        help="dtype of the unquantized tensors in the export (default: bfloat16)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device for FLAP and GPTQ, e.g. cuda:0 (default: FLAP where the model loads, "
        "GPTQ on the first GPU if any, else the CPU)",
    )
    parser.add_argument("--max-shard-size", default="4GB", help="largest safetensors shard, e.g. 2GB or 500MB (default: 4GB)")
    parser.add_argument("--name", default=None, help="model name in the card and vllm_config.yaml (default: the folder name)")
    parser.add_argument("--out", required=True, type=Path, help="export folder")
    parser.set_defaults(func=run)


def _stage(number: int, total: int, text: str) -> None:
    print(f"[{number}/{total}] {text}", file=sys.stderr, flush=True)


def _progress(label: str):
    def report(done: int, total: int, unit: str) -> None:
        print(f"\r  {label}: {done}/{total} {unit}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report


def run(args) -> int:
    from studio.export import export_checkpoint
    from studio.export.shards import parse_size
    from studio.flap.pipeline import calibration_ids, prune_checkpoint

    # Check every input before hours of work start.
    plan = resolve_plan_argument(args, args.model)
    spec = calibration_spec(args)
    parse_size(args.max_shard_size)
    gptq_settings = None if args.no_quant else quantize_settings(args, spec)
    flap = flap_settings(args)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stages = 2 if args.no_quant else 3

    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        _stage(1, stages, "FLAP pruning")
        pruned = work / "pruned"
        summary = prune_checkpoint(args.model, plan, spec, pruned, flap, device=args.device, progress=_progress("statistics"))
        final = pruned
        if gptq_settings is not None:
            from studio.gptq.quantize import quantize_checkpoint

            _stage(2, stages, "GPTQ quantization")
            final = work / "quantized"
            quantize_checkpoint(
                pruned,
                final,
                calibration_ids(pruned, spec),
                gptq_settings,
                progress=_progress("GPTQ"),
                device=args.device,
                max_shard_size=args.max_shard_size,
            )
        _stage(stages, stages, "export")
        result = export_checkpoint(
            final, out, max_shard_size=args.max_shard_size, dtype=args.dtype, base_model=args.model, name=args.name
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    before, after = result.sizes_before, result.sizes_after
    widths = ", ".join(str(layer["kept_width"]) for layer in summary["layers"])
    print(f"export written to {result.out_dir}{' (unquantized)' if args.no_quant else ''}")
    print(f"  widths: {widths}")
    print(
        f"  parameters: {before.params:,} -> {after.params:,}; tensor bytes: "
        f"{before.tensor_bytes:,} -> {after.tensor_bytes:,} ({after.tensor_bytes / before.tensor_bytes:.1%}); "
        f"{len(result.shards.files)} shard(s)"
    )
    print(f'  serve: export PYTHONPATH="{result.out_dir}:$PYTHONPATH"; vllm serve {result.out_dir} --config {result.out_dir}/vllm_config.yaml')
    return 0
