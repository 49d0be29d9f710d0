"""Jobs tab: submit the current plan, watch every job's progress, read logs, cancel, retry, open results.

Nothing here lives only in the page: jobs and their state are in the job store under STUDIO_HOME
(read on every timer tick), and the ids submitted from this browser, with the selected job, are
kept in the browser's local storage, so reloading the page or restarting the app loses nothing.
"""

from __future__ import annotations

from functools import partial

import html
import re
import time
from pathlib import Path
from urllib.parse import quote

import gradio as gr

from studio.jobs.results import job_outputs
from studio.jobs.client import cancel, job_store, retry, submit
from studio.flap.settings import FlapSettings
from studio.ui import access
from studio.ui.components import OpenDropdown
from studio.jobs.spec import parse_spec
from studio.jobs.stages import STAGE_NAMES, STAGES
from studio.jobs.store import FINAL_STATUSES, UnknownJob, describe
from studio.plans.table import plan_from_state
from studio.ui.context import JobsTab, Shared, StudioContext

POLL_SECONDS = 1.5
LOG_LINES = 200  # lines shown after filtering
LOG_READ_LINES = 5000  # lines read from the end of job.log before filtering (GPTQModel is chatty; ~4 ms a tick)
CANCELLABLE = ("queued", "running")
FOLLOW_LOG_JS = """() => { setTimeout(() => {
    const log = document.querySelector('#job-log textarea'); if (log) log.scrollTop = log.scrollHeight;
}, 100); }"""
STATUS_COLORS = {
    "queued": "#6c757d",
    "running": "#219ebc",
    "done": "#2a9d8f",
    "failed": "#e63946",
    "cancelled": "#adb5bd",
}


# How each stage's record in state["stages"] is shown; a stage with no record has not started.
STAGE_MARKS = {
    "done": ("✓", "done"),
    "reused": ("✓", "reused from an earlier run"),
    "running": ("▶", "running"),
    "failed": ("✗", "failed"),
    "skipped": ("–", "not run: the job did not ask for it"),
}
UNIT_SINGULAR = {"layers": "layer", "batches": "batch", "modules": "module"}


