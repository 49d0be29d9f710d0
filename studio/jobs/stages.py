"""The stage runner: a job's stages in order, each output persisted with a fingerprint.

Stages: calibrate -> statistics -> prune -> quantize -> export -> evaluate. Each one is a thin
adapter over the library's one implementation of the stage (`studio.flap.pipeline` for calibrate,
statistics and prune, `studio.gptq.quantize`, `studio.export`, `studio.eval`), the same code
`python -m studio prune/quantize/compress` runs: it passes the spec's settings, progress and cancel,
and writes its result into `<job>/stages/<name>/` through an atomic folder rename, together with
`fingerprint.json`.

A fingerprint hashes what determines a stage's output: its part of the spec, the fingerprint of the
stage before it (so a change upstream invalidates everything after it) and the source code of the
modules it runs. A stage whose folder holds a matching fingerprint is finished and is not run again,
so a job restarted after a crash resumes at its first unfinished stage, and since each stage is
deterministic given its inputs, ends with the same result as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
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
from studio.jobs.spec import JobSpec
from studio.jobs.store import JobStore
from studio.paths import exports_dir
from studio.progress import Cancelled

log = logging.getLogger("studio.jobs")

FINGERPRINT_FILE = "fingerprint.json"
CALIBRATION_FILE = "calibration.safetensors"
# Testing hook: "STAGE:K" holds the job at the K-th progress boundary of STAGE until it is
# cancelled or its process is killed, so tests can interrupt a stage at a known point.
FAILPOINT_ENV = "STUDIO_JOBS_FAILPOINT"


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
    # Where the export stage publishes `<exports>/<output>` (default: STUDIO_HOME/exports).
    exports: Path | None = None

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.spec.dtype)


@dataclass(frozen=True)
class Stage:
    name: str
    # The spec part that determines the output; None means the spec turns the stage off.
    settings: Callable[[JobSpec], Any]
    # Modules whose source code is part of the fingerprint.
    modules: tuple[str, ...]
    run: Callable[[StageContext, Path], None]


# -- the adapters: each calls the library's one implementation of its stage ---------------------


def calibrate(ctx: StageContext, out: Path) -> None:
    """Tokenise the calibration text into [samples, seqlen] ids, once for the whole job."""
    from safetensors.torch import save_file

    from studio.flap.pipeline import calibration_ids

    ids = calibration_ids(ctx.spec.model, ctx.spec.calibration)
    save_file({"input_ids": ids.contiguous()}, str(out / CALIBRATION_FILE))
    log.info("calibration: %d samples x %d tokens", ids.shape[0], ids.shape[1])


def load_calibration_ids(stage_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(stage_dir / CALIBRATION_FILE))["input_ids"]


def statistics(ctx: StageContext, out: Path) -> None:
    """FLAP's per-channel moments of every FFN's down_proj input, and the channel scores."""
    from studio.flap.pipeline import STATS_FILE, checkpoint_statistics, save_statistics

    flap = ctx.spec.flap
    stats, scores = checkpoint_statistics(
        ctx.spec.model,
        load_calibration_ids(ctx.outputs["calibrate"]),
        flap,
        device=ctx.device,
        dtype=ctx.torch_dtype,
        progress=ctx.progress,
        should_stop=ctx.should_stop,
    )
    save_statistics(out / STATS_FILE, stats, scores, flap.metric)


def resolved_plan(spec: JobSpec):
    """A `PruningPlan` from the per-layer table, or the ratio for FLAP's global search."""
    from transformers import AutoConfig

    from studio.modeling import text_config_of
    from studio.plans.plan import resolve_plan

    if "ratio" in spec.plan:
        return spec.plan["ratio"]
    try:
        return resolve_plan(spec.plan["preset"], text_config_of(AutoConfig.from_pretrained(spec.model)))
    except ValueError as err:
        raise ValueError(f"plan: {err}") from err


def prune(ctx: StageContext, out: Path) -> None:
    """Choose widths, prune with the spec's compensation and save the pruned checkpoint.

    The statistics stage's result chooses the channels; a refit or sequential prune runs its own
    layer-by-layer pass over the job's calibration ids. With `flap.layerwise` and a local
    safetensors checkpoint the model streams from its shards, as `python -m studio prune` does.
    """
    from studio.flap.pipeline import STATS_FILE, load_statistics, prune_checkpoint

    stats, scores, _metric = load_statistics(ctx.outputs["statistics"] / STATS_FILE)
    summary = prune_checkpoint(
        ctx.spec.model,
        resolved_plan(ctx.spec),
        ctx.spec.calibration,
        out / "model",
        ctx.spec.flap,
        device=ctx.device,
        dtype=ctx.torch_dtype,
        progress=ctx.progress,
        should_stop=ctx.should_stop,
        calibration_ids=load_calibration_ids(ctx.outputs["calibrate"]),
        statistics=(stats, scores),
    )
    layers = len(summary["layers"])
    ctx.progress(layers, layers)


