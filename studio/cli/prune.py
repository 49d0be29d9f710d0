"""`python -m studio prune`: FLAP-prune a checkpoint's FFNs, compensating the removed channels."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.calibration import CalibrationSpec
from studio.flap.settings import FlapSettings


def add_plan_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--plan", help="preset file or built-in preset name (see presets/)")
    group.add_argument(
        "--ratio",
        type=float,
        help="global FFN pruning ratio; per-layer widths are suggested from FLAP's scores",
    )
    FlapSettings.add_max_ratio_argument(parser)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="FLAP-prune the FFN layers of a Gemma 4 checkpoint",
        description="Collect FLAP statistics on calibration text, score FFN channels, prune each layer "
        "to its planned width, compensate the removed channels (--compensation), and write the pruned checkpoint together with "
        "flap_stats.safetensors and prune_summary.json. The output folder appears only when complete.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hugging Face model id")
    add_plan_arguments(parser)
    CalibrationSpec.add_arguments(parser)
    FlapSettings.add_arguments(parser, batch_size=True)
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: where the model loads)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.set_defaults(func=run)


def resolve_plan_argument(args, model: str):
    """A `PruningPlan` from --plan, or the float from --ratio."""
    from studio.modeling import load_text_config
    from studio.plans.plan import find_preset, load_plan

    if args.ratio is not None:
        if not 0 <= args.ratio < 1:
            raise ValueError(f"--ratio: must be in [0, 1), got {args.ratio}")
        return args.ratio
    return load_plan(find_preset(args.plan), load_text_config(_config_path(model)))


def _config_path(model: str) -> Path:
    path = Path(model)
    if path.exists():
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model, "config.json"))


def print_progress(done: int, total: int, unit: str) -> None:
    print(f"\r  statistics: {done}/{total} {unit}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def run(args) -> int:
    from studio.flap.pipeline import prune_checkpoint

    plan = resolve_plan_argument(args, args.model)
    summary = prune_checkpoint(
        args.model,
        plan,
        CalibrationSpec.from_args(args),
        args.out,
        FlapSettings.from_args(args),
        device=args.device,
        progress=print_progress,
    )
    totals = summary["totals"]
    widths = ", ".join(str(layer["kept_width"]) for layer in summary["layers"])
    print(f"pruned checkpoint written to {args.out}")
    print(f"  widths: {widths}")
    print(
        f"  FFN parameters: {totals['ffn_params_before']:,} -> {totals['ffn_params_after']:,} "
        f"({totals['ffn_params_removed_fraction']:.1%} removed); model: "
        f"{totals['model_params_before']:,} -> {totals['model_params_after']:,}"
    )
    return 0
