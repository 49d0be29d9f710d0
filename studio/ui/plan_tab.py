"""Pruning plan tab: the per-layer table, presets, suggestions from scores and the size estimate."""

from __future__ import annotations

from functools import partial

import json
import re
import tempfile
from pathlib import Path

import gradio as gr

from studio.model_summary import CARD_FIGURES, QuantSettings, estimate_sizes, kv_roles, attention_kinds
from studio.modeling import original_widths
from studio.paths import presets_dir
from studio.plan import builtin_presets, read_preset, resolve_plan, save_plan, uniform_plan
from studio.plan_table import (
    COLUMNS,
    apply_edit,
    plan_from_state,
    plan_rows,
    plan_to_state,
    plan_totals,
)
from studio.plots import size_breakdown_figure, widths_figure
from studio.safety import SPEC_UPLOAD_MAX_BYTES, check_upload
from studio.ui import access
from studio.ui.context import CARD_PRESET, E4B_CONFIG_ONLY, Shared, StudioContext
from studio.ui.model_tab import shapes_of_state, text_config_of_state

PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_DEMO_PRESET = "uniform-20"


def preset_files(ctx: StudioContext) -> dict[str, Path]:
    """Built-in presets, then the user's (a user preset of the same name wins)."""
    files = dict(builtin_presets())
    folder = presets_dir(ctx.home)
    if folder.is_dir():
        files.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return files


def _require_model(model_state):
    if not model_state:
        raise gr.Error("model: load a model first (Model & data tab)")
    return text_config_of_state(model_state)


def _require_plan(plan_state):
    if not plan_state:
        raise gr.Error("plan: load a preset first")
    return plan_from_state(plan_state)


def table_value(plan, text_config) -> dict:
    return {"headers": COLUMNS, "data": plan_rows(plan, text_config)}


def plan_header(plan) -> str:
    t = plan_totals(plan)
    return (
        f"**{plan.name}**: {t['channels_after']:,} of {t['channels_before']:,} FFN channels kept "
        f"(**{t['ffn_removed']:.1%} pruned**), {t['layers_pruned']} layers pruned, {t['layers_locked']} locked"
    )


def load_preset(name: str, model_state: dict, ctx: StudioContext):
    text_config = _require_model(model_state)
    files = preset_files(ctx)
    if name not in files:
        raise gr.Error(f"plan: no preset named {name!r} (have: {', '.join(files)})")
    try:
        plan = resolve_plan(read_preset(files[name]), text_config, name=name)
    except ValueError as err:
        raise gr.Error(f"plan {name}: {err}") from err
    return table_value(plan, text_config), plan_to_state(plan), f"Loaded preset {name}. " + plan_header(plan)


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
    return table_value(plan, text_config), plan_to_state(plan), plan_header(plan)


def edit_plan(table, plan_state, model_state):
    """Apply a table edit: the synced table and plan, or the previous ones and the rule broken.

    The browser can send the same edited table twice (a cell commits on Enter and again on blur);
    a table identical to the last one applied is answered with the current plan, unchanged.
    """
    text_config = _require_model(model_state)
    plan = _require_plan(plan_state)
    rows = table.values.tolist() if hasattr(table, "values") else table["data"] if isinstance(table, dict) else table
    submitted = json.dumps(rows, default=str)
    if plan_state.get("last_edit") == submitted:
        return table_value(plan, text_config), gr.skip(), gr.skip()
    result = apply_edit(plan, rows)
    message = plan_header(result.plan) + "  \n" + ("Applied: " if result.accepted else "⚠ ") + result.message
    state = {**plan_to_state(result.plan), "last_edit": submitted} if result.accepted else plan_state
    return table_value(result.plan, text_config), state, message


def estimate(plan_state, model_state, quantize: bool, bits: int, group_size: int):
    """Markdown of parameters and sizes (config + plan only) and the size and width figures."""
    if not plan_state or not model_state:
        return "", None, None
    text_config = text_config_of_state(model_state)
    plan = plan_from_state(plan_state)
    quant = QuantSettings(enabled=bool(quantize), bits=int(bits), group_size=int(group_size))
    est = estimate_sizes(shapes_of_state(model_state), plan.widths, plan.original, quant)
    gb = lambda b: f"{b / 1e9:.3f} GB" if b >= 1e8 else f"{b / 1e6:.2f} MB"  # noqa: E731
    p = lambda n: f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"  # noqa: E731
    rows = [
        "| | original | pruned | pruned + GPTQ |",
        "|---|---:|---:|---:|",
        f"| FFN parameters | {p(est.params['original']['ffn'])} | {p(est.params['pruned']['ffn'])} | "
        f"{p(est.params['quantized']['ffn'])} |",
        f"| total parameters | {p(est.total_params('original'))} | {p(est.total_params('pruned'))} | "
        f"{p(est.total_params('quantized'))} |",
        f"| checkpoint size | {gb(est.total_bytes('original'))} | {gb(est.total_bytes('pruned'))} | "
        f"{gb(est.total_bytes('quantized')) if quant.enabled else 'no GPTQ'} |",
        "",
        f"FFN parameters removed: **{est.ffn_params_removed:.1%}**.",
    ]
    if model_state["source"] == E4B_CONFIG_ONLY:
        rows += [
            "",
            f"Card figures for E4B: original ~{CARD_FIGURES['original_checkpoint_gb']} GB, compressed "
            f"~{CARD_FIGURES['compressed_checkpoint_gb']} GB, \"~{CARD_FIGURES['ffn_params_removed_claim']:.0%} "
            "FFN parameters\" (its own width table gives 10.7%). The estimate here covers the language "
            "model only: the published text config has no vision or audio tower (the card's totals include them).",
        ]
    text_config_kinds = attention_kinds(text_config)
    shared = [r == "shared" for r in kv_roles(text_config)]
    widths_fig = widths_figure(plan.widths, original_widths(text_config), text_config_kinds, shared)
    return "\n".join(rows), size_breakdown_figure(est.bytes), widths_fig


