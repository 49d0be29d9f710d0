"""What every tab shares: where the studio lives, and the session state the tabs pass around.

The state components are created once in `studio.ui.app.build_app` before any tab; each tab reads
and writes them, so tabs never import each other. `StudioContext` is read-only configuration.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gradio.components.plot import PlotData

from studio.calibration import E4B_TEXT_CONFIG, OFFLINE_CALIBRATION_TEXT, OFFLINE_EVALUATION_TEXT
from studio.model_source import DEMO_MODEL
from studio.safety import readable_roots
from studio.ui import access

# The published E4B text config bundled in data/ (plans and estimates without weights).
REFERENCE_CONFIG = E4B_TEXT_CONFIG
E4B_CONFIG_ONLY = "google/gemma-4-E4B-it (config only)"
CARD_PRESET = "gemma4-lite-round2"


class EstimateCache:
    """The most recent size estimates of this app, by (model, widths, GPTQ settings); thread-safe.

    Sessions editing the same preset ask for the same few estimates, so most answers are lookups.
    """

    def __init__(self, size: int = 512):
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: Hashable, compute: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()  # outside the lock: another session may compute the same value meanwhile
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


def cached_plot(figure) -> PlotData:
    """A Plotly figure serialised once, in the form `gr.Plot` sends (so a cached answer costs no JSON work)."""
    return PlotData(type="plotly", plot=figure.to_json())


@dataclass(frozen=True)
class StudioContext:
    home: Path
    demo_dir: Path
    reference_config: Path = REFERENCE_CONFIG
    # Defaults of the calibration form: the project's local WikiText-2 copy (no hub access needed).
    calibration_text: Path = OFFLINE_CALIBRATION_TEXT
    eval_text: Path = OFFLINE_EVALUATION_TEXT
    estimates: EstimateCache = field(default_factory=EstimateCache, compare=False, repr=False)

    def model_choices(self) -> list[str]:
        choices = [DEMO_MODEL]
        if self.reference_config.is_file():
            choices.append(E4B_CONFIG_ONLY)
        return choices

    def visitor_roots(self) -> tuple[Path, ...] | None:
        """Where typed paths may point: on a Space inside `readable_roots` (as
        `access.visitor_path` confines them), locally anywhere (None)."""
        return readable_roots(self.home) if access.on_space() else None

    def ui_secret(self) -> str:
        """A per-installation key for the browser-stored job list, kept so restarts can read it."""
        path = self.home / "ui_secret"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(16))
        return path.read_text().strip()


@dataclass
class Shared:
    """Components the tabs exchange (filled in as tabs are built)."""

    model_state: object = None  # gr.State: {"source", "label", "config_path", "checkpoint", "shapes"}
    plan_state: object = None  # gr.State: studio.plans.table.plan_to_state(plan) or None
    browser_jobs: object = None  # gr.BrowserState: {"jobs": [ids submitted here], "selected": id}
    # gr.State: id of the job that finished most recently (None until one does). Its `.change` is
    # the hook for tabs that follow new results (Analysis selects it; Chat may offer its export).
    finished_job: object = None
    calibration: dict = field(default_factory=dict)  # name -> input component (source, samples, seqlen, seed)
    flap: dict = field(default_factory=dict)  # name -> input component (metric, compensation, refit_damp, sequential), in the plan tab


# --- what each tab's create_ui returns, for the wiring across tabs in studio.ui.app -------------


@dataclass
class ModelTab:
    choice: object  # the model dropdown
    summary: object  # gr.Markdown: the loaded model's structure


@dataclass
class PlanTab:
    preset: object  # the preset dropdown
    table: object  # gr.Dataframe: the plan, one row per layer


@dataclass
class JobsTab:
    """`refresh(*refresh_inputs)` gives `refresh_outputs` (the job list, the selection, ...);
    `timer` runs it while the page is open."""

    timer: object
    refresh: Callable
    refresh_inputs: Sequence
    refresh_outputs: Sequence


@dataclass
class AnalysisTab:
    """`refresh_choices(job, compare)` gives both dropdowns' updated job choices."""

    job: object
    compare: object
    refresh_choices: Callable


@dataclass
class ChatTab:
    model_a: object  # pane A's model dropdown
    model_b: object
    session: object  # gr.State: the visitor's studio.serve.chat_session.ChatSession
