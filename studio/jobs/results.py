"""What a finished (or partly finished) job left behind, read back for the analysis views.

A job folder holds one sub-folder per finished stage (see `studio.jobs.stages`): the FLAP statistics
and scores, the pruned checkpoint with its `prune_summary.json`, the quantized checkpoint with
`quant_log.csv`, the export record and the evaluation (perplexity and lm-eval task scores of each evaluated model). Each reader returns None when that stage has
not produced its output (yet, or because the spec skipped it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from studio.checkpoint import CONFIG_FILE, FLAP_STATS_FILE, PRUNE_SUMMARY_FILE, QUANT_LOG_FILE

# The models a job's evaluation compares, in pipeline order.
EVALUATED_STAGES = ("base", "pruned", "compressed")


@dataclass(frozen=True)
class JobOutputs:
    """Paths of a job's results (None where the stage has not written them)."""

    job_dir: Path
    statistics: Path | None
    pruned_model: Path | None
    prune_summary: Path | None
    quantized_model: Path | None
    quant_log: Path | None
    export: Path | None
    perplexity: Path | None

    def links(self) -> dict[str, str]:
        """Result name -> path, for the ones that exist."""
        names = {
            "statistics": self.statistics,
            "pruned checkpoint": self.pruned_model,
            "prune summary": self.prune_summary,
            "quantized checkpoint": self.quantized_model,
            "GPTQ log": self.quant_log,
            "exported checkpoint": self.export,
            "perplexity": self.perplexity,
        }
        return {name: str(path) for name, path in names.items() if path is not None}


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def job_outputs(job_dir: str | Path) -> JobOutputs:
    job_dir = Path(job_dir)
    stages = job_dir / "stages"
    export = None
    export_record = stages / "export" / "export.json"
    if export_record.is_file():
        export = _existing(Path(json.loads(export_record.read_text())["path"]))
    return JobOutputs(
        job_dir=job_dir,
        statistics=_existing(stages / "statistics" / FLAP_STATS_FILE),
        pruned_model=_existing(stages / "prune" / "model" / CONFIG_FILE) and stages / "prune" / "model",
        prune_summary=_existing(stages / "prune" / "model" / PRUNE_SUMMARY_FILE),
        quantized_model=_existing(stages / "quantize" / "model" / CONFIG_FILE) and stages / "quantize" / "model",
        quant_log=_existing(stages / "quantize" / "model" / QUANT_LOG_FILE),
        export=export,
        perplexity=_existing(stages / "evaluate" / "perplexity.json"),
    )


def find_statistics(path: str | Path) -> Path:
    """A `flap_stats.safetensors` from itself, a prune output folder or a job folder."""
    path = Path(str(path).strip()).expanduser()
    candidates = [path, path / FLAP_STATS_FILE, path / "stages" / "statistics" / FLAP_STATS_FILE]
    for candidate in candidates:
        if candidate.is_file() and candidate.name.endswith(".safetensors"):
            return candidate
    raise ValueError(f"statistics: no {FLAP_STATS_FILE} at {path} (give the file, a prune output or a job folder)")


def read_prune_summary(outputs: JobOutputs) -> dict | None:
    return json.loads(outputs.prune_summary.read_text()) if outputs.prune_summary else None


def read_perplexity(outputs: JobOutputs) -> dict | None:
    return json.loads(outputs.perplexity.read_text()) if outputs.perplexity else None


def read_quant_records(outputs: JobOutputs) -> list | None:
    if outputs.quant_log is None:
        return None
    from studio.gptq.quantize import read_quant_log

    return read_quant_log(outputs.quant_log)


def _checkpoint_bytes(folder: Path | None) -> int | None:
    if folder is None:
        return None
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors") if p.name != FLAP_STATS_FILE)


def analysis_summary(job_dir: str | Path, spec) -> dict:
    """Everything the analysis figures show for one job, summarised (JSON-safe, small).

    `spec` is the job's `JobSpec`. Parts whose stage has not finished are None.
    """
    from studio.flap.scores import standardize
    from studio.model_summary import attention_kinds, kv_roles
    from studio.modeling import load_text_config, original_widths
    from studio.plots import score_summary
    from studio.sizes import config_from_file, estimate_stages, model_shapes

    outputs = job_outputs(job_dir)
    text_config = load_text_config(spec.model)
    original = original_widths(text_config)
    summary = read_prune_summary(outputs)
    widths = [layer["kept_width"] for layer in summary["layers"]] if summary else None
    data: dict = {
        "output": spec.output,
        "original": original,
        "widths": widths,
        "attention": attention_kinds(text_config),
        "kv_roles": kv_roles(text_config),
        "kv_shared": [role == "shared" for role in kv_roles(text_config)],
        "scores": None,
        "gptq": None,
        "sizes": None,
        "measured_bytes": {
            "pruned": _checkpoint_bytes(outputs.pruned_model),
            "quantized": _checkpoint_bytes(outputs.quantized_model),
        },
        "perplexity": None,
        "links": outputs.links(),
    }
    if outputs.statistics is not None and widths is not None:
        from studio.flap.pipeline import load_statistics

        _, scores, metric = load_statistics(outputs.statistics)
        data["scores"] = {"metric": metric, "layers": score_summary(standardize(scores), widths)}
    records = read_quant_records(outputs)
    if records is not None:
        data["gptq"] = [{"layer": r.layer, "module": r.module, "loss": r.loss} for r in records]
    if widths is not None:
        # Unquantized tensors in the dtype the job saves them in.
        stages = estimate_stages(model_shapes(config_from_file(spec.model), spec.dtype), widths, spec.quantize)
        data["sizes"] = {stage: report.bytes_by_component() for stage, report in stages.items()}
    data.update(quality_summary(outputs, spec))
    return data


def quality_summary(outputs: JobOutputs, spec) -> dict:
    """{"perplexity": {stage: ppl or None}, "tasks": {stage: {task: {metric: value}}} or None} of the
    evaluated models (stages base, pruned, compressed); both None when the job has not evaluated."""
    ppl = read_perplexity(outputs)
    if ppl is None:
        return {"perplexity": None, "tasks": None}
    # Jobs record every evaluated model under "models"; older records hold only the final one.
    by_model = ppl.get("models") or {("compressed" if spec.quantize is not None else "pruned"): ppl}
    tasks = {label: by_model[label]["tasks"] for label in EVALUATED_STAGES if by_model.get(label, {}).get("tasks")}
    return {
        "perplexity": {label: by_model[label]["ppl"] if label in by_model else None for label in EVALUATED_STAGES},
        "tasks": tasks or None,
    }
