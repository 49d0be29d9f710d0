"""Shared fixtures: the demo model, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CALIBRATION_TEXT = DATA_DIR / "wikitext-2-valid.txt"
TEST_TEXT = DATA_DIR / "wikitext-2-raw-test.txt"
E4B_CONFIG = DATA_DIR.parent / "reference" / "gemma-4-e4b-text-config.json"


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    """A demo Gemma 4 checkpoint (8 layers, FFN 512) written once for the whole session."""
    from studio.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def calibration_text() -> Path:
    return CALIBRATION_TEXT
