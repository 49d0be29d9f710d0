"""Analysis tab: scores, widths, GPTQ loss, sizes and quality of a job, and two jobs compared.

Quality is both metrics per model stage (base, pruned, compressed): perplexity, and the lm-eval task
scores (such as fact recall) when the job's evaluation ran tasks; with a second job, every metric of
the two jobs side by side, stage by stage.

A figure with nothing to show is hidden rather than left as an empty box; the status line says
which results are missing and why (not run by the job, or not finished yet).
"""

from __future__ import annotations

from functools import partial

from types import SimpleNamespace

import gradio as gr

from studio.jobs.results import analysis_summary, job_outputs, quality_summary
from studio.jobs.client import job_store
from studio.jobs.store import FINAL_STATUSES, UnknownJob
from studio.plots import (
    compare_jobs_figure,
    gptq_loss_figure,
    quality_figure,
    quality_metrics,
    quality_metrics_figure,
    score_distribution_figure,
    size_breakdown_figure,
    widths_figure,
)
from studio.ui.components import OpenDropdown
from studio.ui.context import AnalysisTab, Shared, StudioContext

FIGURES = ("scores", "widths", "gptq", "sizes", "quality", "comparison")


def job_data(job_id: str, ctx: StudioContext) -> dict:
    """The summarised analysis data of one job (what the figures are drawn from)."""
    store = job_store(ctx.home)
    try:
        spec = store.spec(job_id)
    except (UnknownJob, FileNotFoundError) as err:
        raise ValueError(f"job: no job {job_id!r}") from err
    return {
        "id": job_id,
        "status": store.get(job_id)["status"],
        # What the job asked for, so a missing result can say "not run" rather than "not yet".
        "asked": {"gptq": spec.quantize is not None, "perplexity": spec.evaluate is not None},
        **analysis_summary(store.job_dir(job_id), spec),
    }


def figures(data: dict) -> list:
    """Score, width, GPTQ, size and quality figures of one job (None where there is no data yet)."""
    name = data["output"]
    scores = score_distribution_figure(data["scores"]["layers"], f"{name}: FLAP {data['scores']['metric']} scores per layer") if data["scores"] else None
    widths = (
        widths_figure(data["widths"], data["original"], data["attention"], data["kv_roles"], f"{name}: kept FFN width")
        if data["widths"]
        else None
    )
    gptq = gptq_loss_figure([SimpleNamespace(**r) for r in data["gptq"]]) if data["gptq"] else None
    sizes = (
        size_breakdown_figure(data["sizes"], "Size by component: bars estimated, ◆ measured", measured=data["measured_bytes"])
        if data["sizes"]
        else None
    )
    quality = quality_figure(data["perplexity"]) if data["perplexity"] else None
    return [scores, widths, gptq, sizes, quality]


def missing_results(data: dict) -> tuple[list[str], list[str]]:
    """(results the job did not ask for, results it asked for that are not there yet)."""
    not_run = [k for k, asked in data["asked"].items() if not asked]
    missing = [k for k in ("scores", "widths", "gptq", "perplexity") if not data[k] and k not in not_run]
    return not_run, missing