def save_preset(name: str, plan_state, ctx: StudioContext):
    plan = _require_plan(plan_state)
    name = (name or "").strip()
    if not PRESET_NAME.match(name):
        raise gr.Error(f"preset name: letters, digits, '.', '_' or '-' (at most 64), got {name!r}")
    plan.name = name
    path = presets_dir(ctx.home) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_plan(plan, path)
    return gr.update(choices=list(preset_files(ctx)), value=name), f"Saved preset {name} to {path}."


def download_preset(plan_state):
    if not plan_state:
        return None
    plan = plan_from_state(plan_state)
    folder = Path(tempfile.mkdtemp(prefix="plan-"))
    path = folder / f"{plan.name}.yaml"
    save_plan(plan, path)
    return str(path)


def upload_preset(file, model_state):
    text_config = _require_model(model_state)
    path = Path(file if isinstance(file, str) else file.name)
    try:
        check_upload(path, "preset file", SPEC_UPLOAD_MAX_BYTES)
        plan = resolve_plan(read_preset(path), text_config, name=path.stem)
    except ValueError as err:
        raise gr.Error(f"uploaded preset {path.name}: {err}") from err
    return table_value(plan, text_config), plan_to_state(plan), f"Loaded {path.name}. " + plan_header(plan)


def suggest(stats_path: str, target: float, max_ratio: float, plan_state, model_state, ctx: StudioContext):
    """Widths from FLAP scores for a global ratio; locked layers keep their widths."""
    from studio.flap.pipeline import load_statistics, suggested_plan
    from studio.job_results import find_statistics

    text_config = _require_model(model_state)
    base = _require_plan(plan_state)
    try:
        # The typed path and the file found under it (a link there could lead out) are both checked.
        found = find_statistics(access.visitor_path(stats_path, "statistics", ctx.home))
        path = access.visitor_path(found, "statistics", ctx.home)
        _, scores, metric = load_statistics(path)
        if len(scores) != len(base.widths):
            raise ValueError(f"statistics: cover {len(scores)} layers, the model has {len(base.widths)}")
        plan = suggested_plan(scores, text_config, float(target), float(max_ratio), base=base)
    except ValueError as err:
        raise gr.Error(str(err)) from err
    message = f"Suggested from {metric} scores in {path} (locks kept). " + plan_header(plan)
    return table_value(plan, text_config), plan_to_state(plan), message


def create_ui(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        preset = gr.Dropdown(list(preset_files(ctx)), value=DEFAULT_DEMO_PRESET, label="Preset", scale=2)
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
            with gr.Row():
                save_name = gr.Textbox(label="Save as preset", placeholder="my-plan", scale=3)
                save_button = gr.Button("Save", scale=1)
        with gr.Column(scale=2):
            with gr.Row():
                quantize = gr.Checkbox(True, label="estimate with GPTQ")
                bits = gr.Dropdown([2, 3, 4, 8], value=4, label="bits")
                group_size = gr.Dropdown([32, 64, 128], value=128, label="group size")
            estimate_md = gr.Markdown(elem_id="plan-estimate")
            with gr.Accordion("Suggest from scores", open=False):
                stats_path = gr.Textbox(
                    label="Statistics",
                    info="flap_stats.safetensors, a prune output folder or a job folder",
                )
                target = gr.Slider(0.0, 0.6, value=0.2, step=0.01, label="target FFN ratio")
                max_ratio = gr.Slider(0.05, 0.9, value=0.5, step=0.05, label="max ratio per layer")
                suggest_button = gr.Button("Suggest widths")
    with gr.Row():
        widths_plot = gr.Plot(label="Kept width per layer", elem_id="plan-widths-plot")
        sizes_plot = gr.Plot(label="Size by component", elem_id="plan-sizes-plot")

    plan_outputs = [table, shared.plan_state, message]
    estimate_inputs = [shared.plan_state, shared.model_state, quantize, bits, group_size]
    estimate_outputs = [estimate_md, sizes_plot, widths_plot]

    shared.model_state.change(partial(default_plan, ctx=ctx), shared.model_state, plan_outputs, api_visibility="private")
    load_button.click(partial(load_preset, ctx=ctx), [preset, shared.model_state], plan_outputs, api_name="load_preset")
    table.input(
        edit_plan, [table, shared.plan_state, shared.model_state], plan_outputs, api_name="edit_plan", concurrency_limit=1
    )
    upload.upload(upload_preset, [upload, shared.model_state], plan_outputs, api_name="upload_preset")
    suggest_button.click(
        partial(suggest, ctx=ctx), [stats_path, target, max_ratio, shared.plan_state, shared.model_state], plan_outputs,
        api_name="suggest_plan"
    )
    save_button.click(partial(save_preset, ctx=ctx), [save_name, shared.plan_state], [preset, message], api_name="save_preset")
    # The download button always holds the current plan as a YAML file.
    shared.plan_state.change(download_preset, shared.plan_state, download, api_name="download_preset")
    # The estimate follows every plan change, whatever caused it.
    gr.on(
        [shared.plan_state.change, quantize.change, bits.change, group_size.change],
        estimate,
        estimate_inputs,
        estimate_outputs,
        api_name="estimate",
    )
