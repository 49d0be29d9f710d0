"""Pruning plan tab: the per-layer table, presets, suggestions from scores and the size estimate.

The plan's FLAP choices (the channel score, how the removed channels are compensated and the
refit's ridge weight, one-shot or sequential calibration) are set here too; a job submitted from the plan (Jobs tab) uses them.

Handlers never raise into the page: a bad input comes back as a warning in the message beside the
control, and the table and the plan stay as they were. Outputs an API caller sees always hold a
value of the type the API page documents (the current table, not `gr.skip()`); only the hidden
session states are skipped.
"""

from __future__ import annotations

from functools import partial

import json
import re
import tempfile
from pathlib import Path

import gradio as gr

from studio.flap.settings import COMPENSATIONS, METRICS, FlapSettings
from studio.jobs.results import job_outputs
from studio.jobs.client import job_store
from studio.gptq.quantize import QuantizeSettings
from studio.model_summary import KV_ROLES
from studio.paths import presets_dir
from studio.plans.plan import builtin_presets, read_preset, resolve_plan, save_plan, uniform_plan
from studio.plans.table import (
    COLUMNS,
    apply_edit,
    edited_base_name,
    plan_from_state,
    plan_rows_from,
    plan_to_state,
    plan_totals,
)
from studio.plots import size_breakdown_figure, widths_figure
from studio.safety import SPEC_UPLOAD_MAX_BYTES, check_upload
from studio.sizes import STAGES, estimate_stages
from studio.sizes.card import CARD_CLAIMS
from studio.ui import access
from studio.ui.components import OpenDropdown
from studio.ui.context import CARD_PRESET, E4B_CONFIG_ONLY, PlanTab, Shared, StudioContext, cached_plot
from studio.ui.model_tab import layers_of_state, shapes_of_state, text_config_of_state

PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_DEMO_PRESET = "uniform-20"
BITS_CHOICES = ("2", "3", "4", "8")
GROUP_SIZE_CHOICES = ("32", "64", "128")
KV_LEGEND = "**kv**: " + " · ".join(f"`{role}` {meaning}" for role, meaning in KV_ROLES.items())


def preset_files(ctx: StudioContext) -> dict[str, Path]:
    """Built-in presets, then the user's (a user preset of the same name wins)."""
    files = dict(builtin_presets())
    folder = presets_dir(ctx.home)
    if folder.is_dir():
        files.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return files


def warning(text) -> str:
    return f"⚠ {text}"


def _require_model(model_state):
    if not model_state:
        raise ValueError("model: load a model first (Model & data tab)")
    return text_config_of_state(model_state)


def _require_plan(plan_state):
    if not plan_state:
        raise ValueError("plan: load a preset first")
    return plan_from_state(plan_state)


def table_value(plan, model_state) -> dict:
    layers = layers_of_state(model_state)
    return {"headers": COLUMNS, "data": plan_rows_from(plan, layers["attention"], layers["kv"])}


def current_table(plan_state, model_state) -> dict:
    """The table as it stands (what a refused action leaves on screen)."""
    if not plan_state or not model_state:
        return {"headers": COLUMNS, "data": []}
    return table_value(plan_from_state(plan_state), model_state)


def plan_header(plan) -> str:
    t = plan_totals(plan)
    return (
        f"**{plan.name}**: {t['channels_after']:,} of {t['channels_before']:,} FFN channels kept "
        f"(**{t['ffn_removed']:.1%} pruned**), {t['layers_pruned']} layers pruned, {t['layers_locked']} locked"
    )


def load_preset(name: str, model_state: dict, plan_state: dict | None, ctx: StudioContext):
    """The preset's table, plan and message; a warning and nothing changed if it cannot be loaded."""
    try:
        text_config = _require_model(model_state)
        files = preset_files(ctx)
        if name not in files:
            raise ValueError(f"preset: no preset named {name!r} (have: {', '.join(files)})")
        try:
            plan = resolve_plan(read_preset(files[name]), text_config, name=name)
        except ValueError as err:
            raise ValueError(f"preset {name}: {err}") from err
    except ValueError as err:
        return current_table(plan_state, model_state), gr.skip(), warning(err)
    return table_value(plan, model_state), plan_to_state(plan), f"Loaded preset {name}. " + plan_header(plan)