def status_line(data: dict) -> str:
    not_run, missing = missing_results(data)
    measured = {k: v for k, v in data["measured_bytes"].items() if v}
    parts = [f"**{data['output']}** (`{data['id']}`, {data['status']})"]
    if data["sizes"]:
        est = {k: sum(v.values()) for k, v in data["sizes"].items() if k != "original"}
        parts.append("estimated from the config: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in est.items()))
    if measured:
        parts.append("measured weight files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in measured.items()))
    if not_run:
        parts.append("not run (the job did not ask for it): " + ", ".join(not_run))
    if missing:
        why = "the job stopped before them" if data["status"] in FINAL_STATUSES else "not available yet"
        parts.append(f"{why}: " + ", ".join(missing))
    return " · ".join(parts)


def show(job_a: str, job_b: str | None, ctx: StudioContext):
    """Status line, job_a's figures and the comparison with job_b (None where there is nothing).

    The last value is which figures exist (for hiding the empty ones; not part of the API).
    """
    if not job_a:
        return ["⚠ job: choose a job to analyse", *[None] * len(FIGURES), [False] * len(FIGURES)]
    try:
        a = job_data(job_a, ctx)
        b = job_data(job_b, ctx) if job_b and job_b != job_a else None
    except ValueError as err:
        return [f"⚠ {err}", *[None] * len(FIGURES), [False] * len(FIGURES)]
    status = status_line(a)
    compare = None
    if b is not None:
        status += "  \n" + status_line(b)
        compare = compare_jobs_figure(a, b)
    shown = [*figures(a), compare]
    return [status, *shown, [figure is not None for figure in shown]]


def job_quality(job_id: str, ctx: StudioContext) -> dict:
    """A job's output name, perplexity and task scores by model stage (`quality_summary`)."""
    store = job_store(ctx.home)
    try:
        spec = store.spec(job_id)
    except (UnknownJob, FileNotFoundError) as err:
        raise ValueError(f"job: no job {job_id!r}") from err
    return {"output": spec.output, **quality_summary(job_outputs(store.job_dir(job_id)), spec)}


def quality_figures(job_a: str, job_b: str | None, ctx: StudioContext) -> list:
    """[job_a's lm-eval task scores per stage, job_a vs job_b on every quality metric] (None where
    there is nothing to draw: no tasks run, no second job, neither job evaluated)."""
    if not job_a:
        return [None, None]
    try:
        a = job_quality(job_a, ctx)
        b = job_quality(job_b, ctx) if job_b and job_b != job_a else None
    except ValueError:
        return [None, None]  # the status line of `show` says what is wrong
    tasks = quality_metrics(None, a["tasks"])
    tasks_figure = None
    if tasks:
        tasks_figure = quality_metrics_figure([(a["output"], tasks)], f"{a['output']}: lm-eval task scores")
    compare = None
    if b is not None:
        names = (a["output"], b["output"]) if a["output"] != b["output"] else (f"{a['output']} (A)", f"{b['output']} (B)")
        jobs = [(name, quality_metrics(job["perplexity"], job["tasks"])) for name, job in zip(names, (a, b))]
        if any(metrics for _, metrics in jobs):
            compare = quality_metrics_figure(jobs, f"Quality: {names[0]} vs {names[1]}, per model stage")
    return [tasks_figure, compare]


def show_quality(job_a: str, job_b: str | None, ctx: StudioContext) -> list:
    return [gr.update(value=figure, visible=figure is not None) for figure in quality_figures(job_a, job_b, ctx)]


def job_choices(ctx: StudioContext):
    states = list(reversed(job_store(ctx.home).all_jobs()))
    return [(f"{s['output']} · {s['status']} · {s['id']}", s["id"]) for s in states]


def create_ui(ctx: StudioContext, shared: Shared) -> AnalysisTab:
    """Build the tab; returns its job dropdowns and their refresh for the page-load wiring."""
    with gr.Row():
        job_a = OpenDropdown([], label="Job", elem_id="analysis-job", scale=3, allow_custom_value=True)
        job_b = OpenDropdown([], label="Compare with (optional)", elem_id="analysis-compare", scale=3,
                             allow_custom_value=True)
        refresh_button = gr.Button("Refresh list", scale=1)
        show_button = gr.Button("Show", variant="primary", elem_id="analysis-show", scale=1)
    status = gr.Markdown(elem_id="analysis-status")
    with gr.Row():
        scores_plot = gr.Plot(label="Fluctuation scores", elem_id="plot-scores", visible=False)
        widths_plot = gr.Plot(label="Kept width", elem_id="plot-widths", visible=False)
    with gr.Row():
        gptq_plot = gr.Plot(label="GPTQ loss", elem_id="plot-gptq", visible=False)
        sizes_plot = gr.Plot(label="Sizes (estimated and measured)", elem_id="plot-sizes", visible=False)
    with gr.Row():
        quality_plot = gr.Plot(label="Quality", elem_id="plot-quality", visible=False)
        compare_plot = gr.Plot(label="Comparison", elem_id="plot-compare", visible=False)
    tasks_plot = gr.Plot(label="Downstream tasks (lm-eval)", elem_id="plot-tasks", visible=False)
    quality_compare_plot = gr.Plot(label="Quality of the two jobs", elem_id="plot-quality-compare", visible=False)
    quality_plots = [tasks_plot, quality_compare_plot]
    plots = [scores_plot, widths_plot, gptq_plot, sizes_plot, quality_plot, compare_plot]
    present = gr.State([False] * len(FIGURES))

    def refresh_choices(a, b, prefer=None):
        choices = job_choices(ctx)
        ids = [c[1] for c in choices]
        if prefer in ids:
            a = prefer
        return (
            gr.update(choices=choices, value=a if a in ids else (ids[0] if ids else None)),
            gr.update(choices=[("—", "")] + choices, value=b if b in ids else ""),
        )

    def show_present(flags):
        return [gr.update(visible=bool(flag)) for flag in flags]

    refresh_button.click(refresh_choices, [job_a, job_b], [job_a, job_b], api_visibility="private")
    job_a.focus(refresh_choices, [job_a, job_b], [job_a, job_b], api_visibility="private")
    job_b.focus(refresh_choices, [job_a, job_b], [job_a, job_b], api_visibility="private")
    draw_quality = partial(show_quality, ctx=ctx)
    show_button.click(
        partial(show, ctx=ctx), [job_a, job_b], [status, *plots, present], api_name="job_plots"
    ).then(show_present, present, plots, api_visibility="private").then(
        draw_quality, [job_a, job_b], quality_plots, api_visibility="private"
    )
    # A job that finishes while the page is open becomes the analysed job, drawn at once.
    shared.finished_job.change(
        lambda job, a, b: refresh_choices(a, b, prefer=job), [shared.finished_job, job_a, job_b], [job_a, job_b],
        api_visibility="private",
    ).then(partial(show, ctx=ctx), [job_a, job_b], [status, *plots, present], api_visibility="private").then(
        show_present, present, plots, api_visibility="private"
    ).then(draw_quality, [job_a, job_b], quality_plots, api_visibility="private")

    def job_plot_data(job_id: str) -> dict:
        """The summarised data behind a job's analysis figures (quantiles, widths, losses, sizes)."""
        try:
            return job_data(job_id, ctx)
        except ValueError as err:
            raise gr.Error(str(err)) from err

    gr.api(job_plot_data, api_name="job_plot_data")
    return AnalysisTab(job=job_a, compare=job_b, refresh_choices=refresh_choices)
