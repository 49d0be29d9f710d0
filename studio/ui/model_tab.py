"""Model & data tab: which model to compress, the calibration data, and the model's structure."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.model_source import check_checkpoint_folder, resolve_model
from studio.model_summary import attention_kinds, kv_roles, load_full_config, structure_summary
from studio.modeling import load_text_config, original_widths
from studio.sizes import COMPONENT_LABELS, ModelShapes, config_from_file, model_shapes
from studio.ui.components import OpenDropdown
from studio.ui.context import DEMO_MODEL, E4B_CONFIG_ONLY, ModelTab, Shared, StudioContext


def hub_config_folder(repo_id: str) -> Path:
    """The folder holding a hub model's config.json (downloaded, or from the local hub cache)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "config.json")).parent
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated: all mean "not available"
        raise ValueError(f"model: cannot get config.json of {repo_id!r} from the hub or its cache ({type(err).__name__})") from err


def open_model(source: str | Path, ctx: StudioContext) -> dict:
    """The model state for what `model_source` gives: a menu choice, a hub id or a local folder
    (a `Path`, absolute and resolved); config only, no weights are read."""
    if source == DEMO_MODEL:
        config_path, checkpoint, label = ctx.demo_dir, ctx.demo_dir, f"demo model ({ctx.demo_dir})"
    elif source == E4B_CONFIG_ONLY:
        config_path, checkpoint, label = ctx.reference_config, None, E4B_CONFIG_ONLY
    elif isinstance(source, Path):
        # config.json of Gemma 4, shards whose headers parse and match it (studio.model_source)
        path = check_checkpoint_folder(source, "model")
        config_path, checkpoint, label = path, path, str(path)
    else:
        # A hub id: only config.json is fetched (or read from the local hub cache); jobs download the weights.
        config_path, checkpoint, label = hub_config_folder(source), source, f"{source} (hub)"
    load_full_config(config_path)  # fails early with a clear message
    shapes = model_shapes(config_from_file(config_path))  # the slow part: once per model, not per edit
    text_config = load_text_config(config_path)
    return {
        "source": str(source),
        "label": label,
        "config_path": str(config_path),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "shapes": shapes,
        # Per layer, read once here so table edits and estimates need not parse the config again.
        "layers": {
            "attention": attention_kinds(text_config),
            "kv": kv_roles(text_config),
            "original": original_widths(text_config),
        },
    }


def text_config_of_state(model_state: dict):
    return load_text_config(model_state["config_path"])


def layers_of_state(model_state: dict) -> dict[str, list]:
    """Per-layer attention kind ("attention"), KV role ("kv") and original FFN width ("original")."""
    return model_state["layers"]


def shapes_of_state(model_state: dict) -> ModelShapes:
    return model_state["shapes"]


def summary_markdown(model_state: dict) -> str:
    text_config = text_config_of_state(model_state)
    s = structure_summary(text_config, shapes_of_state(model_state))
    widths = s["ffn_widths"]
    distinct = sorted(set(widths))
    shared = s["kv_shared_layers"]
    tail = f"layers {shared[0]}-{shared[-1]} ({len(shared)})" if shared else "none"
    runnable = "yes" if model_state["checkpoint"] else "no: config only (plan and estimate; jobs need weights)"
    lines = [
        f"**{model_state['label']}**",
        "",
        "| structure | |",
        "|---|---|",
        f"| decoder layers | {s['layers']} (hidden size {s['hidden_size']}) |",
        f"| attention | {s['attention']['sliding']} sliding, {s['attention']['full']} full "
        f"(full at {', '.join(map(str, s['full_attention_layers']))}) |",
        f"| KV-shared tail | {tail} |",
        f"| FFN widths | {', '.join(map(str, distinct))} ({sum(widths):,} channels in all) |",
        f"| parameters | {s['total_params']:,} |",
        f"| runnable as a job | {runnable} |",
        "",
        "| component | parameters | share |",
        "|---|---:|---:|",
    ]
    for component, count in s["params_by_component"].items():
        lines.append(f"| {COMPONENT_LABELS[component]} | {count:,} | {count / s['total_params']:.1%} |")
    return "\n".join(lines)


def model_source(source: str, ctx: StudioContext) -> str | Path:
    """A typed model choice as `open_model` takes it (`studio.model_source.resolve_model`): the
    menu's choices as named, a folder expanded and resolved (confined on a Space), a hub id as typed."""
    named = {choice: choice for choice in (DEMO_MODEL, E4B_CONFIG_ONLY)}
    return resolve_model((source or "").strip() or DEMO_MODEL, "model", named=named, roots=ctx.visitor_roots())


def load_model(source: str, ctx: StudioContext, current: dict | None = None):
    """The model state and its summary; on bad input, a warning above the current model's summary
    (the loaded model stays)."""
    try:
        state = open_model(model_source(source, ctx), ctx)
    except (ValueError, FileNotFoundError) as err:
        kept = f"\n\nStill loaded:\n\n{summary_markdown(current)}" if current else ""
        return gr.skip(), f"⚠ {err}{kept}"
    return state, summary_markdown(state)


def create_ui(ctx: StudioContext, shared: Shared) -> ModelTab:
    """Build the tab; returns the model choice and summary for the page-load wiring in studio.ui.app."""
    gr.Markdown(
        "Choose the model to compress. The **demo model** is a small random-weight Gemma 4 with E4B's "
        "structure (runs anywhere); **E4B (config only)** plans and estimates against the published "
        "E4B configuration without weights. A local checkpoint folder works too."
    )
    with gr.Row():
        with gr.Column(scale=2):
            choice = OpenDropdown(
                ctx.model_choices(),
                value=DEMO_MODEL,
                label="Model",
                allow_custom_value=True,
                info="a choice, or type a local checkpoint folder",
                elem_id="model-source",
            )
            with gr.Row():
                load_button = gr.Button("Load model", variant="primary", elem_id="load-model")
                demo_button = gr.Button("Use the demo model", elem_id="use-demo")
            gr.Markdown("### Calibration data")
            source = gr.Textbox(
                str(ctx.calibration_text),
                label="Calibration text",
                info="a text file, or hf:DATASET/CONFIG/SPLIT (needs hub access)",
            )
            with gr.Row():
                samples = gr.Number(8, label="samples", precision=0, minimum=1)
                seqlen = gr.Number(128, label="sequence length", precision=0, minimum=8)
                seed = gr.Number(0, label="seed", precision=0, minimum=0)
        with gr.Column(scale=3):
            summary = gr.Markdown(elem_id="model-summary")
    shared.calibration.update(source=source, samples=samples, seqlen=seqlen, seed=seed)

    def load_chosen(source: str, current: dict | None):
        return load_model(source, ctx, current)

    load_button.click(load_chosen, [choice, shared.model_state], [shared.model_state, summary], api_name="load_model")
    demo_button.click(lambda: DEMO_MODEL, None, choice, api_visibility="private").then(
        load_chosen, [choice, shared.model_state], [shared.model_state, summary], api_visibility="private"
    )
    return ModelTab(choice=choice, summary=summary)
