"""Jobs tab: submit the current plan, watch every job's progress, read logs, cancel, open results.

Nothing here lives only in the page: jobs and their state are in the job store under STUDIO_HOME
(read on every timer tick), and the ids submitted from this browser, with the selected job, are
kept in the browser's local storage, so reloading the page or restarting the app loses nothing.
"""

from __future__ import annotations

from functools import partial

import html
import importlib.util
import time
from urllib.parse import quote

import gradio as gr

from studio.job_results import job_outputs
from studio.jobs.client import cancel, job_store, submit
from studio.ui import access
from studio.flap.settings import COMPENSATIONS
from studio.jobs.spec import parse_spec
from studio.jobs.stages import STAGE_NAMES
from studio.jobs.store import FINAL_STATUSES, UnknownJob, describe
from studio.plan_table import plan_from_state
from studio.ui.context import Shared, StudioContext

POLL_SECONDS = 1.5
LOG_LINES = 30
STATUS_COLORS = {
    "queued": "#6c757d",
    "running": "#219ebc",
    "done": "#2a9d8f",
    "failed": "#e63946",
    "cancelled": "#adb5bd",
}


def export_available() -> bool:
    return importlib.util.find_spec("studio.export") is not None


def build_spec(
    model_state, plan_state, output, calibration: dict, quantize: bool, evaluate: bool, eval_text: str, flap: dict | None = None
) -> dict:
    """The job spec mapping for the current model, plan and forms (validated by `parse_spec`).

    `flap` holds the form's FLAP choices (`compensation`, `sequential`); absent ones take the spec defaults.
    """
    if not model_state:
        raise ValueError("model: load a model first (Model & data tab)")
    if not model_state.get("checkpoint"):
        raise ValueError(f"model: {model_state['label']} has no weights here; jobs run on a checkpoint folder")
    if not plan_state:
        raise ValueError("plan: load or edit a plan first (Pruning plan tab)")
    plan = plan_from_state(plan_state)
    spec = {
        "model": model_state["checkpoint"],
        "output": (output or "").strip() or f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        "plan": plan.to_preset(),
        "flap": dict(flap or {}),
        "calibration": {
            "source": calibration["source"],
            "samples": int(calibration["samples"]),
            "seqlen": int(calibration["seqlen"]),
            "seed": int(calibration["seed"]),
        },
        "quantize": {} if quantize else False,
        "export": export_available(),
        "evaluate": {"source": eval_text, "seqlen": int(calibration["seqlen"]), "max_tokens": 4096} if evaluate else False,
    }
    return spec


def _fmt_seconds(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def job_row_html(state: dict, mine: bool, selected: bool) -> str:
    """One job: status, stage k of n, a progress bar for the stage's layers, elapsed and ETA."""
    times = describe(state)
    status = state["status"]
    progress = state.get("progress") or {}
    stage = state.get("stage") or "—"
    stage_index = STAGE_NAMES.index(stage) + 1 if stage in STAGE_NAMES else 0
    done, total = progress.get("done"), progress.get("total")
    if status == "done":
        stage_index, stage, fraction, detail = len(STAGE_NAMES), "finished", 1.0, ""
    elif total:
        fraction, detail = done / total, f"{progress.get('unit', 'layers')[:-1]} {done}/{total}"
    else:
        fraction, detail = 0.0, "starting" if status == "running" else ""
    error = state.get("error") or {}
    message = f"<div class='job-error'>{html.escape(error.get('message', ''))}</div>" if error else ""
    return (
        f"<div class='job-row{' selected' if selected else ''}' data-job='{state['id']}' data-status='{status}'>"
        f"<div class='job-head'><span class='job-status' style='background:{STATUS_COLORS.get(status, '#999')}'>{status}</span>"
        f"<b>{html.escape(state['output'])}</b> <code>{state['id']}</code>{' · submitted here' if mine else ''}</div>"
        f"<div class='job-stage'>stage {stage_index}/{len(STAGE_NAMES)}: <b>{stage}</b> {detail} · "
        f"elapsed {_fmt_seconds(times['elapsed_s'])} · ETA {_fmt_seconds(times['eta_s'])}</div>"
        f"<progress max='1' value='{fraction:.3f}'></progress>{message}</div>"
    )


def readable_log(lines: list[str]) -> list[str]:
    """Log lines as a terminal would show them: the last redraw of a progress bar, no blank lines."""
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in lines]
    return [line for line in shown if line.strip()][-LOG_LINES:]