def default_plan(model_state: dict, ctx: StudioContext):
    """The plan shown for a freshly loaded model: the card's table for E4B, else 20% uniform."""
    if not model_state:
        return gr.skip(), gr.skip(), gr.skip()
    text_config = text_config_of_state(model_state)
    if model_state["source"] == E4B_CONFIG_ONLY:
        plan = resolve_plan(read_preset(preset_files(ctx)[CARD_PRESET]), text_config, name=CARD_PRESET)
    else:
        plan = uniform_plan(text_config, 0.2)
        plan.name = DEFAULT_DEMO_PRESET
    return table_value(plan, model_state), plan_to_state(plan), plan_header(plan)


def edit_plan(table, plan_state, model_state):
    """Apply a table edit: the synced table and plan, or the previous ones and the rule broken.

    The browser can send the same edited table twice (a cell commits on Enter and again on blur);
    a table identical to the last one applied is answered with the current plan and the message
    of that edit, unchanged.
    """
    try:
        if not model_state:
            raise ValueError("model: load a model first (Model & data tab)")
        plan = _require_plan(plan_state)
    except ValueError as err:
        return current_table(plan_state, model_state), gr.skip(), warning(err)
    rows = table.values.tolist() if hasattr(table, "values") else table["data"] if isinstance(table, dict) else table
    submitted = json.dumps(rows, default=str)
    if plan_state.get("last_edit") == submitted:
        return table_value(plan, model_state), gr.skip(), plan_state.get("last_message") or plan_header(plan)
    result = apply_edit(plan, rows)
    message = plan_header(result.plan) + "  \n" + ("Applied: " if result.accepted else "⚠ ") + result.message
    state = {**plan_to_state(result.plan), "last_edit": submitted, "last_message": message} if result.accepted else plan_state
    return table_value(result.plan, model_state), state, message


def _quant_settings(quantize: bool, bits, group_size) -> QuantizeSettings | None:
    """GPTQ settings from the form (None: no GPTQ); the dropdowns send strings, API callers may send numbers."""
    values = {}
    for field, value, choices in (("bits", bits, BITS_CHOICES), ("group_size", group_size, GROUP_SIZE_CHOICES)):
        if str(value) not in choices:
            raise ValueError(f"{field}: one of {', '.join(choices)}, got {value!r}")
        values[field] = int(value)
    return QuantizeSettings(**values) if quantize else None


def estimate_markdown(est: dict, e4b: bool) -> str:
    """`est`: `studio.sizes.estimate_stages` of the plan; without GPTQ, the last column has no size."""
    original, pruned, quantized = est["original"], est["pruned"], est.get("quantized")
    gb = lambda b: f"{b / 1e9:.3f} GB" if b >= 1e8 else f"{b / 1e6:.2f} MB"  # noqa: E731
    p = lambda n: f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"  # noqa: E731
    rows = [
        "| estimated from the config | original | pruned | pruned + GPTQ |",
        "|---|---:|---:|---:|",
        # GPTQ changes bytes, not parameters: the last column's parameters are the pruned model's.
        f"| FFN parameters | {p(original.component('ffn').params)} | {p(pruned.component('ffn').params)} | "
        f"{p(pruned.component('ffn').params)} |",
        f"| total parameters | {p(original.params)} | {p(pruned.params)} | {p(pruned.params)} |",
        f"| checkpoint size | {gb(original.tensor_bytes)} | {gb(pruned.tensor_bytes)} | "
        f"{gb(quantized.tensor_bytes) if quantized else 'no GPTQ'} |",
        "",
        f"FFN parameters removed: **{1 - pruned.component('ffn').params / original.component('ffn').params:.1%}**.",
    ]
    if e4b:
        # "\~": a bare "~" pair reads as strikethrough in Markdown.
        rows += [
            "",
            f"Card figures for E4B: original \\~{CARD_CLAIMS['base_bytes'] / 1e9} GB, compressed "
            f"\\~{CARD_CLAIMS['export_bytes'] / 1e9} GB, \"\\~{CARD_CLAIMS['ffn_params_removed']:.0%} "
            "FFN parameters\" (its own width table gives 10.7%). The estimate here covers the language "
            "model only: the published text config has no vision or audio tower (the card's totals include them).",
        ]
    return "\n".join(rows)


