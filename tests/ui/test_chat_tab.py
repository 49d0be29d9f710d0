"""The chat tab in a running Gradio app, driven through its named API endpoints with gradio_client.

The app holds only the chat tab (built like `studio.ui.app.build_app` builds a tab) and runs in this
process on a free port, with STUDIO_HOME in a temporary folder. The demo model answers through the
transformers CPU fallback; the loopback test server of tests/serve stands in for a vLLM server.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.modeling import model_construction
from studio.serve.chat import GenerationStats, SamplingSettings, TextDelta, user_message
from studio.serve.chat_session import format_stats
from studio.serve.cpu_backend import TransformersBackend
from studio.serve import chat_pool
from studio.serve.chat_pool import ENGINE_CPU, ENGINE_URL
from studio.ui import chat_tab
from studio.ui.context import Shared, StudioContext
from tests.serve.openai_test_server import OpenAITestServer

STATS = re.compile(r"TTFT \d+\.\d\d s · (\d+\.\d|–) tokens/s · prompt (\d+) tokens · output (\d+) tokens · (\w+)")
LOADED = re.compile(r"loaded in \d+\.\d s")
# Sampled with a fixed seed: both panes on one model must then give the very same reply, which a
# model built wrongly under a concurrent load (an uninitialised lm_head) would not.
TINY = {"max_tokens": 3, "temperature": 0.8, "seed": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory, demo_model_dir):
    """(Client, STUDIO_HOME) of a launched Blocks holding the chat tab."""
    home = tmp_path_factory.mktemp("studio-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDIO_HOME", str(home))
        patch.setenv("STUDIO_VLLM_PYTHON", str(home / "no-vllm" / "python"))  # the CPU machine's choices
        ctx = StudioContext(home=home, demo_dir=demo_model_dir)
        with gr.Blocks() as page:
            shared = Shared(model_state=gr.State(None), plan_state=gr.State(None))
            with gr.Tabs(), gr.Tab("Chat"):
                chat_tab.create_ui(ctx, shared)
        page.queue(default_concurrency_limit=4)
        page.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            yield Client(page.local_url, verbose=False), home
        finally:
            page.close()


def assistant_texts(chatbot: list[dict]) -> list[str]:
    """The text of each assistant message, as gradio_client returns a Chatbot's value."""
    texts = []
    for message in chatbot:
        if message["role"] != "assistant":
            continue
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        texts.append("".join(p["text"] if isinstance(p, dict) else str(p) for p in parts))
    return texts


def send(client: Client, text: str, **form) -> tuple:
    """One chat_send call; returns (chatbot A, chatbot B, stats A, stats B)."""
    chatbot_a, chatbot_b, stats_a, stats_b, _message = client.predict(
        message={"text": text, "files": []}, api_name="/chat_send", **form
    )
    return chatbot_a, chatbot_b, stats_a, stats_b


def test_endpoints_are_named(chat_app):
    client, _home = chat_app
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in ("chat_send", "chat_regenerate", "chat_stop", "chat_clear", "chat_vote", "chat_export"):
        assert f"/{name}" in endpoints


def serial_reply(model_dir, text: str) -> str:
    """The reply of a model loaded alone in this thread, with TINY's settings."""
    backend = TransformersBackend(model_dir)
    settings = SamplingSettings(temperature=TINY["temperature"], max_tokens=TINY["max_tokens"], seed=TINY["seed"])
    return "".join(e.text for e in backend.stream_chat([user_message(text)], settings) if isinstance(e, TextDelta))


def test_round_trip_on_the_demo_model_through_the_cpu_fallback(chat_app, demo_model_dir):
    client, _home = chat_app
    chatbot_a, chatbot_b, stats_a, stats_b = send(
        client, "Hello there", engine_a=ENGINE_CPU, model_a="demo", engine_b=ENGINE_CPU, model_b="demo", **TINY
    )
    replies = []
    for chatbot, stats in ((chatbot_a, stats_a), (chatbot_b, stats_b)):
        assert chatbot[0] == {**chatbot[0], "role": "user"}
        (reply,) = assistant_texts(chatbot)
        assert reply and "Error" not in reply and reply != "(empty reply)"
        replies.append(reply)
        match = STATS.search(stats)
        assert match, stats
        assert int(match[2]) > 3  # the chat template wraps the prompt
        assert 1 <= int(match[3]) <= TINY["max_tokens"]
        assert LOADED.search(stats), stats  # both panes loaded their model for this turn
    # The two panes loaded the demo model at the same time; both equal a model loaded alone.
    assert replies == [serial_reply(demo_model_dir, "Hello there")] * 2