def result_links(job_id: str, ctx: StudioContext) -> str:
    outputs = job_outputs(job_store(ctx.home).job_dir(job_id))
    lines = [f"**Results of `{job_id}`** in `{outputs.job_dir}`:"]
    for name, path in outputs.links().items():
        shown = path.removeprefix(str(outputs.job_dir) + "/")
        if path.endswith((".json", ".csv", ".safetensors")):
            lines.append(f"- {name}: [`{shown}`](/gradio_api/file={quote(path)})")
        else:
            lines.append(f"- {name}: `{shown}`")
    return "\n".join(lines) if len(lines) > 1 else f"`{job_id}` has no results yet."


def refresh(browser: dict, selected: str | None, ctx: StudioContext):
    """Job list HTML, selector choices, the selected job's log tail and results."""
    store = job_store(ctx.home)
    states = list(reversed(store.all_jobs()))
    browser = browser or {}
    mine = set(browser.get("jobs") or [])
    ids = [s["id"] for s in states]
    selected = selected if selected in ids else (browser.get("selected") if browser.get("selected") in ids else None)
    if selected is None and ids:
        selected = ids[0]
    rows = "".join(job_row_html(s, s["id"] in mine, s["id"] == selected) for s in states)
    listing = f"<div class='job-list'>{rows or '<i>No jobs yet.</i>'}</div>"
    log = "\n".join(readable_log(store.log_tail(selected, LOG_LINES * 3)))[-20000:] if selected else ""
    links = result_links(selected, ctx) if selected else ""
    choices = [(f"{s['output']} · {s['status']} · {s['id']}", s["id"]) for s in states]
    return listing, gr.update(choices=choices, value=selected), log, links


def submit_job(output, quantize, evaluate, model_state, plan_state, source, samples, seqlen, seed, ctx, user=None, flap=None):
    """Validate and queue the current model + plan; returns the job id and a message.

    `user` (from `access.require_submitter`) is recorded as the job's submitter.
    """
    calibration = {"source": source, "samples": samples, "seqlen": seqlen, "seed": seed}
    try:
        spec = parse_spec(build_spec(model_state, plan_state, output, calibration, quantize, evaluate, str(ctx.eval_text), flap))
        job_id = submit(spec, home=ctx.home)
    except (ValueError, FileNotFoundError) as err:
        raise gr.Error(str(err)) from err
    if user:
        access.record_submitter(job_store(ctx.home), job_id, user)
    return job_id, f"Submitted job `{job_id}` ({spec.output})."


def remember_job(job_id, browser):
    """Add a submitted job to the ids kept in the browser and select it."""
    browser = dict(browser or {})
    if job_id:
        browser["jobs"] = [*(browser.get("jobs") or []), job_id]
        browser["selected"] = job_id
    return browser, gr.update(value=job_id)


def cancel_job(job_id: str, ctx: StudioContext):
    if not job_id:
        raise gr.Error("job: select a job first")
    try:
        state = cancel(job_id, home=ctx.home)
    except UnknownJob as err:
        raise gr.Error(str(err)) from err
    note = "" if state["status"] in FINAL_STATUSES else " (it stops at its next layer boundary)"
    return f"Cancel requested for `{job_id}`: now {state['status']}{note}."


def job_status(job_id: str, ctx: StudioContext) -> dict:
    """The job's state from the store, with elapsed and ETA seconds (for API clients)."""
    try:
        state = job_store(ctx.home).get(job_id)
    except UnknownJob as err:
        raise gr.Error(str(err)) from err
    return {**state, **describe(state)}


