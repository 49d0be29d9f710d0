"""The Gradio Blocks app: shared state, then one tab per module of `TABS`.

To add a tab, write `studio/ui/<name>_tab.py` with `create_ui(ctx, shared)` and add it to `TABS`.
Tabs exchange state through `Shared`; a tab whose components the page must wire after every tab is
built (on page load, say) returns them from `create_ui` as a small dataclass (`studio.ui.context`:
`ModelTab`, `JobsTab`, ...), which `build_app` reads by field name.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import gradio as gr

from studio.paths import exports_dir, jobs_dir
from studio.safety import MAX_UPLOAD_BYTES
from studio.ui import access
from studio.ui.context import DEMO_MODEL, Shared, StudioContext

# (tab label, module); each module has create_ui(ctx, shared).
TABS = (
    ("Model & data", "studio.ui.model_tab"),
    ("Pruning plan", "studio.ui.plan_tab"),
    ("Jobs", "studio.ui.jobs_tab"),
    ("Analysis", "studio.ui.analysis_tab"),
    ("Chat", "studio.ui.chat_tab"),
)
BROWSER_STORAGE_KEY = "gemma-lite-studio-jobs"

CSS = """
.job-list { display: flex; flex-direction: column; gap: 6px; }
.job-row { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 6px 10px; }
.job-row.selected { border-color: var(--color-accent); box-shadow: 0 0 0 1px var(--color-accent); }
.job-head { display: flex; gap: 8px; align-items: center; }
.job-status { color: white; border-radius: 4px; padding: 0 6px; font-size: 0.85em; }
.job-stage { font-size: 0.9em; opacity: 0.85; margin: 2px 0; }
.job-row progress { width: 100%; height: 10px; }
.job-error { color: #e63946; font-size: 0.9em; }
.job-steps { display: flex; flex-wrap: wrap; gap: 4px 10px; font-size: 0.85em; margin: 2px 0; }
.job-step { white-space: nowrap; }
ul.job-results { margin: 0; padding-left: 1.2em; }
"""
# Fonts the browser has without a network: Gradio's themes name Google fonts by default, which an
# offline machine cannot fetch, so bold text fell back to another face than regular text.
SANS_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "DejaVu Sans", "Liberation Sans", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "Liberation Mono", "monospace")


def offline_theme() -> gr.themes.Base:
    return gr.themes.Default(font=list(SANS_FONTS), font_mono=list(MONO_FONTS))


def build_app(ctx: StudioContext) -> gr.Blocks:
    with gr.Blocks(title="Gemma Lite Studio") as page:
        access.login_button()  # on a Space only: submitting and serving need a Hugging Face sign-in
        gr.Markdown(
            "# Gemma Lite Studio\nFLAP structured pruning of Gemma 4's FFNs with bias compensation, "
            "then GPTQ W4A16: plan per layer, run as a job, analyse."
        )
        shared = Shared(
            model_state=gr.State(None),
            plan_state=gr.State(None),
            browser_jobs=gr.BrowserState({"jobs": [], "selected": None}, storage_key=BROWSER_STORAGE_KEY, secret=ctx.ui_secret()),
            finished_job=gr.State(None),
        )
        built = {}
        with gr.Tabs():
            for label, module_name in TABS:
                with gr.Tab(label, id=module_name.rsplit(".", 1)[-1]):
                    built[module_name] = importlib.import_module(module_name).create_ui(ctx, shared)
        model_tab = built["studio.ui.model_tab"]
        # On page load: the default model (which fills in the plan) and the job list.
        from studio.ui.model_tab import load_model

        page.load(lambda: load_model(DEMO_MODEL, ctx), None, [shared.model_state, model_tab.summary],
                  api_visibility="private")
        # The job list, the Jobs tab's selection and `shared.finished_job` (Analysis draws that job;
        # Chat offers its export in pane B).
        jobs_tab = built["studio.ui.jobs_tab"]
        page.load(jobs_tab.refresh, jobs_tab.refresh_inputs, jobs_tab.refresh_outputs, api_visibility="private")
        analysis_tab = built["studio.ui.analysis_tab"]
        jobs = [analysis_tab.job, analysis_tab.compare]
        page.load(analysis_tab.refresh_choices, jobs, jobs, api_visibility="private")
    return page


def launch(ctx: StudioContext, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    page = build_app(ctx)
    page.queue(default_concurrency_limit=4)
    # Serve job results and exports only: not the rest of the studio home (its UI secret, say).
    allowed = [str(jobs_dir(Path(ctx.home))), str(exports_dir(Path(ctx.home)))]
    return page.launch(
        server_name=host,
        server_port=port,
        allowed_paths=allowed,
        max_file_size=MAX_UPLOAD_BYTES,
        css=CSS,
        theme=offline_theme(),
        show_error=True,
        **kwargs,
    )