def estimate_view(plan_state, model_state, quant: QuantizeSettings | None) -> tuple:
    """Markdown, size figure and width figure of a plan (plain values, cached by the caller)."""
    plan = plan_from_state(plan_state)
    layers = layers_of_state(model_state)
    est = estimate_stages(shapes_of_state(model_state), plan.widths, quant)
    # Without GPTQ the third bar repeats the pruned model, as the table's last column does.
    sizes = {stage: est.get(stage, est["pruned"]).bytes_by_component() for stage in STAGES}
    widths = widths_figure(plan.widths, layers["original"], layers["attention"], layers["kv"])
    return estimate_markdown(est, model_state["source"] == E4B_CONFIG_ONLY), size_breakdown_figure(sizes), widths


def estimate(plan_state, model_state, quantize: bool, bits: str, group_size: str, ctx: StudioContext):
    """Markdown of parameters and sizes (config + plan only) and the size and width figures.

    Answers from `ctx.estimates` when the same model, widths and settings were estimated before
    (every session editing the same preset asks for the same few estimates).
    """
    if not plan_state or not model_state:
        return "", None, None
    try:
        quant = _quant_settings(quantize, bits, group_size)
    except ValueError as err:  # only an API caller can send another value than the dropdowns hold
        raise gr.Error(str(err)) from err
    key = (model_state["config_path"], model_state["source"], tuple(plan_state["widths"]), quant and (quant.bits, quant.group_size))

    def compute():
        markdown, sizes, widths = estimate_view(plan_state, model_state, quant)
        return markdown, cached_plot(sizes), cached_plot(widths)

    return ctx.estimates.get(key, compute)


def preset_follows_plan(plan_state, ctx: StudioContext):
    """The preset dropdown shows the loaded plan's preset, and says when the table was edited."""
    if not plan_state:
        return gr.skip()
    name, files = plan_state["name"], preset_files(ctx)
    choices = list(files)  # a preset saved since the page was built is listed too
    if name in files:
        return gr.update(choices=choices, value=name, info="the table holds this preset")
    base = edited_base_name(name)
    if base in files:
        return gr.update(choices=choices, value=base,
                         info=f"edited: the table is {base} with changes (save or download to keep them)")
    return gr.update(choices=choices, value=None, info=f"the table holds {name!r}, which is not a saved preset")


def save_preset(name: str, plan_state, ctx: StudioContext):
    """Save the plan under STUDIO_HOME/presets as `name`, which the loaded plan then is; the message
    says where, or why not."""
    try:
        plan = _require_plan(plan_state)
        name = (name or "").strip()
        if not PRESET_NAME.match(name):
            raise ValueError(
                f"preset name: letters, digits, '.', '_' or '-' (at most 64, no spaces), got {name!r}; nothing was saved"
            )
    except ValueError as err:
        return warning(err), gr.skip()
    plan.name = name
    path = presets_dir(ctx.home) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_plan(plan, path)
    return f"Saved preset {name} to {path}.", {**plan_state, **plan_to_state(plan)}


def download_preset(plan_state):
    if not plan_state:
        return None
    plan = plan_from_state(plan_state)
    folder = Path(tempfile.mkdtemp(prefix="plan-"))
    path = folder / f"{plan.name}.yaml"
    save_plan(plan, path)
    return str(path)


def upload_preset(file, model_state, plan_state=None):
    try:
        text_config = _require_model(model_state)
        if file is None:
            raise ValueError("uploaded preset: no file")
        path = Path(file if isinstance(file, str) else file.name)
        check_upload(path, "preset file", SPEC_UPLOAD_MAX_BYTES)
        try:
            plan = resolve_plan(read_preset(path), text_config, name=path.stem)
        except ValueError as err:
            raise ValueError(f"uploaded preset {path.name}: {err}") from err
    except ValueError as err:
        return current_table(plan_state, model_state), gr.skip(), warning(err)
    return table_value(plan, model_state), plan_to_state(plan), f"Loaded {path.name}. " + plan_header(plan)