def test_broken_url_fails_in_its_pane_only(chat_app):
    client, _home = chat_app
    client.predict(api_name="/chat_clear")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    chatbot_a, chatbot_b, stats_a, stats_b = send(
        client, "Hi", engine_a=ENGINE_CPU, model_a="demo", engine_b=ENGINE_URL, url_b=dead, **TINY
    )
    (reply_a,) = assistant_texts(chatbot_a)
    (reply_b,) = assistant_texts(chatbot_b)
    assert "Error" not in reply_a and STATS.search(stats_a)
    assert f"Error:** cannot reach {dead}" in reply_b
    assert "error" in stats_b and not STATS.search(stats_b)


@pytest.mark.parametrize(
    "pane_b, error",
    [
        ({"engine_b": ENGINE_CPU, "model_b": "/nonexistent/export"}, "model_b: /nonexistent/export is not a checkpoint"),
    ],
)
def test_pane_that_cannot_be_set_up_shows_why(chat_app, pane_b, error):
    client, _home = chat_app
    chatbot_a, chatbot_b, stats_a, _stats_b = send(client, "Hi", engine_a=ENGINE_CPU, model_a="demo", **pane_b, **TINY)
    assert STATS.search(stats_a), (stats_a, chatbot_a)
    assert error in assistant_texts(chatbot_b)[-1]


def test_blind_vote_is_saved_and_transcripts_export(chat_app):
    client, home = chat_app
    with OpenAITestServer() as server:
        form = dict(engine_a=ENGINE_URL, url_a=server.url, engine_b=ENGINE_CPU, model_b="demo", blind=True, **TINY)
        chatbot_a, chatbot_b, stats_a, stats_b = send(client, "one two three four", **form)
        # Hidden until the vote: the models, and every statistic that could tell them apart.
        assert stats_a == "**A: Model A** · done" and stats_b == "**B: Model B** · done"
        replies = assistant_texts(chatbot_a) + assistant_texts(chatbot_b)
        assert "four three two" in replies  # the echo model reverses the words, cut at 3 tokens
        hidden = json.loads(open(client.predict(api_name="/chat_export"), encoding="utf-8").read())
        assert [pane["replies"][0]["stats"] for pane in hidden["panes"].values()] == [None, None]
        heading_a, heading_b, message = client.predict("tie", api_name="/chat_vote")
        assert "Vote saved: Tie" in message
        assert "Model A" not in heading_a and "Model B" not in heading_b
        assert STATS.search(heading_a) and STATS.search(heading_b)  # revealed with the models
        (record,) = [json.loads(line) for line in (home / "chat" / "votes.jsonl").read_text().splitlines()]
        assert record["choice"] == "tie" and record["winner"] is None
        assert {record["pane_a"], record["pane_b"]} == {f"{server.url}", "demo (transformers)"}
        assert record["prompts"] == ["one two three four"]
        assert record["settings"]["A"]["max_tokens"] == 3

        path = client.predict(api_name="/chat_export")
        transcript = json.loads(open(path, encoding="utf-8").read())
        assert transcript["format"] == "gemma-lite-studio/chat-transcript/v1"
        assert transcript["blind"] and transcript["revealed"]
        models = {pane["model"] for pane in transcript["panes"].values()}
        assert models == {record["pane_a"], record["pane_b"]}
        for pane in transcript["panes"].values():
            assert pane["messages"][0] == {"role": "user", "content": "one two three four"}
            assert pane["replies"][0]["stats"]["output_tokens"] >= 1


