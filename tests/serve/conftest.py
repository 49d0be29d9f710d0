"""Fixtures for the chat and server tests: a real OpenAI-streaming server on loopback."""

from __future__ import annotations

import pytest

from tests.serve.openai_test_server import OpenAITestServer


@pytest.fixture
def openai_server():
    with OpenAITestServer() as server:
        yield server