def statistics_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    """(label, job folder) of every job whose statistics stage finished, newest first."""
    store = job_store(ctx.home)
    choices = []
    for state in reversed(store.all_jobs()):
        folder = store.job_dir(state["id"])
        if job_outputs(folder).statistics is not None:
            choices.append((f"{state['output']} · {state['status']} · {state['id']}", str(folder)))
    return choices


def suggest(stats_path: str, target: float, max_ratio: float, plan_state, model_state, ctx: StudioContext):
    """Widths from FLAP scores for a global ratio; locked layers keep their widths."""
    from studio.flap.pipeline import load_statistics, suggested_plan
    from studio.jobs.results import find_statistics

    try:
        text_config = _require_model(model_state)
        base = _require_plan(plan_state)
        if not (stats_path or "").strip():
            raise ValueError("statistics: choose a job with statistics, or give a flap_stats.safetensors, a prune output or a job folder")
        # The typed path and the file found under it (a link there could lead out) are both checked.
        found = find_statistics(access.visitor_path(stats_path, "statistics", ctx.home))
        path = access.visitor_path(found, "statistics", ctx.home)
        _, scores, metric = load_statistics(path)
        if len(scores) != len(base.widths):
            raise ValueError(f"statistics: cover {len(scores)} layers, the model has {len(base.widths)}")
        plan = suggested_plan(scores, text_config, float(target), float(max_ratio), base=base)
    except ValueError as err:
        return current_table(plan_state, model_state), gr.skip(), warning(err)
    message = f"Suggested from {metric} scores in {path} (locks kept). " + plan_header(plan)
    return table_value(plan, model_state), plan_to_state(plan), message


def flap_controls() -> dict:
    """The plan's FLAP choices (`flap.metric`, `flap.compensation`, `flap.refit_damp`, `flap.sequential`
    of the job it becomes), defaulting to the spec's: WIFV channels, bias, ridge 0.01, one-shot."""
    with gr.Row():
        metric = gr.Dropdown(
            list(METRICS), value=FlapSettings.metric, label="channel score", elem_id="plan-metric",
            info="wifv: FLAP's (the card's); obs: least-squares cost (docs/obs.md)",
        )
        compensation = gr.Dropdown(
            list(COMPENSATIONS), value=FlapSettings.compensation, label="compensation of the removed channels", elem_id="plan-compensation",
            info="bias: FLAP's (the card's); refit: least-squares, more recall at 50% (docs/results.md)",
        )
        refit_damp = gr.Number(
            FlapSettings.refit_damp, label="refit ridge weight", minimum=0, maximum=0.99, step=0.01, elem_id="plan-refit-damp",
            info="refit and obs: 0.5 fits calibration less closely, better perplexity (docs/results.md)",
        )
        sequential = gr.Checkbox(FlapSettings.sequential, label="sequential calibration (each layer on the pruned layers before it)",
                                 elem_id="plan-sequential")
    return {"metric": metric, "compensation": compensation, "refit_damp": refit_damp, "sequential": sequential}


