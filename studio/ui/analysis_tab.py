"""Analysis tab: scores, widths, GPTQ loss, sizes and quality of a job, and two jobs compared."""

from __future__ import annotations

from functools import partial

from types import SimpleNamespace

import gradio as gr

from studio.job_results import analysis_summary
from studio.jobs.client import job_store
from studio.jobs.store import UnknownJob
from studio.plots import (
    compare_widths_figure,
    gptq_loss_figure,
    quality_figure,
    score_distribution_figure,
    size_breakdown_figure,
    widths_figure,
)
from studio.ui.context import Shared, StudioContext


def job_data(job_id: str, ctx: StudioContext) -> dict:
    """The summarised analysis data of one job (what the figures are drawn from)."""
    store = job_store(ctx.home)
    try:
        spec = store.spec(job_id)
    except (UnknownJob, FileNotFoundError) as err:
        raise gr.Error(f"job: no job {job_id!r}") from err
    return {"id": job_id, "status": store.get(job_id)["status"], **analysis_summary(store.job_dir(job_id), spec)}


def figures(data: dict) -> list:
    """Score, width, GPTQ, size and quality figures of one job (None where there is no data yet)."""
    name = data["output"]
    scores = score_distribution_figure(data["scores"]["layers"], f"{name}: FLAP {data['scores']['metric']} scores per layer") if data["scores"] else None
    widths = (
        widths_figure(data["widths"], data["original"], data["attention"], data["kv_shared"], f"{name}: kept FFN width")
        if data["widths"]
        else None
    )
    gptq = gptq_loss_figure([SimpleNamespace(**r) for r in data["gptq"]]) if data["gptq"] else None
    sizes = size_breakdown_figure(data["sizes"], f"{name}: estimated size by component") if data["sizes"] else None
    quality = quality_figure(data["perplexity"]) if data["perplexity"] else None
    return [scores, widths, gptq, sizes, quality]


def _status_line(data: dict) -> str:
    missing = [k for k in ("scores", "widths", "gptq", "perplexity") if not data[k]]
    measured = {k: v for k, v in data["measured_bytes"].items() if v}
    parts = [f"**{data['output']}** (`{data['id']}`, {data['status']})"]
    if measured:
        parts.append("measured weights: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in measured.items()))
    if missing:
        parts.append("not available yet: " + ", ".join(missing))
    return " · ".join(parts)


def show(job_a: str, job_b: str | None, ctx: StudioContext):
    """Status line and figures of job_a (and the width comparison with job_b, if given)."""
    if not job_a:
        raise gr.Error("job: choose a job to analyse")
    a = job_data(job_a, ctx)
    status = _status_line(a)
    compare = None
    if job_b and job_b != job_a:
        b = job_data(job_b, ctx)
        status += "  \n" + _status_line(b)
        if a["widths"] and b["widths"] and len(a["widths"]) == len(b["widths"]):
            compare = compare_widths_figure(a["widths"], b["widths"], a["original"], (a["output"], b["output"]))
    return [status, *figures(a), compare]


def job_choices(ctx: StudioContext):
    states = list(reversed(job_store(ctx.home).all_jobs()))
    return [(f"{s['output']} · {s['status']} · {s['id']}", s["id"]) for s in states]


def create_ui(ctx: StudioContext, shared: Shared):
    """Build the tab; returns (refresh_choices, job, compare job) for the page-load wiring."""
    with gr.Row():
        job_a = gr.Dropdown([], label="Job", elem_id="analysis-job", scale=3, allow_custom_value=True)
        job_b = gr.Dropdown([], label="Compare with (optional)", elem_id="analysis-compare", scale=3, allow_custom_value=True)
        refresh_button = gr.Button("Refresh list", scale=1)
        show_button = gr.Button("Show", variant="primary", elem_id="analysis-show", scale=1)
    status = gr.Markdown(elem_id="analysis-status")
    with gr.Row():
        scores_plot = gr.Plot(label="Fluctuation scores", elem_id="plot-scores")
        widths_plot = gr.Plot(label="Kept width", elem_id="plot-widths")
    with gr.Row():
        gptq_plot = gr.Plot(label="GPTQ loss", elem_id="plot-gptq")
        sizes_plot = gr.Plot(label="Sizes", elem_id="plot-sizes")
    with gr.Row():
        quality_plot = gr.Plot(label="Quality", elem_id="plot-quality")
        compare_plot = gr.Plot(label="Comparison", elem_id="plot-compare")

    def refresh_choices(a, b):
        choices = job_choices(ctx)
        ids = [c[1] for c in choices]
        return (
            gr.update(choices=choices, value=a if a in ids else (ids[0] if ids else None)),
            gr.update(choices=[("—", "")] + choices, value=b if b in ids else ""),
        )

    refresh_button.click(refresh_choices, [job_a, job_b], [job_a, job_b], api_visibility="private")
    job_a.focus(refresh_choices, [job_a, job_b], [job_a, job_b], api_visibility="private")
    job_b.focus(refresh_choices, [job_a, job_b], [job_a, job_b], api_visibility="private")
    show_button.click(
        partial(show, ctx=ctx),
        [job_a, job_b],
        [status, scores_plot, widths_plot, gptq_plot, sizes_plot, quality_plot, compare_plot],
        api_name="job_plots",
    )

    def job_plot_data(job_id: str) -> dict:
        """The summarised data behind a job's analysis figures (quantiles, widths, losses, sizes)."""
        return job_data(job_id, ctx)

    gr.api(job_plot_data, api_name="job_plot_data")
    return refresh_choices, job_a, job_b