def build_spec(
    model_state, plan_state, output, calibration: dict, quantize: bool, evaluate: bool, eval_text: str, flap: dict | None = None
) -> dict:
    """The job spec mapping for the current model, plan and forms (validated by `parse_spec`).

    `flap` holds the form's FLAP choices (`metric`, `compensation`, `refit_damp`, `sequential`); absent ones take the
    spec defaults.
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
        "export": True,
        "evaluate": {"source": eval_text, "seqlen": int(calibration["seqlen"]), "max_tokens": 4096} if evaluate else False,
    }
    return spec


def _fmt_seconds(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def unit_singular(unit: str) -> str:
    return UNIT_SINGULAR.get(unit, unit)


def stage_marks(state: dict, spec) -> list[tuple[str, str, str]]:
    """(stage, mark, meaning) for every stage, from the state's records and, for stages not yet
    reached, from the spec (a stage the spec turns off is "not run" before the runner skips it)."""
    records = state.get("stages") or {}
    marks = []
    for stage in STAGES:
        status = (records.get(stage.name) or {}).get("status")
        if status is None and spec is not None and stage.settings(spec) is None:
            status = "skipped"
        if status is None and state["status"] in FINAL_STATUSES:
            marks.append((stage.name, "·", "not reached"))
        elif status is None:
            marks.append((stage.name, "·", "waiting"))
        else:
            marks.append((stage.name, *STAGE_MARKS.get(status, ("?", status))))
    return marks


def job_row_html(state: dict, mine: bool, selected: bool, spec=None) -> str:
    """One job: status, every stage with its mark, a progress bar for the current stage, elapsed, ETA."""
    times = describe(state)
    status = state["status"]
    progress = state.get("progress") or {}
    stage = state.get("stage") or "—"
    stage_index = STAGE_NAMES.index(stage) + 1 if stage in STAGE_NAMES else 0
    done, total = progress.get("done"), progress.get("total")
    if status == "done":
        stage_index, stage, fraction, detail = len(STAGE_NAMES), "finished", 1.0, ""
    elif total and status == "running":
        fraction, detail = done / total, f"{unit_singular(progress.get('unit', 'layers'))} {done}/{total}"
    else:
        fraction, detail = 0.0, "starting" if status == "running" else ""
    error = state.get("error") or {}
    message = f"<div class='job-error'>{html.escape(error.get('message', ''))}</div>" if error else ""
    strip = "".join(
        f"<span class='job-step' data-stage='{name}' title='{html.escape(meaning)}'>{mark} {name}"
        f"{' (not run)' if meaning.startswith('not run') else ''}</span>"
        for name, mark, meaning in stage_marks(state, spec)
    )
    return (
        f"<div class='job-row{' selected' if selected else ''}' data-job='{state['id']}' data-status='{status}'>"
        f"<div class='job-head'><span class='job-status' style='background:{STATUS_COLORS.get(status, '#999')}'>{status}</span>"
        f"<b>{html.escape(state['output'])}</b> <code>{state['id']}</code>{' · submitted here' if mine else ''}</div>"
        f"<div class='job-steps'>{strip}</div>"
        f"<div class='job-stage'>stage {stage_index}/{len(STAGE_NAMES)}: <b>{stage}</b> {detail} · "
        f"elapsed {_fmt_seconds(times['elapsed_s'])} · ETA {_fmt_seconds(times['eta_s'])}</div>"
        f"<progress max='1' value='{fraction:.3f}'></progress>{message}</div>"
    )


# A line the studio's own logging wrote ("2026-12-01 08:09:46,862 INFO ..."; the worker's banner has
# no milliseconds). Everything else is third-party output (GPTQModel's tables, torch's W-lines).
STUDIO_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d+)? (?:(?P<level>[A-Z]+) )?")
PROGRESS_LINE = re.compile(r"stage (?P<stage>\w+): (?P<unit>\w+) \d+ of \S+$")


def readable_log(lines: list[str], everything: bool = False) -> list[str]:
    """The log as a user wants to read it.

    The last redraw of a terminal progress bar, no blank lines; unless `everything`: only the
    studio's own lines, warnings left out, an error's traceback kept, and one line per stage's
    progress that shows its latest value.
    """
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in lines]
    shown = [line for line in shown if line.strip()]
    if everything:
        return shown[-LOG_LINES:]
    kept: list[str] = []
    progress_at: dict[str, int] = {}
    in_error = False
    for line in shown:
        match = STUDIO_LINE.match(line)
        if match is None:
            if in_error:  # a traceback under "stage X failed:"
                kept.append(line)
            continue
        level = match.group("level")
        in_error = level in ("ERROR", "CRITICAL")
        if level == "WARNING":
            continue
        progress = PROGRESS_LINE.search(line)
        if progress:
            key = progress.group("stage")
            if key in progress_at:
                kept[progress_at[key]] = line
                continue
            progress_at[key] = len(kept)
        kept.append(line)
    return kept[-LOG_LINES:]


def _file_link(path: Path, label: str) -> str:
    size = path.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
    return (
        f"<a href='/gradio_api/file={quote(str(path))}' download='{html.escape(path.name)}'>"
        f"{html.escape(label)}</a> <small>({shown})</small>"
    )


def result_links(job_id: str, ctx: StudioContext) -> str:
    """HTML download links of a job's results; a checkpoint folder lists its files."""
    outputs = job_outputs(job_store(ctx.home).job_dir(job_id))
    items = []
    for name, shown in outputs.links().items():
        path = Path(shown)
        if path.is_file():
            items.append(f"<li>{name}: {_file_link(path, path.name)}</li>")
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            inner = "".join(f"<li>{_file_link(p, p.name)}</li>" for p in files)
            total = sum(p.stat().st_size for p in files) / 1e6
            items.append(
                f"<li><details><summary>{name}: {len(files)} files, {total:.1f} MB</summary>"
                f"<code>{html.escape(str(path))}</code><ul>{inner}</ul></details></li>"
            )
    if not items:
        return f"<p><code>{job_id}</code> has no results yet.</p>"
    return f"<p><b>Results of <code>{job_id}</code></b> (click to download):</p><ul class='job-results'>{''.join(items)}</ul>"


def newest_done(states: list[dict]) -> str:
    """Id of the job that finished last with status done ("" when none has)."""
    done = [s for s in states if s["status"] == "done"]
    return max(done, key=lambda s: (s.get("finished_at") or 0, s["id"]))["id"] if done else ""


