"""The stage runner: a job's stages in order, each output persisted with a fingerprint.

Stages: calibrate -> statistics -> prune -> quantize -> export -> evaluate. Each one is a small
adapter that calls the module doing the work (`studio.calibration`, `studio.flap`, `studio.gptq.quantize`,
`studio.export`, `studio.eval`) and writes its result into `<job>/stages/<name>/` through an atomic
folder rename, together with `fingerprint.json`.

A fingerprint hashes what determines a stage's output: its part of the spec, the fingerprint of the
stage before it (so a change upstream invalidates everything after it) and the source code of the
modules it runs. A stage whose folder holds a matching fingerprint is finished and is not run again,
so a job restarted after a crash resumes at its first unfinished stage, and since each stage is
deterministic given its inputs, ends with the same result as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from studio.atomic import atomic_directory
from studio.checkpoint import gptq_compute_dtype, is_gptq_checkpoint, torch_dtype
from studio.jobs.spec import JobSpec
from studio.jobs.store import JobStore
from studio.paths import exports_dir

log = logging.getLogger("studio.jobs")

FINGERPRINT_FILE = "fingerprint.json"
CALIBRATION_FILE = "calibration.safetensors"
# Testing hook: "STAGE:K" holds the job at the K-th progress boundary of STAGE until it is
# cancelled or its process is killed, so tests can interrupt a stage at a known point.
FAILPOINT_ENV = "STUDIO_JOBS_FAILPOINT"


class Cancelled(Exception):
    """The job was cancelled; raised at a layer boundary."""


class StageUnavailable(RuntimeError):
    """The module a stage needs is not part of this installation."""


@dataclass(frozen=True)
class StageContext:
    """What a stage adapter gets: the spec, finished upstream outputs and progress reporting."""

    spec: JobSpec
    job_dir: Path
    outputs: dict[str, Path]
    device: str
    home: Path
    # progress(done, total, unit="layers"): records progress; raises Cancelled if asked to stop.
    progress: Callable[..., None]
    should_stop: Callable[[], bool]


@dataclass(frozen=True)
class Stage:
    name: str
    # The spec part that determines the output; None means the spec turns the stage off.
    settings: Callable[[JobSpec], Any]
    # Modules whose source code is part of the fingerprint (and which must be importable).
    modules: tuple[str, ...]
    run: Callable[[StageContext, Path], None]


# -- helpers shared by adapters ----------------------------------------------------------------


def require(module: str):
    """Import a module a stage needs, or fail the stage with a readable reason."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise StageUnavailable(f"{module} is not available in this installation ({err})") from err


def flap_pipeline():
    """The FLAP stage functions (`studio.flap.pipeline`)."""
    return require("studio.flap.pipeline")


def calibrate(ctx: StageContext, out: Path) -> None:
    """Tokenise the calibration text into [samples, seqlen] ids."""
    from safetensors.torch import save_file

    ids = flap_pipeline().calibration_ids(ctx.spec.model, ctx.spec.calibration)
    save_file({"input_ids": ids.contiguous()}, str(out / CALIBRATION_FILE))
    log.info("calibration: %d samples x %d tokens", ids.shape[0], ids.shape[1])


def load_calibration_ids(stage_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(stage_dir / CALIBRATION_FILE))["input_ids"]


def statistics(ctx: StageContext, out: Path) -> None:
    """FLAP's per-channel moments of every FFN's down_proj input, and the channel scores."""
    pipeline = flap_pipeline()
    from studio.flap.scores import model_scores
    from studio.flap.stats import collect_statistics
    from studio.modeling import load_model

    flap = ctx.spec.flap
    # Layerwise: the model stays on the CPU and one decoder layer at a time visits the device.
    model = load_model(ctx.spec.model, dtype=torch_dtype(ctx.spec.dtype), device=None if flap.layerwise else ctx.device)
    stats = collect_statistics(
        model,
        load_calibration_ids(ctx.outputs["calibrate"]),
        batch_size=flap.batch_size,
        device=ctx.device,
        layerwise=flap.layerwise,
        progress=ctx.progress,
        should_stop=ctx.should_stop,
    )
    scores = model_scores(model, stats, flap.metric)
    pipeline.save_statistics(out / pipeline.STATS_FILE, stats, scores, flap.metric)