def create_ui(ctx: StudioContext, shared: Shared) -> PlanTab:
    with gr.Row():
        # Open: a preset saved later (by this session or another) is loadable by name.
        preset = OpenDropdown(list(preset_files(ctx)), value=DEFAULT_DEMO_PRESET, label="Preset", scale=2,
                              allow_custom_value=True, elem_id="plan-preset")
        load_button = gr.Button("Load preset", scale=1)
        upload = gr.UploadButton("Upload preset (.yaml)", file_types=[".yaml", ".yml"], scale=1)
        download = gr.DownloadButton("Download plan (.yaml)", scale=1)
    message = gr.Markdown(elem_id="plan-message")
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(
                headers=COLUMNS,
                datatype=["number", "str", "str", "number", "number", "number", "bool"],
                type="array",
                interactive=True,
                static_columns=[0, 1, 2, 3],
                column_count=len(COLUMNS),
                label="Per-layer plan (edit ratio, width or lock)",
                max_height=560,
                elem_id="plan-table",
            )
            gr.Markdown(KV_LEGEND, elem_id="plan-kv-legend")
            with gr.Row():
                save_name = gr.Textbox(label="Save as preset", placeholder="my-plan", scale=3)
                save_button = gr.Button("Save", scale=1)
            save_message = gr.Markdown(elem_id="plan-save-message")
        with gr.Column(scale=2):
            with gr.Row():
                quantize = gr.Checkbox(True, label="estimate with GPTQ")
                bits = gr.Dropdown(list(BITS_CHOICES), value="4", label="bits")
                group_size = gr.Dropdown(list(GROUP_SIZE_CHOICES), value="128", label="group size")
            estimate_md = gr.Markdown(elem_id="plan-estimate")
            shared.flap.update(flap_controls())  # the Jobs tab submits the plan with these
            with gr.Accordion("Suggest from scores", open=False):
                stats_job = gr.Dropdown(
                    [], label="Job with statistics", info="finished statistics stages, newest first",
                    elem_id="plan-stats-job",
                )
                stats_path = gr.Textbox(
                    label="Statistics",
                    info="filled in from the job above, or a flap_stats.safetensors, a prune output folder or a job folder",
                    elem_id="plan-stats-path",
                )
                target = gr.Slider(0.0, 0.6, value=0.2, step=0.01, label="target FFN ratio")
                max_ratio = gr.Slider(0.05, 0.9, value=0.5, step=0.05, label="max ratio per layer")
                suggest_button = gr.Button("Suggest widths")
                suggest_message = gr.Markdown(elem_id="plan-suggest-message")
    with gr.Row():
        widths_plot = gr.Plot(label="Kept width per layer", elem_id="plan-widths-plot")
        sizes_plot = gr.Plot(label="Size by component (estimated)", elem_id="plan-sizes-plot")

    plan_outputs = [table, shared.plan_state, message]
    estimate_inputs = [shared.plan_state, shared.model_state, quantize, bits, group_size]
    estimate_outputs = [estimate_md, sizes_plot, widths_plot]
    run_estimate = partial(estimate, ctx=ctx)

    shared.model_state.change(partial(default_plan, ctx=ctx), shared.model_state, plan_outputs, api_visibility="private")
    load_button.click(partial(load_preset, ctx=ctx), [preset, shared.model_state, shared.plan_state], plan_outputs,
                      api_name="load_preset")
    table.input(
        edit_plan, [table, shared.plan_state, shared.model_state], plan_outputs, api_name="edit_plan",
        concurrency_limit=1, show_progress="hidden",
    )
    upload.upload(upload_preset, [upload, shared.model_state, shared.plan_state], plan_outputs, api_name="upload_preset")
    gr.on([stats_job.focus, shared.finished_job.change], lambda: gr.update(choices=statistics_choices(ctx)), None,
          stats_job, api_visibility="private", show_progress="hidden")
    stats_job.input(lambda folder: folder or gr.skip(), stats_job, stats_path, api_visibility="private")
    suggest_button.click(
        partial(suggest, ctx=ctx), [stats_path, target, max_ratio, shared.plan_state, shared.model_state],
        [table, shared.plan_state, suggest_message], api_name="suggest_plan",
    )
    save_button.click(partial(save_preset, ctx=ctx), [save_name, shared.plan_state], [save_message, shared.plan_state],
                      api_name="save_preset")
    # Whatever changed the plan: the download button holds it as YAML, the preset dropdown names it,
    # and the estimate follows.
    shared.plan_state.change(download_preset, shared.plan_state, download, api_name="download_preset",
                             show_progress="hidden")
    shared.plan_state.change(partial(preset_follows_plan, ctx=ctx), shared.plan_state, preset, api_visibility="private",
                             show_progress="hidden")
    shared.plan_state.change(run_estimate, estimate_inputs, estimate_outputs, api_visibility="private",
                             concurrency_limit=None, show_progress="hidden")
    gr.on(
        [quantize.change, bits.change, group_size.change],
        run_estimate,
        estimate_inputs,
        estimate_outputs,
        api_name="estimate",
        concurrency_limit=None,
        show_progress="hidden",
    )
    return PlanTab(preset=preset, table=table)