def refresh(browser: dict, selected: str | None, seen_done: str | None, shown_log: str | None, everything: bool,
            ctx: StudioContext):
    """Job list, selection, log tail, results, Cancel's state and the newest finished job.

    `seen_done` is the newest finished job this page already knows (None before the first call):
    a job finishing after it becomes the selection and the new `Shared.finished_job`.
    """
    store = job_store(ctx.home)
    states = list(reversed(store.all_jobs()))
    browser = browser or {}
    mine = set(browser.get("jobs") or [])
    ids = [s["id"] for s in states]
    newest = newest_done(states)
    just_finished = seen_done is not None and newest and newest != seen_done
    if just_finished:
        selected = newest
    selected = selected if selected in ids else (browser.get("selected") if browser.get("selected") in ids else None)
    if selected is None and ids:
        selected = ids[0]
    specs = {}
    for s in states:
        try:
            specs[s["id"]] = store.spec(s["id"])
        except (OSError, ValueError):
            specs[s["id"]] = None  # shown without the spec's "not run" marks
    rows = "".join(job_row_html(s, s["id"] in mine, s["id"] == selected, specs[s["id"]]) for s in states)
    listing = f"<div class='job-list'>{rows or '<i>No jobs yet.</i>'}</div>"
    log = "\n".join(readable_log(store.log_tail(selected, LOG_READ_LINES), everything)) if selected else ""
    links = result_links(selected, ctx) if selected else ""
    choices = [(f"{s['output']} · {s['status']} · {s['id']}", s["id"]) for s in states]
    status = next((s["status"] for s in states if s["id"] == selected), None)
    cancellable = status in CANCELLABLE and not next(s for s in states if s["id"] == selected).get("cancel_requested")
    return (
        listing,
        gr.update(choices=choices, value=selected),
        gr.skip() if log == shown_log else log,  # an unchanged log keeps the reader's scroll position
        links,
        gr.update(interactive=bool(cancellable)),
        newest,
        newest if just_finished else gr.skip(),
    )


def submit_job(output, quantize, evaluate, model_state, plan_state, source, samples, seqlen, seed, ctx, user=None, flap=None):
    """Validate and queue the current model + plan; returns the job id and a message
    (no id and a warning naming the field when the spec is refused).

    `user` (from `access.require_submitter`) is recorded as the job's submitter.
    """
    try:
        calibration = {"source": access.text_source(source, "calibration.source", ctx.home),
                       "samples": samples, "seqlen": seqlen, "seed": seed}
        eval_text = access.text_source(str(ctx.eval_text), "evaluate.source", ctx.home)
        spec = parse_spec(build_spec(model_state, plan_state, output, calibration, quantize, evaluate, eval_text, flap))
        job_id = submit(spec, home=ctx.home)
    except (ValueError, FileNotFoundError) as err:
        return "", f"⚠ {err} (nothing was submitted)"
    if user:
        access.record_submitter(job_store(ctx.home), job_id, user)
    return job_id, f"Submitted job `{job_id}` ({spec.output})."


def remember_job(job_id, browser):
    """Add a submitted job to the ids kept in the browser and select it."""
    if not job_id:  # refused: the message says why, the selection stays
        return gr.skip(), gr.skip()
    browser = dict(browser or {})
    browser["jobs"] = [*(browser.get("jobs") or []), job_id]
    browser["selected"] = job_id
    return browser, gr.update(value=job_id)


def cancel_job(job_id: str, ctx: StudioContext, profile: gr.OAuthProfile | None = None):
    """Cancel the selected job if it is queued or running; otherwise say why nothing was done.
    On a Space only its submitter may (`access.require_canceller` raises for anyone else)."""
    if not job_id:
        return "⚠ job: select a job first"
    store = job_store(ctx.home)
    try:
        job = store.get(job_id)
        access.require_canceller(profile, job)
        if job["status"] not in CANCELLABLE:
            return f"⚠ `{job_id}` is {job['status']}: only a queued or running job can be cancelled."
        state = cancel(job_id, home=ctx.home)
    except UnknownJob as err:
        return f"⚠ {err}"
    note = "" if state["status"] in FINAL_STATUSES else " (it stops at its next layer boundary)"
    return f"Cancel requested for `{job_id}`: now {state['status']}{note}."


def retry_job(job_id: str, ctx: StudioContext, profile: gr.OAuthProfile | None = None) -> str:
    """Queue a failed or cancelled job again; on a Space only its submitter may."""
    if not job_id:
        raise gr.Error("job: select a job first")
    try:
        access.require_canceller(profile, job_store(ctx.home).get(job_id))
        retry(job_id, home=ctx.home)
    except ValueError as err:  # UnknownJob, a job that is not failed/cancelled, an unreachable queue
        if isinstance(err, gr.Error):
            raise
        raise gr.Error(str(err)) from err
    return f"Queued `{job_id}` again; its finished stages are reused."


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