def remember_selection(job_id, browser):
    browser = dict(browser or {})
    if job_id:
        browser["selected"] = job_id
    return browser


def create_ui(ctx: StudioContext, shared: Shared):
    """Build the tab; returns (timer, refresh inputs, refresh outputs, refresh) for the page load."""
    with gr.Row():
        output = gr.Textbox(label="Output name", placeholder="default: <plan>-<time>", scale=2)
        quantize = gr.Checkbox(True, label="GPTQ W4A16 after pruning")
        evaluate = gr.Checkbox(False, label="perplexity after compression")
        submit_button = gr.Button("Submit current plan", variant="primary", elem_id="submit-job", scale=1)
    with gr.Row():
        compensation = gr.Dropdown(
            list(COMPENSATIONS), value="bias", label="compensation of the removed channels",
            info="bias: FLAP's mean bias; refit: least-squares refit of the kept down_proj; none",
        )
        sequential = gr.Checkbox(False, label="sequential calibration (each layer on the pruned layers before it)")
    submit_message = gr.Markdown(elem_id="submit-message")
    if not export_available():
        gr.Markdown("_Export is not part of this installation yet: results stay in the job folder._")
    with gr.Row():
        with gr.Column(scale=3):
            listing = gr.HTML(elem_id="job-list")
        with gr.Column(scale=2):
            selected = gr.Dropdown([], label="Selected job", elem_id="job-select", allow_custom_value=True)
            cancel_button = gr.Button("Cancel selected job", variant="stop")
            cancel_message = gr.Markdown()
            links = gr.Markdown(elem_id="job-results")
    log = gr.Code(label="Log tail", language=None, lines=12, max_lines=18, elem_id="job-log")
    last_job = gr.Textbox(visible=False)
    timer = gr.Timer(POLL_SECONDS)

    cal = shared.calibration

    def submit_current_plan(output_name, quantize_after, evaluate_after, model_state, plan_state,
                            calibration_source, samples, seqlen, seed, compensation_choice="bias", sequential_choice=False,
                            profile: gr.OAuthProfile | None = None):
        # On a Space: signed-in users only, under the per-user job limit (Gradio fills `profile`).
        user = access.require_submitter(profile, job_store(ctx.home).all_jobs())
        flap = {"compensation": compensation_choice, "sequential": bool(sequential_choice)}
        return submit_job(output_name, quantize_after, evaluate_after, model_state, plan_state,
                          calibration_source, samples, seqlen, seed, ctx, user, flap)

    submit_button.click(
        submit_current_plan,
        [output, quantize, evaluate, shared.model_state, shared.plan_state,
         cal["source"], cal["samples"], cal["seqlen"], cal["seed"], compensation, sequential],
        [last_job, submit_message],
        api_name="submit_job",
    ).success(remember_job, [last_job, shared.browser_jobs], [shared.browser_jobs, selected], api_visibility="private")
    refresh_outputs = [listing, selected, log, links]
    refresh_inputs = [shared.browser_jobs, selected]
    timer.tick(partial(refresh, ctx=ctx), refresh_inputs, refresh_outputs, api_visibility="private",
               show_progress="hidden")
    selected.input(remember_selection, [selected, shared.browser_jobs], shared.browser_jobs, api_visibility="private")
    cancel_button.click(partial(cancel_job, ctx=ctx), selected, cancel_message, api_name="cancel_job")

    # API-only endpoints (no component): one job's state, and every job's.
    def job_status_api(job_id: str) -> dict:
        """State of one job from the job store, with elapsed_s and eta_s."""
        return job_status(job_id, ctx)

    def list_jobs_api() -> list:
        """Every job's state, oldest first, with elapsed_s and eta_s."""
        return [{**s, **describe(s)} for s in job_store(ctx.home).all_jobs()]

    gr.api(job_status_api, api_name="job_status")
    gr.api(list_jobs_api, api_name="list_jobs")
    return timer, refresh_inputs, refresh_outputs, (partial(refresh, ctx=ctx))