def test_stop_regenerate_and_clear(chat_app):
    client, _home = chat_app
    words = [f"w{i}" for i in range(40)]
    with OpenAITestServer(chunk_delay_s=0.3) as server:
        form = dict(engine_a=ENGINE_URL, url_a=server.url, served_a="echo-slow",
                    engine_b=ENGINE_URL, url_b=server.url + "/v1", served_b="echo-slow", max_tokens=40)
        job = client.submit(message={"text": " ".join(words), "files": []}, api_name="/chat_send", **form)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until both panes show streamed text
            partial = job.outputs()[-1] if job.outputs() else None
            if partial and all(assistant_texts(chatbot)[-1:] != ["…"] and assistant_texts(chatbot)
                               for chatbot in partial[:2]):
                break
            time.sleep(0.1)
        assert client.predict(api_name="/chat_stop") == "Stopped."
        chatbot_a, chatbot_b, stats_a, stats_b, _message = job.result(timeout=30)
        for chatbot, stats in ((chatbot_a, stats_a), (chatbot_b, stats_b)):
            (reply,) = assistant_texts(chatbot)
            assert reply.startswith("w39") and len(reply.split()) < 40
            assert stats.endswith("· stopped")
        assert stats_a.startswith("**A: echo-slow at ")

        chatbot_a, chatbot_b, stats_a, stats_b = client.predict(max_tokens=2, api_name="/chat_regenerate")
        assert assistant_texts(chatbot_a) == assistant_texts(chatbot_b) == ["w39 w38"]
        assert STATS.search(stats_a)[3] == "2"  # output tokens

        chatbot_a, chatbot_b, stats_a, stats_b, _message = client.predict(api_name="/chat_clear")
        assert chatbot_a == chatbot_b == [] and stats_a == "**A: echo-slow at " + server.url + "**"
        # Clear means clear: the history is gone, so there is nothing to answer again.
        with pytest.raises(AppError, match="regenerate: there is no turn to answer again"):
            client.predict(max_tokens=2, api_name="/chat_regenerate")


def test_stop_while_the_panes_are_being_set_up_stops_the_new_turn(chat_app, monkeypatch):
    """Setting up panes can take long (servers start); a Stop pressed meanwhile ends the new turn."""
    client, _home = chat_app
    setting_up = chat_pool.BackendPool.backend

    def slow_backend(pool, *args):
        time.sleep(1.0)  # as a server start would
        return setting_up(pool, *args)

    monkeypatch.setattr(chat_pool.BackendPool, "backend", slow_backend)
    words = [f"v{i}" for i in range(40)]
    with OpenAITestServer(chunk_delay_s=0.3) as server:
        form = dict(engine_a=ENGINE_URL, url_a=server.url, served_a="echo-slow",
                    engine_b=ENGINE_URL, url_b=server.url, served_b="echo-slow", max_tokens=40)
        job = client.submit(message={"text": " ".join(words), "files": []}, api_name="/chat_send", **form)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not job.outputs():  # the "preparing" render
            time.sleep(0.05)
        first = job.outputs()[0]
        assert list(first[:3]) == [[], [], "**A** · preparing…"]  # the new session, still empty
        assert client.predict(api_name="/chat_stop") == "Stopped."
        chatbot_a, chatbot_b, stats_a, stats_b, _message = job.result(timeout=60)
    for chatbot, stats in ((chatbot_a, stats_a), (chatbot_b, stats_b)):
        (reply,) = assistant_texts(chatbot)
        assert stats.endswith("· stopped"), stats
        assert reply == "(stopped before any text)" or len(reply.split()) < 40