def create_ui(ctx: StudioContext, shared: Shared) -> JobsTab:
    """Build the tab; returns its timer and refresh for the page load."""
    with gr.Row():
        output = gr.Textbox(label="Output name", placeholder="default: <plan>-<time>", scale=2)
        quantize = gr.Checkbox(True, label="GPTQ W4A16 after pruning")
        evaluate = gr.Checkbox(False, label="perplexity after compression")
        submit_button = gr.Button("Submit current plan", variant="primary", elem_id="submit-job", scale=1)
    # The plan's channel score, compensation and calibration choices, set in the Pruning plan tab.
    compensation, sequential, metric = shared.flap["compensation"], shared.flap["sequential"], shared.flap["metric"]
    refit_damp = shared.flap["refit_damp"]
    submit_message = gr.Markdown(elem_id="submit-message")
    with gr.Row():
        with gr.Column(scale=3):
            listing = gr.HTML(elem_id="job-list")
        with gr.Column(scale=2):
            selected = OpenDropdown([], label="Selected job", elem_id="job-select", allow_custom_value=True)
            cancel_button = gr.Button("Cancel selected job", variant="stop")
            retry_button = gr.Button("Retry selected job", elem_id="retry-job")
            cancel_message = gr.Markdown()
            links = gr.HTML(elem_id="job-results")
    log = gr.Textbox(label="Log (follows its end)", lines=12, max_lines=18, autoscroll=True, interactive=False,
                     elem_id="job-log")
    full_log = gr.Checkbox(False, label="show the whole log (third-party output and warnings too)")
    # Gradio's own autoscroll gives up when many lines arrive at once; the refresh sends the log only
    # when it changed, so a finished job's log stays where the reader scrolled it.
    log.change(None, None, None, js=FOLLOW_LOG_JS)
    last_job = gr.Textbox(visible=False)
    seen_done = gr.State(None)
    timer = gr.Timer(POLL_SECONDS)

    cal = shared.calibration

    def submit_current_plan(output_name, quantize_after, evaluate_after, model_state, plan_state,
                            calibration_source, samples, seqlen, seed, compensation_choice=FlapSettings.compensation,
                            sequential_choice=FlapSettings.sequential, metric_choice=FlapSettings.metric,
                            refit_damp_choice=FlapSettings.refit_damp,
                            profile: gr.OAuthProfile | None = None):
        # On a Space: signed-in users only, under the per-user job limit (Gradio fills `profile`).
        # A refusal is an error (API callers get it as one), like cancelling someone else's job.
        user = access.require_submitter(profile, job_store(ctx.home).all_jobs())
        flap = {"metric": metric_choice, "compensation": compensation_choice, "refit_damp": refit_damp_choice,
                "sequential": bool(sequential_choice)}
        return submit_job(output_name, quantize_after, evaluate_after, model_state, plan_state,
                          calibration_source, samples, seqlen, seed, ctx, user, flap)

    submit_button.click(
        submit_current_plan,
        [output, quantize, evaluate, shared.model_state, shared.plan_state,
         cal["source"], cal["samples"], cal["seqlen"], cal["seed"], compensation, sequential, metric, refit_damp],
        [last_job, submit_message],
        api_name="submit_job",
    ).success(remember_job, [last_job, shared.browser_jobs], [shared.browser_jobs, selected], api_visibility="private")
    refresh_outputs = [listing, selected, log, links, cancel_button, seen_done, shared.finished_job]
    refresh_inputs = [shared.browser_jobs, selected, seen_done, log, full_log]
    timer.tick(partial(refresh, ctx=ctx), refresh_inputs, refresh_outputs, api_visibility="private",
               show_progress="hidden")
    selected.input(remember_selection, [selected, shared.browser_jobs], shared.browser_jobs, api_visibility="private")
    # Gradio fills `profile` from the session (a partial would hide the annotation from it).
    def cancel_selected_job(job_id, profile: gr.OAuthProfile | None = None):
        return cancel_job(job_id, ctx, profile)

    def retry_selected_job(job_id, profile: gr.OAuthProfile | None = None):
        return retry_job(job_id, ctx, profile)

    cancel_button.click(cancel_selected_job, selected, cancel_message, api_name="cancel_job")
    retry_button.click(retry_selected_job, selected, cancel_message, api_name="retry_job")

    # API-only endpoints (no component): one job's state, and every job's.
    def job_status_api(job_id: str) -> dict:
        """State of one job from the job store, with elapsed_s and eta_s."""
        return job_status(job_id, ctx)

    def list_jobs_api() -> list:
        """Every job's state, oldest first, with elapsed_s and eta_s."""
        return [{**s, **describe(s)} for s in job_store(ctx.home).all_jobs()]

    gr.api(job_status_api, api_name="job_status")
    gr.api(list_jobs_api, api_name="list_jobs")
    # A new selection or log view shows at once, not at the next tick.
    gr.on([selected.input, full_log.change], partial(refresh, ctx=ctx), refresh_inputs, refresh_outputs,
          api_visibility="private", show_progress="hidden")
    return JobsTab(timer=timer, refresh=partial(refresh, ctx=ctx), refresh_inputs=refresh_inputs,
                   refresh_outputs=refresh_outputs)
