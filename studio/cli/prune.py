"""`python -m studio prune`: FLAP-prune a checkpoint's FFNs, compensating the removed channels."""

from __future__ import annotations

import sys
from pathlib import Path

from studio.calibration import DEFAULT_SOURCE
from studio.flap.settings import COMPENSATIONS, METRICS, FlapSettings


def add_calibration_arguments(parser, samples: int = 128, seqlen: int = 2048) -> None:
    """The calibration options shared by the commands that calibrate."""
    parser.add_argument(
        "--calib",
        default=DEFAULT_SOURCE,
        help=f"calibration text: a text file or hf:DATASET/CONFIG/SPLIT (default: {DEFAULT_SOURCE})",
    )
    parser.add_argument("--samples", type=int, default=samples, help=f"calibration samples (default: {samples})")
    parser.add_argument("--seqlen", type=int, default=seqlen, help=f"tokens per sample (default: {seqlen})")
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed (default: 0)")


def add_plan_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--plan", help="preset file or built-in preset name (see presets/)")
    group.add_argument(
        "--ratio",
        type=float,
        help="global FFN pruning ratio; per-layer widths are suggested from FLAP's scores",
    )
    parser.add_argument(
        "--max-layer-ratio",
        type=float,
        default=0.5,
        help="with --ratio: most any one layer may be pruned (default: 0.5)",
    )


def add_flap_arguments(parser) -> None:
    """The FLAP scoring options shared by `prune` and `compress`."""
    defaults = FlapSettings()
    parser.add_argument("--metric", default=defaults.metric, choices=METRICS, help="channel score (default: wifv)")
    parser.add_argument(
        "--compensation",
        default=defaults.compensation,
        choices=COMPENSATIONS,
        help="what replaces the removed channels: bias (FLAP's mean-folding bias), refit (least-squares refit of "
        "the kept down_proj columns and the bias to the full layer's output, one layer's Gram matrix at a time) "
        f"or none (default: {defaults.compensation})",
    )
    parser.add_argument(
        "--refit-damp",
        type=float,
        default=defaults.refit_damp,
        help=f"with --compensation refit: ridge weight relative to the Gram matrix's mean diagonal, pulling toward "
        f"the bias solution (default: {defaults.refit_damp})",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="calibrate each layer on the outputs of the already-pruned layers before it (one layer at a time; "
        "with --ratio the widths come from a one-shot statistics pass first)",
    )
    parser.add_argument(
        "--layerwise",
        action="store_true",
        help="one decoder layer at a time on --device: read from the checkpoint's shards when --model is a "
        "local safetensors folder (the model is never whole in memory), else moved from the CPU",
    )


# Settings field -> the flag that sets it, so that errors name what the user typed.
_FLAGS = {"refit_damp": "--refit-damp", "max_ratio": "--max-layer-ratio", "batch_size": "--batch-size"}


def flap_settings(args, batch_size: int = 1) -> FlapSettings:
    """The `FlapSettings` of parsed `prune`/`compress` arguments."""
    try:
        return FlapSettings(
            metric=args.metric,
            compensation=args.compensation,
            refit_damp=args.refit_damp,
            sequential=args.sequential,
            batch_size=batch_size,
            layerwise=args.layerwise,
            max_ratio=args.max_layer_ratio,
        )
    except ValueError as err:
        field, _, reason = str(err).partition(": ")
        flag = _FLAGS.get(field.removeprefix("flap."), field)
        raise ValueError(f"{flag}: {reason}") from err


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
    add_calibration_arguments(parser)
    add_flap_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="calibration samples per forward (default: 1)")
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


def calibration_spec(args):
    from studio.calibration import CalibrationSpec

    return CalibrationSpec(source=args.calib, samples=args.samples, seqlen=args.seqlen, seed=args.seed)


def run(args) -> int:
    from studio.flap.pipeline import prune_checkpoint

    plan = resolve_plan_argument(args, args.model)
    settings = flap_settings(args, args.batch_size)
    summary = prune_checkpoint(
        args.model, plan, calibration_spec(args), args.out, settings, device=args.device, progress=print_progress
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