def quantize(ctx: StageContext, out: Path) -> None:
    """GPTQ of the pruned checkpoint on the job's calibration ids (GPTQModel, via studio.gptq.quantize)."""
    from studio.gptq.quantize import quantize_checkpoint

    result = quantize_checkpoint(
        ctx.outputs["prune"] / "model",
        out / "model",
        calibration_ids=load_calibration_ids(ctx.outputs["calibrate"]),
        settings=ctx.spec.quantize,
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
    from studio.export import export_checkpoint

    settings = ctx.spec.export_settings
    target = (ctx.exports or exports_dir(ctx.home)) / ctx.spec.output
    result = export_checkpoint(
        final_checkpoint(ctx),
        target,
        max_shard_size=settings.max_shard_size,
        dtype=ctx.spec.dtype,  # storage dtype of an unquantized export; GPTQ checkpoints keep theirs
        base_model=ctx.spec.model,
        name=settings.name or ctx.spec.output,
    )
    (out / "export.json").write_text(json.dumps({"path": str(result.out_dir), "quantized": result.quantized}, indent=2))
    log.info("export: %s", result.out_dir)


def exported_folder(ctx: StageContext) -> Path:
    return Path(json.loads((ctx.outputs["export"] / "export.json").read_text())["path"])


def evaluated_checkpoints(ctx: StageContext) -> list[tuple[str, str | Path]]:
    """What the evaluation compares: the base model, the pruned one and, if quantized, the compressed one."""
    checkpoints: list[tuple[str, str | Path]] = [("base", ctx.spec.model), ("pruned", ctx.outputs["prune"] / "model")]
    if "quantize" in ctx.outputs:
        checkpoints.append(("compressed", ctx.outputs["quantize"] / "model"))
    return checkpoints


def evaluate(ctx: StageContext, out: Path) -> None:
    """Perplexity of the base, pruned and compressed models: what each compression step cost.

    `perplexity.json` holds the final checkpoint's result at the top level and every model's
    result under "models".
    """
    from studio.eval import evaluate_perplexity, load_eval_text
    from studio.eval.downstream import task_results
    from studio.eval.loading import load_eval_model, load_eval_tokenizer

    settings = ctx.spec.evaluate
    text = load_eval_text(settings.source)
    checkpoints = evaluated_checkpoints(ctx)
    results = {}
    for index, (label, checkpoint) in enumerate(checkpoints):
        model = load_eval_model(checkpoint, dtype=ctx.torch_dtype, device=ctx.device)
        result = evaluate_perplexity(
            model,
            load_eval_tokenizer(checkpoint),
            text,
            seqlen=settings.seqlen,
            stride=settings.stride,
            batch_size=settings.batch_size,
            max_tokens=settings.max_tokens,
            # One progress bar over all models: model `index` covers its share of the batches.
            progress=lambda done, total, i=index: ctx.progress(i * total + done, len(checkpoints) * total, "batches"),
        )
        # lm-eval tasks (evaluate.tasks) on the same loaded model, beside its perplexity.
        results[label] = {**result.to_dict(), **task_results(model, checkpoint, settings.tasks, settings.batch_size)}
        del model
        log.info("perplexity (%s): %.4f over %d tokens", label, result.ppl, result.tokens)
    final_label = checkpoints[-1][0]
    (out / "perplexity.json").write_text(json.dumps({**results[final_label], "models": results}, indent=2) + "\n")
    if "export" in ctx.outputs:  # show the results in the exported model card too
        from studio.export import update_evaluation

        update_evaluation(exported_folder(ctx), results)


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
        ("studio.flap.stats", "studio.flap.scores", "studio.flap.pipeline", "studio.modeling", "studio.streaming"),
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
        ("studio.flap", "studio.plans.plan", "studio.modeling", "studio.streaming"),
        prune,
    ),
    Stage(
        "quantize",
        lambda s: {"gptq": s.quantize.section(), "dtype": s.dtype} if s.quantize is not None else None,
        ("studio.gptq", "studio.modeling"),
        quantize,
    ),
    Stage(
        "export",
        lambda s: {"output": s.output, "dtype": s.dtype, **s.export_settings.to_dict()} if s.export else None,
        ("studio.export", "studio.export.plugin_files", "studio.vllm_plugin", "studio.sizes"),
        export,
    ),
    Stage(
        "evaluate",
        lambda s: {"evaluate": s.evaluate.to_dict(), "dtype": s.dtype} if s.evaluate is not None else None,
        ("studio.eval", "studio.gptq", "studio.modeling"),
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
        exports: Path | None = None,
        on_stage: Callable[[str], None] | None = None,
        on_progress: Callable[[str, int, int | None, str], None] | None = None,
    ):
        """`exports`: where the export stage publishes (default: `home`'s exports folder);
        `on_stage(name)` and `on_progress(stage, done, total, unit)` let a front end show the run
        as it goes (the `compress` command prints them)."""
        self.store = store
        self.exports = exports
        self.on_stage = on_stage
        self.on_progress = on_progress
        # The exception that failed the job, for callers that report it themselves (`compress`).
        self.failure: BaseException | None = None
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
            self.failure = err.__cause__ or err
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
        if self.on_stage is not None:
            self.on_stage(stage.name)
        context = StageContext(
            spec=self.spec,
            job_dir=self.job_dir,
            outputs=dict(outputs),
            device=self.device,
            home=self.home,
            progress=self.progress,
            should_stop=self.should_stop,
            exports=self.exports,
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
            cancelled = _cancelled_cause(err)
            if cancelled is not None:
                raise Cancelled(str(cancelled)) from err
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
        if self.on_progress is not None:
            self.on_progress(self._stage, done, total, unit)
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


def _cancelled_cause(err: BaseException) -> Cancelled | None:
    """The `Cancelled` behind `err`, if a library wrapped it on its way out (GPTQModel's worker threads)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Cancelled):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


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

