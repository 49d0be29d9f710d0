"""`python -m studio compress`: FLAP-prune, GPTQ-quantize and export a vLLM-ready folder in one go."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from studio.calibration import CalibrationSpec
from studio.cli.prune import add_plan_arguments, resolve_plan_argument
from studio.export.settings import ExportSettings
from studio.flap.settings import FlapSettings
from studio.gptq.settings import DTYPES, QuantizeSettings

# What each job stage is called in the progress lines.
STAGE_LABELS = {
    "calibrate": "calibration",
    "statistics": "FLAP statistics",
    "prune": "FLAP pruning",
    "quantize": "GPTQ quantization",
    "export": "export",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="prune (FLAP), quantize (GPTQ W4A16) and export a vLLM-ready folder in one command",
        description="Run the card's recipe end to end: FLAP-prune the FFNs to the planned widths with bias "
        "compensation (or --compensation refit/none), quantize o_proj/gate_proj/up_proj/down_proj with GPTQ through GPTQModel (skipped with "
        "--no-quant), and write the export folder: safetensors shards with an index, config.json, "
        "quantize_config.json, quant_log.csv, tokenizer and processor files, vllm_config.yaml, the "
        "vllm_flap_plugin package with its egg-info, and a generated README.md model card. It runs the "
        "job pipeline in this process (the stages of `python -m studio jobs`), so both FLAP and GPTQ "
        "calibrate on the same token windows, tokenised once. The job's folder and intermediate checkpoints "
        "live in a temporary folder beside --out and are removed; --out appears only when everything succeeded.",
    )
    parser.add_argument("--model", required=True, help="base checkpoint folder (or Hugging Face model id)")
    add_plan_arguments(parser)
    CalibrationSpec.add_arguments(parser)
    FlapSettings.add_arguments(parser)
    parser.add_argument("--no-quant", action="store_true", help="export the pruned model unquantized (servable by vLLM on CPU)")
    QuantizeSettings.add_arguments(parser)
    parser.add_argument(
        "--dtype",
        default=QuantizeSettings.dtype,
        choices=DTYPES,
        help="dtype the model is loaded in for every stage, and of the unquantized tensors in the export "
        f"(default: {QuantizeSettings.dtype})",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device for FLAP and GPTQ, e.g. cuda:0 (default: the first GPU if any, else the CPU)",
    )
    parser.add_argument(
        "--max-shard-size",
        default=ExportSettings.max_shard_size,
        help=f"largest safetensors shard, e.g. 2GB or 500MB (default: {ExportSettings.max_shard_size})",
    )
    parser.add_argument("--name", default=None, help="model name in the card and vllm_config.yaml (default: the folder name)")
    parser.add_argument("--out", required=True, type=Path, help="export folder")
    parser.set_defaults(func=run)


def job_spec(args, out: Path):
    """The job spec of the command line: what `compress` runs, checked before any work starts."""
    from dataclasses import asdict

    from studio.jobs.spec import CALIBRATION_FIELDS, OUTPUT_NAME, parse_spec

    plan = resolve_plan_argument(args, args.model)
    calibration = CalibrationSpec.from_args(args)
    flap = FlapSettings.from_args(args)
    quantize = None if args.no_quant else QuantizeSettings.from_args(args, calibration)
    export = ExportSettings(max_shard_size=args.max_shard_size, name=args.name or out.name)
    if not OUTPUT_NAME.match(out.name):
        raise ValueError(f"--out: the folder name must be letters, digits, '.', '_' or '-' (at most 100), got {out.name!r}")
    return parse_spec(
        {
            "model": args.model,
            "output": out.name,
            "dtype": args.dtype,
            "plan": plan if isinstance(plan, float) else plan.to_preset(),
            "flap": asdict(flap),
            "calibration": {field: getattr(calibration, field) for field in CALIBRATION_FIELDS},
            "quantize": False if quantize is None else quantize.section(),
            "export": export.to_dict(),
            "evaluate": False,
        }
    )


class ProgressLines:
    """`[k/N] stage` when a stage starts and `  stage: done/total unit` as it goes, on stderr."""

    def __init__(self, spec):
        from studio.jobs.stages import STAGES

        self.running = [stage.name for stage in STAGES if stage.settings(spec) is not None]

    def stage(self, name: str) -> None:
        number = self.running.index(name) + 1
        print(f"[{number}/{len(self.running)}] {STAGE_LABELS.get(name, name)}", file=sys.stderr, flush=True)

    def progress(self, stage: str, done: int, total: int | None, unit: str) -> None:
        label = STAGE_LABELS.get(stage, stage)
        end = "\n" if done == total else ""
        print(f"\r  {label}: {done}/{total} {unit}", end=end, file=sys.stderr, flush=True)


def run(args) -> int:
    import json

    from studio.checkpoint import PRUNE_SUMMARY_FILE
    from studio.jobs.client import run_in_process
    from studio.jobs.stages import stage_dir
    from studio.jobs.store import JobStore
    from studio.paths import jobs_dir

    out = args.out.resolve()
    spec = job_spec(args, out)  # every input is checked before hours of work start
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ProgressLines(spec)

    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        job_id, _status = run_in_process(
            spec, home=work, device=args.device, echo=False, raise_failure=True,
            exports=out.parent, on_stage=lines.stage, on_progress=lines.progress,
        )  # fmt: skip
        prune_dir = stage_dir(JobStore(jobs_dir(work)).job_dir(job_id), "prune") / "model"
        summary = json.loads((prune_dir / PRUNE_SUMMARY_FILE).read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    export = json.loads((out / "export_summary.json").read_text())
    before, after = export["sizes_before"], export["sizes_after"]
    shards = len(list(out.glob("model*.safetensors")))
    widths = ", ".join(str(layer["kept_width"]) for layer in summary["layers"])
    print(f"export written to {out}{' (unquantized)' if args.no_quant else ''}")
    print(f"  widths: {widths}")
    print(
        f"  parameters: {before['params']:,} -> {after['params']:,}; tensor bytes: "
        f"{before['tensor_bytes']:,} -> {after['tensor_bytes']:,} ({after['tensor_bytes'] / before['tensor_bytes']:.1%}); "
        f"{shards} shard(s)"
    )
    print(f'  serve: export PYTHONPATH="{out}:$PYTHONPATH"; vllm serve {out} --config {out}/vllm_config.yaml')
    return 0
