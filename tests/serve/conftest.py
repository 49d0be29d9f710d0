"""Fixtures for the chat and server tests: a real OpenAI-streaming server on loopback."""

from __future__ import annotations

import psutil
import pytest

from tests.serve.openai_test_server import OpenAITestServer


@pytest.fixture
def openai_server():
    with OpenAITestServer() as server:
        yield server


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` still running (zombies count as gone)."""
    out = []
    for proc in processes:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out
