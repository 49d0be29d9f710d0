"""Shared fixtures: the demo model, built once per test session. Under CI, skips fail (ci_skips.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from studio.calibration import E4B_TEXT_CONFIG, OFFLINE_CALIBRATION_TEXT, OFFLINE_EVALUATION_TEXT
from tests.ci_skips import (  # noqa: F401 - hooks
    pytest_make_collect_report,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

# The repository's bundled copies of ../shared/data and the E4B reference config (data/README.md).
CALIBRATION_TEXT = OFFLINE_CALIBRATION_TEXT
TEST_TEXT = OFFLINE_EVALUATION_TEXT
E4B_CONFIG = E4B_TEXT_CONFIG


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    """A demo Gemma 4 checkpoint (8 layers, FFN 512) written once for the whole session."""
    from studio.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def calibration_text() -> Path:
    return CALIBRATION_TEXT