def resolved_plan(spec: JobSpec, text_config, scores):
    """The `PruningPlan`: FLAP's global search for a ratio, else the per-layer table."""
    from studio.plans.plan import resolve_plan

    if "ratio" in spec.plan:
        return flap_pipeline().suggested_plan(scores, text_config, spec.plan["ratio"], spec.flap.max_ratio)
    try:
        return resolve_plan(spec.plan["preset"], text_config)
    except ValueError as err:
        raise ValueError(f"plan: {err}") from err


def prune(ctx: StageContext, out: Path) -> None:
    """Choose widths, prune with the spec's compensation and save the pruned checkpoint.

    A refit or sequential prune runs its own layer-by-layer pass over the job's calibration ids
    (on the device, one layer at a time when `flap.layerwise`); the checkpoint then carries the
    statistics its channels were chosen from.
    """
    pipeline = flap_pipeline()
    from studio.modeling import load_model, text_config_of

    flap = ctx.spec.flap
    calibrating = flap.calibrates_while_pruning
    device = ctx.device if calibrating and not flap.layerwise else None
    model = load_model(ctx.spec.model, dtype=torch_dtype(ctx.spec.dtype), device=device)
    stats_path = ctx.outputs["statistics"] / pipeline.STATS_FILE
    stats, scores, _metric = pipeline.load_statistics(stats_path)
    plan = resolved_plan(ctx.spec, text_config_of(model.config), scores)
    plan.validate()
    params_before = sum(p.numel() for p in model.parameters())
    ids = load_calibration_ids(ctx.outputs["calibrate"]) if calibrating else None
    stats, scores, results = pipeline.apply_plan(
        model, plan.widths, flap, stats, scores, ids, ctx.device, progress=ctx.progress, should_stop=ctx.should_stop
    )
    summary = pipeline.prune_summary(results, params_before, sum(p.numel() for p in model.parameters()), plan)
    summary.update(pipeline.describe_settings(flap))
    summary["calibration"] = asdict(ctx.spec.calibration)
    checkpoint = out / "model"
    model.save_pretrained(checkpoint)
    pipeline.load_tokenizer(ctx.spec.model).save_pretrained(checkpoint)
    pipeline.save_statistics(checkpoint / pipeline.STATS_FILE, stats, scores, flap.metric)
    (checkpoint / pipeline.SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    ctx.progress(len(plan.widths), len(plan.widths))


def quantize(ctx: StageContext, out: Path) -> None:
    """GPTQ of the pruned checkpoint on the job's calibration ids (GPTQModel, via studio.gptq.quantize)."""
    quantize_module = require("studio.gptq.quantize")
    settings = {
        **asdict(ctx.spec.quantize),
        "dtype": ctx.spec.dtype,
        "calibration": asdict(ctx.spec.calibration),
    }
    result = quantize_module.quantize_checkpoint(
        ctx.outputs["prune"] / "model",
        out / "model",
        calibration_ids=load_calibration_ids(ctx.outputs["calibrate"]),
        settings=settings,
        progress=ctx.progress,
        should_stop=ctx.should_stop,
        device=ctx.device,
    )
    log.info("quantize: %d modules in %.1f s", len(result.modules), result.seconds)


def final_checkpoint(ctx: StageContext) -> Path:
    """The checkpoint the job exports: quantized when the spec quantizes, else pruned."""
    if "quantize" in ctx.outputs:
        return ctx.outputs["quantize"] / "model"
    return ctx.outputs["prune"] / "model"


def export(ctx: StageContext, out: Path) -> None:
    """Publish the servable checkpoint (shards, plugin, vLLM config, card) to exports/<output>."""
    export_module = require("studio.export")
    target = exports_dir(ctx.home) / ctx.spec.output
    result = export_module.export_checkpoint(
        final_checkpoint(ctx),
        target,
        dtype=ctx.spec.dtype,  # storage dtype of an unquantized export; GPTQ checkpoints keep theirs
        base_model=ctx.spec.model,
        name=ctx.spec.output,
    )
    (out / "export.json").write_text(json.dumps({"path": str(result.out_dir), "quantized": result.quantized}, indent=2))
    log.info("export: %s", result.out_dir)


def evaluated_checkpoints(ctx: StageContext) -> list[tuple[str, str | Path]]:
    """What the evaluation compares: the base model, the pruned one and, if quantized, the compressed one."""
    checkpoints: list[tuple[str, str | Path]] = [("base", ctx.spec.model), ("pruned", ctx.outputs["prune"] / "model")]
    if "quantize" in ctx.outputs:
        checkpoints.append(("compressed", ctx.outputs["quantize"] / "model"))
    return checkpoints


def _load_for_evaluation(ctx: StageContext, checkpoint: str | Path):
    from studio.modeling import load_model

    if is_gptq_checkpoint(checkpoint):
        # GPTQ kernels compute in 16-bit; a float32 job evaluates its INT4 model in bfloat16.
        dtype = gptq_compute_dtype(ctx.spec.dtype).name
        return require("studio.gptq.quantize").load_quantized(checkpoint, device=ctx.device, dtype=dtype)
    return load_model(checkpoint, dtype=torch_dtype(ctx.spec.dtype), device=ctx.device)


def evaluate(ctx: StageContext, out: Path) -> None:
    """Perplexity of the base, pruned and compressed models: what each compression step cost.

    `perplexity.json` holds the final checkpoint's result at the top level and every model's
    result under "models".
    """
    eval_module = require("studio.eval")
    from transformers import AutoTokenizer

    settings = ctx.spec.evaluate
    text = eval_module.load_eval_text(settings.source)
    checkpoints = evaluated_checkpoints(ctx)
    results = {}
    for index, (label, checkpoint) in enumerate(checkpoints):
        model = _load_for_evaluation(ctx, checkpoint)
        result = eval_module.evaluate_perplexity(
            model,
            AutoTokenizer.from_pretrained(checkpoint),
            text,
            seqlen=settings.seqlen,
            stride=settings.stride,
            batch_size=settings.batch_size,
            max_tokens=settings.max_tokens,
            # One progress bar over all models: model `index` covers its share of the batches.
            progress=lambda done, total, i=index: ctx.progress(i * total + done, len(checkpoints) * total, "batches"),
        )
        # lm-eval tasks (evaluate.tasks) on the same loaded model, beside its perplexity.
        results[label] = {**result.to_dict(), **eval_module.task_results(model, checkpoint, settings.tasks, settings.batch_size)}
        del model
        log.info("perplexity (%s): %.4f over %d tokens", label, result.ppl, result.tokens)
    final_label = checkpoints[-1][0]
    (out / "perplexity.json").write_text(json.dumps({**results[final_label], "models": results}, indent=2) + "\n")
    if "export" in ctx.outputs:  # show the results in the exported model card too
        export_path = Path(json.loads((ctx.outputs["export"] / "export.json").read_text())["path"])
        require("studio.export").update_evaluation(export_path, results)


STAGES: tuple[Stage, ...] = (
    Stage(
        "calibrate",
        lambda s: {"model": s.model, "calibration": asdict(s.calibration)},
        ("studio.calibration", "studio.flap.pipeline"),
        calibrate,
    ),
    Stage(
        "statistics",
        lambda s: {"dtype": s.dtype, "metric": s.flap.metric, "batch_size": s.flap.batch_size, "layerwise": s.flap.layerwise},
        ("studio.flap.stats", "studio.flap.scores", "studio.flap.pipeline", "studio.modeling"),
        statistics,
    ),
    Stage(
        "prune",
        lambda s: {
            "plan": s.plan,
            "max_ratio": s.flap.max_ratio,
            "compensation": s.flap.compensation,
            "refit_damp": s.flap.refit_damp,
            "sequential": s.flap.sequential,
        },
        ("studio.flap", "studio.plans.plan", "studio.modeling"),
        prune,
    ),
    Stage(
        "quantize",
        lambda s: {"gptq": asdict(s.quantize), "dtype": s.dtype} if s.quantize is not None else None,
        ("studio.gptq.quantize", "studio.gptq.rules", "studio.modeling"),
        quantize,
    ),
    Stage(
        "export",
        lambda s: {"output": s.output, "dtype": s.dtype} if s.export else None,
        ("studio.export", "studio.export.plugin_files", "studio.vllm_plugin", "studio.sizes"),
        export,
    ),
    Stage(
        "evaluate",
        lambda s: {"evaluate": asdict(s.evaluate), "dtype": s.dtype} if s.evaluate is not None else None,
        ("studio.eval", "studio.gptq.quantize", "studio.modeling"),
        evaluate,
    ),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


# -- fingerprints ------------------------------------------------------------------------------


def code_version(modules: tuple[str, ...]) -> str:
    """A hash of the source files of `modules` (all files of a package) and of this runner."""
    digest = hashlib.sha256()
    for name in (*modules, __name__):
        for path in _source_files(name):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _source_files(module: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every module in it
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def fingerprint(stage: Stage, settings: Any, upstream: str) -> str:
    payload = {
        "stage": stage.name,
        "settings": settings,
        "upstream": upstream,
        "code": code_version(stage.modules),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stage_dir(job_dir: Path, name: str) -> Path:
    return job_dir / "stages" / name


def finished_fingerprint(path: Path) -> str | None:
    try:
        return json.loads((path / FINGERPRINT_FILE).read_text())["fingerprint"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


# -- the runner --------------------------------------------------------------------------------


class JobFailed(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage}: {message}")
        self.stage = stage
        self.message = message


def default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class StageRunner:
    """Runs one job's stages in its folder, recording progress in the job store."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        home: Path,
        device: str | None = None,
        stages: tuple[Stage, ...] = STAGES,
    ):
        self.store = store
        self.stages = stages
        self.job_id = job_id
        self.home = home
        self.job_dir = store.job_dir(job_id)
        self.spec = store.spec(job_id)
        self.device = device or default_device()
        self.failpoint = _parse_failpoint(os.environ.get(FAILPOINT_ENV, ""))
        self._stage: str | None = None
        self._stage_started = 0.0

    def run(self) -> str:
        """Run every unfinished stage; record and return the final status."""
        try:
            self._run_stages()
        except Cancelled:
            log.info("job %s cancelled during stage %s", self.job_id, self._stage)
            self.store.finish(self.job_id, "cancelled")
            return "cancelled"
        except JobFailed as err:
            log.error("%s", err)
            self.store.finish(self.job_id, "failed", {"stage": err.stage, "message": err.message})
            return "failed"
        log.info("job %s done", self.job_id)
        self.store.finish(self.job_id, "done")
        return "done"

    def _run_stages(self) -> None:
        upstream = ""
        outputs: dict[str, Path] = {}
        for stage in self.stages:
            self._stage = stage.name
            settings = stage.settings(self.spec)
            if settings is None:
                self._record_stage(stage.name, status="skipped")
                log.info("stage %s: skipped by the spec", stage.name)
                continue
            try:
                upstream = fingerprint(stage, settings, upstream)
            except OSError as err:
                raise JobFailed(stage.name, _os_error_message(err)) from err
            path = stage_dir(self.job_dir, stage.name)
            if finished_fingerprint(path) == upstream:
                self._record_stage(stage.name, status="reused", fingerprint=upstream)
                log.info("stage %s: already finished (fingerprint %s), reusing it", stage.name, upstream[:12])
            else:
                self._run_stage(stage, path, upstream, outputs)
            outputs[stage.name] = path

    def _run_stage(self, stage: Stage, path: Path, fp: str, outputs: dict[str, Path]) -> None:
        self._stage_started = time.time()
        self._record_stage(stage.name, status="running", started_at=self._stage_started)
        self.store.update(self.job_id, stage=stage.name, progress=self._progress_record(0, None, "layers"))
        log.info("stage %s: starting", stage.name)
        context = StageContext(
            spec=self.spec,
            job_dir=self.job_dir,
            outputs=dict(outputs),
            device=self.device,
            home=self.home,
            progress=self.progress,
            should_stop=self.should_stop,
        )
        try:
            with atomic_directory(path) as staging:
                stage.run(context, staging)
                (staging / FINGERPRINT_FILE).write_text(
                    json.dumps({"stage": stage.name, "fingerprint": fp, "finished_at": time.time()}, indent=2)
                )
        except Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes a readable job error
            if _is_cancelled(err):
                raise Cancelled(str(err)) from err
            if not isinstance(err, StageUnavailable):
                log.error("stage %s failed:\n%s", stage.name, traceback.format_exc())
            self._record_stage(stage.name, status="failed")
            raise JobFailed(stage.name, readable_error(err)) from err
        self._record_stage(stage.name, status="done", fingerprint=fp, finished_at=time.time())
        log.info("stage %s: done in %.1f s", stage.name, time.time() - self._stage_started)

    # -- progress and cancel, called by stage code at layer boundaries --------------------------

    def should_stop(self) -> bool:
        return self.store.cancel_requested(self.job_id)

    def progress(self, done: int, total: int | None, unit: str = "layers") -> None:
        self.store.update(self.job_id, progress=self._progress_record(done, total, unit))
        log.info("stage %s: %s %d of %s", self._stage, unit, done, total)
        if self.failpoint == (self._stage, done):
            self._hold_at_failpoint()
        if self.should_stop():
            raise Cancelled(f"cancelled at {unit[:-1] if unit.endswith('s') else unit} {done} of {total}")

    def _progress_record(self, done: int, total: int | None, unit: str) -> dict:
        return {"stage": self._stage, "done": done, "total": total, "unit": unit, "stage_started_at": self._stage_started}

    def _hold_at_failpoint(self) -> None:
        self.store.update(self.job_id, failpoint=f"{self._stage}:{self.failpoint[1]}")
        log.info("failpoint %s:%d reached; holding", *self.failpoint)
        while not self.should_stop():
            time.sleep(0.05)

    def _record_stage(self, name: str, **fields) -> None:
        def change(state: dict) -> dict:
            stages = dict(state.get("stages") or {})
            stages[name] = {**stages.get(name, {}), **fields}
            return {**state, "stages": stages}

        self.store.modify(self.job_id, change)


def _parse_failpoint(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    stage, _, index = value.partition(":")
    return stage, int(index)


def _is_cancelled(err: BaseException) -> bool:
    """Stage modules may raise their own Cancelled (e.g. studio.flap.stats.Cancelled)."""
    return type(err).__name__ == "Cancelled"


OOM_ADVICE = (
    "the accelerator ran out of memory. Use fewer calibration samples (calibration.samples) "
    "or a shorter sequence length (calibration.seqlen), or free the GPU of other processes"
)


def readable_error(err: BaseException) -> str:
    """One line a user can act on."""
    if _is_out_of_memory(err):
        return f"{OOM_ADVICE} ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if isinstance(err, OSError):
        return _os_error_message(err)
    if isinstance(err, StageUnavailable):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _is_out_of_memory(err: BaseException) -> bool:
    if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _os_error_message(err: OSError) -> str:
    """Name the path: disk full and permission errors are fixed there."""
    reason = err.strerror or str(err)
    path = err.filename
    if path is None:
        return f"{type(err).__name__}: {reason}"
    return f"{reason}: {path}"