def test_stop_while_a_pane_waits_for_another_load(chat_app, demo_model_dir):
    """A pane whose model waits for another model's construction stops at once, without that load."""
    client, home = chat_app
    fresh = home / "exports" / "demo-copy"  # a folder no pane has loaded yet
    shutil.copytree(demo_model_dir, fresh)
    form = dict(engine_a=ENGINE_CPU, model_a=str(fresh), engine_b=ENGINE_CPU, model_b=str(fresh), **TINY)
    with model_construction():  # as another pane's long load would hold it
        job = client.submit(message={"text": "Hello", "files": []}, api_name="/chat_send", **form)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            "loading the model…" in heading for heading in (job.outputs()[-1][2:4] if job.outputs() else ("", ""))
        ):
            time.sleep(0.05)
        assert all("loading the model…" in heading for heading in job.outputs()[-1][2:4]), job.outputs()[-1]
        assert client.predict(api_name="/chat_stop") == "Stopped."
        chatbot_a, chatbot_b, stats_a, stats_b, _message = job.result(timeout=60)  # the lock is still held
    for chatbot, stats in ((chatbot_a, stats_a), (chatbot_b, stats_b)):
        assert assistant_texts(chatbot) == ["(stopped before any text)"]
        assert stats.endswith("· stopped") and not LOADED.search(stats), stats
    # Nothing was left half-loaded: the next turn loads and answers.
    chatbot_a, _chatbot_b, stats_a, _stats_b = send(client, "Hello", **form)
    assert LOADED.search(stats_a) and STATS.search(stats_a), stats_a
    assert assistant_texts(chatbot_a)[-1] == serial_reply(demo_model_dir, "Hello")


def test_the_panes_trash_clears_the_conversation(chat_app):
    """Each pane's trash icon is wired to the same clear as the Clear button (history included)."""
    client, _home = chat_app
    config = client.config
    components = {c["id"]: c for c in config["components"]}
    chatbots = {c["id"] for c in components.values() if c.get("type") == "chatbot"}
    clear_button = next(c["id"] for c in components.values() if c.get("props", {}).get("value") == "Clear")
    dependencies = config["dependencies"]
    by_button = next(d for d in dependencies if [clear_button, "click"] in [list(t) for t in d["targets"]])
    for chatbot in chatbots:
        (by_trash,) = [d for d in dependencies if [chatbot, "clear"] in [list(t) for t in d["targets"]]]
        assert (by_trash["inputs"], by_trash["outputs"]) == (by_button["inputs"], by_button["outputs"])
    assert len(chatbots) == 2


def test_image_upload_reaches_the_server_as_a_data_url(chat_app, tmp_path):
    client, _home = chat_app
    picture = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(picture)
    with OpenAITestServer() as server:
        form = dict(engine_a=ENGINE_URL, url_a=server.url, engine_b=ENGINE_URL, url_b=server.url, served_b="echo")
        chatbot_a, _b, _sa, _sb, _message = client.predict(
            message={"text": "what colour", "files": [handle_file(str(picture))]}, api_name="/chat_send", **form
        )
        assert len(server.requests) == 2
        for request in server.requests:
            image_part, text_part = request["messages"][-1]["content"]
            assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
            assert text_part == {"type": "text", "text": "what colour"}
    # The pane shows the uploaded picture, then the text, then the reply.
    (picture_part,) = chatbot_a[0]["content"]  # gradio_client hands files over as local paths
    assert picture_part["type"] == "file" and picture_part["file"].endswith("red.png")
    assert assistant_texts(chatbot_a) == ["colour what"]


def test_the_studio_app_builds_with_the_chat_tab(monkeypatch, tmp_path, demo_model_dir):
    from studio.ui import app

    monkeypatch.setattr(app, "TABS", (*app.TABS, ("Chat", "studio.ui.chat_tab")))
    page = app.build_app(StudioContext(home=tmp_path, demo_dir=demo_model_dir))
    api_names = {fn.api_name for fn in page.fns.values()}
    assert {"chat_send", "chat_stop", "chat_vote", "load_model"} <= api_names


def test_format_stats_line():
    stats = GenerationStats(ttft_s=0.25, tokens_per_s=12.345, prompt_tokens=17, output_tokens=8, total_s=1.0,
                            finish_reason="length")
    assert format_stats(stats) == "TTFT 0.25 s · 12.3 tokens/s · prompt 17 tokens · output 8 tokens · length"
    unknown = GenerationStats(None, None, None, None, 0.1, "stopped")
    assert format_stats(unknown) == "TTFT – s · – tokens/s · prompt – tokens · output – tokens · stopped"
