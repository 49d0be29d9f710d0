"""What every tab shares: where the studio lives, and the session state the tabs pass around.

The state components are created once in `studio.ui.app.build_app` before any tab; each tab reads
and writes them, so tabs never import each other. `StudioContext` is read-only configuration.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from studio.calibration import E4B_TEXT_CONFIG, OFFLINE_CALIBRATION_TEXT, OFFLINE_EVALUATION_TEXT

# The published E4B text config bundled in data/ (plans and estimates without weights).
REFERENCE_CONFIG = E4B_TEXT_CONFIG
DEMO_MODEL = "demo"
E4B_CONFIG_ONLY = "google/gemma-4-E4B-it (config only)"
CARD_PRESET = "gemma4-lite-round2"


@dataclass(frozen=True)
class StudioContext:
    home: Path
    demo_dir: Path
    reference_config: Path = REFERENCE_CONFIG
    # Defaults of the calibration form: the project's local WikiText-2 copy (no hub access needed).
    calibration_text: Path = OFFLINE_CALIBRATION_TEXT
    eval_text: Path = OFFLINE_EVALUATION_TEXT

    def model_choices(self) -> list[str]:
        choices = [DEMO_MODEL]
        if self.reference_config.is_file():
            choices.append(E4B_CONFIG_ONLY)
        return choices

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
    plan_state: object = None  # gr.State: studio.plan_table.plan_to_state(plan) or None
    browser_jobs: object = None  # gr.BrowserState: {"jobs": [ids submitted here], "selected": id}
    calibration: dict = field(default_factory=dict)  # name -> input component (source, samples, seqlen, seed)
