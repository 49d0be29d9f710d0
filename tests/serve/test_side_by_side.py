"""Two panes against a real OpenAI-streaming server on loopback: concurrency, errors, blind votes."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from studio.serve.chat import ChatError, GenerationStats, SamplingSettings, TextDelta
from studio.serve.client import OpenAIBackend
from studio.serve.side_by_side import VOTES_FILE, SideBySideChat


def backends(server, model_a="echo", model_b="echo"):
    return OpenAIBackend(server.url, model_a, name=f"{model_a}-a"), OpenAIBackend(server.url, model_b, name=f"{model_b}-b")


def test_both_panes_stream_concurrently(openai_server):
    # Each "paired" request is held until the other one has arrived, so both replies can only
    # come when the two panes really were sent at the same time.
    chat = SideBySideChat(*backends(openai_server, "paired-A", "paired-B"))
    updates = list(chat.send("red green blue"))
    assert {u.pane for u in updates} == {"A", "B"}
    for name in "AB":
        reply = chat.panes[name].replies[-1]
        assert reply.text == "blue green red"
        assert reply.error is None
        assert reply.stats.output_tokens == 3 and reply.stats.prompt_tokens == 3
    # Every update carries the pane's text so far; the last one per pane is the whole reply.
    last = {u.pane: u.text for u in updates}
    assert last == {"A": "blue green red", "B": "blue green red"}
    assert not chat.streaming


def test_an_image_reaches_the_server_from_both_panes(openai_server):
    chat = SideBySideChat(*backends(openai_server))
    list(chat.send("describe", [Image.new("RGB", (4, 4), (0, 0, 255))]))
    assert len(openai_server.requests) == 2
    for request in openai_server.requests:
        image_part = request["messages"][0]["content"][0]
        assert image_part["type"] == "image_url"
        assert image_part["image_url"]["url"].startswith("data:image/png;base64,")


def test_a_server_error_shows_in_its_pane_only(openai_server):
    chat = SideBySideChat(*backends(openai_server, "echo", "broken"))
    updates = list(chat.send("one two"))
    a, b = chat.panes["A"].replies[-1], chat.panes["B"].replies[-1]
    assert (a.text, a.error) == ("two one", None)
    assert isinstance(a.stats, GenerationStats)
    assert b.text == "" and b.stats is None
    assert b.error == "server answered HTTP 500: the model crashed (test)"
    assert [type(u.event) for u in updates if u.pane == "B"] == [ChatError]


def test_each_pane_keeps_its_own_history(openai_server):
    chat = SideBySideChat(*backends(openai_server, "echo", "broken"))
    list(chat.send("first turn"))
    list(chat.send("second turn"))
    sent = {(r["model"], len(r["messages"])): r["messages"] for r in openai_server.requests}
    history_a = sent[("echo", 3)]
    assert [m["role"] for m in history_a] == ["user", "assistant", "user"]
    assert history_a[1]["content"] == "turn first"  # pane A's own earlier reply
    assert sent[("broken", 3)][1]["content"] == ""  # pane B failed, so its earlier reply is empty
    assert [m["role"] for m in chat.panes["A"].messages] == ["user", "assistant"] * 2


def test_stop_ends_both_panes(openai_server):
    chat = SideBySideChat(*backends(openai_server, "echo-slow", "echo-slow"))
    words = " ".join(f"w{i}" for i in range(50))
    seen = 0
    for update in chat.send(words):
        if isinstance(update.event, TextDelta):
            seen += 1
            if seen == 1:
                chat.stop()
    for name in "AB":
        reply = chat.panes[name].replies[-1]
        assert reply.stats.finish_reason == "stopped"
        assert len(reply.text.split()) < 50
    # The stopped replies are kept as the panes' answers.
    assert chat.panes["A"].messages[-1] == {"role": "assistant", "content": chat.panes["A"].replies[-1].text}


def test_regenerate_one_pane_replaces_its_last_reply(openai_server):
    chat = SideBySideChat(*backends(openai_server))
    list(chat.send("a b c"))
    before = len(openai_server.requests)
    chat.set_settings(SamplingSettings(max_tokens=1), pane="B")
    list(chat.regenerate(["B"]))
    assert len(openai_server.requests) == before + 1
    request = openai_server.requests[-1]
    assert [m["role"] for m in request["messages"]] == ["user"]
    assert request["max_tokens"] == 1
    assert chat.panes["B"].replies[-1].text == "c"
    assert chat.panes["A"].replies[-1].text == "c b a"
    assert [m["role"] for m in chat.panes["B"].messages] == ["user", "assistant"]


def test_regenerate_without_a_turn_and_send_while_streaming_are_input_errors(openai_server):
    chat = SideBySideChat(*backends(openai_server, "echo-slow", "echo-slow"))
    with pytest.raises(ValueError, match="^regenerate: there is no turn"):
        chat.regenerate()
    with pytest.raises(ValueError, match="^panes: name at least one pane"):
        chat.regenerate([])
    updates = chat.send("x y z")
    with pytest.raises(ValueError, match="^chat: a reply is still streaming"):
        chat.send("again")
    list(updates)
    list(chat.send("now it works"))  # the chat is free again
    assert chat.panes["A"].replies[-1].text == "works it now"


def test_clear_starts_a_new_conversation(openai_server):
    chat = SideBySideChat(*backends(openai_server))
    list(chat.send("hello"))
    chat.clear()
    assert chat.panes["A"].messages == [] and chat.panes["B"].replies == []
    list(chat.send("again"))
    assert len(openai_server.requests[-1]["messages"]) == 1


def test_closing_the_updates_early_still_finishes_the_turn(openai_server):
    chat = SideBySideChat(*backends(openai_server, "echo-slow", "echo-slow"))
    updates = chat.send(" ".join(f"w{i}" for i in range(50)))
    next(updates)
    updates.close()  # e.g. the browser went away
    assert not chat.streaming
    for name in "AB":
        assert chat.panes[name].replies[-1].stats.finish_reason == "stopped"
        assert chat.panes[name].messages[-1]["role"] == "assistant"


def test_replies_are_recorded_even_when_the_updates_are_never_read(openai_server):
    chat = SideBySideChat(*backends(openai_server))
    chat.send("never read")  # a UI that dropped the iterator
    assert chat.wait(30)
    assert [chat.panes[name].replies[-1].text for name in "AB"] == ["read never", "read never"]
    list(chat.send("next turn"))  # and the chat is free for the next turn
    assert len(openai_server.requests[-1]["messages"]) == 3


def test_ticks_come_while_no_pane_sends_anything(openai_server):
    """With tick_s, a UI gets a chance to refresh between the slow server's chunks (0.2 s apart)."""
    chat = SideBySideChat(*backends(openai_server, "echo-slow", "echo-slow"), tick_s=0.02)
    updates = list(chat.send("a b c"))
    ticks = [u for u in updates if u.event is None]
    assert ticks and all(u.pane is None and u.text == "" for u in ticks)
    assert [chat.panes[name].replies[-1].text for name in "AB"] == ["c b a", "c b a"]
    plain = SideBySideChat(*backends(openai_server, "echo-slow", "echo-slow"))
    assert all(u.event is not None for u in plain.send("a b c"))  # no ticks unless asked for


def test_a_raising_backend_becomes_an_error_in_its_pane(openai_server):
    class Exploding:
        name = "exploding"

        def stream_chat(self, messages, settings, stop=None):
            yield TextDelta("partial ")
            raise RuntimeError("backend bug")

    chat = SideBySideChat(OpenAIBackend(openai_server.url, "echo"), Exploding())
    list(chat.send("fine"))
    assert chat.panes["A"].replies[-1].error is None
    assert chat.panes["B"].replies[-1].text == "partial "
    assert chat.panes["B"].replies[-1].error == "RuntimeError: backend bug"


def test_blind_mode_hides_the_models_until_the_vote(openai_server, tmp_path):
    a, b = backends(openai_server)
    orders = set()
    for seed in range(8):
        chat = SideBySideChat(a, b, blind=True, votes_dir=tmp_path, rng=random.Random(seed))
        orders.add(chat.panes["A"].backend.name)
    assert orders == {"echo-a", "echo-b"}  # both assignments happen

    chat = SideBySideChat(a, b, blind=True, votes_dir=tmp_path / "votes", rng=random.Random(1))
    assert (chat.label("A"), chat.label("B")) == ("Model A", "Model B")
    with pytest.raises(ValueError, match="^vote: there is no finished turn"):
        chat.vote("A")
    list(chat.send("which is better"))
    hidden = chat.transcript()
    assert {pane["model"] for pane in hidden["panes"].values()} == {"Model A", "Model B"}
    assert "echo-a" not in json.dumps(hidden)
    # Speeds and token counts would tell the models apart: withheld until the vote.
    assert [pane["replies"][0]["stats"] for pane in hidden["panes"].values()] == [None, None]

    record = chat.vote("B")
    assert all(pane["replies"][0]["stats"]["output_tokens"] == 3 for pane in chat.transcript()["panes"].values())
    behind_b = chat.panes["B"].backend.name
    assert record["winner"] == behind_b
    assert (record["pane_a"], record["pane_b"]) == (chat.panes["A"].backend.name, behind_b)
    assert record["prompts"] == ["which is better"] and record["turns"] == 1
    assert chat.label("B") == behind_b
    lines = (tmp_path / "votes" / VOTES_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record]
    with pytest.raises(ValueError, match="^vote: this conversation already has a vote"):
        chat.vote("A")

    chat.clear()  # a new blind conversation: hidden again, next vote appended
    assert chat.label("A") == "Model A"
    list(chat.send("again"))
    chat.vote("tie")
    assert len((tmp_path / "votes" / VOTES_FILE).read_text().splitlines()) == 2


def test_vote_input_errors(openai_server, tmp_path):
    with pytest.raises(ValueError, match="^votes_dir: blind mode needs"):
        SideBySideChat(*backends(openai_server), blind=True)
    seen = SideBySideChat(*backends(openai_server))
    with pytest.raises(ValueError, match="^vote: votes are taken in blind mode only"):
        seen.vote("A")
    blind = SideBySideChat(*backends(openai_server), blind=True, votes_dir=tmp_path)
    with pytest.raises(ValueError, match="^choice: must be one of A, B, tie, both_bad"):
        blind.vote("C")
    with pytest.raises(ValueError, match="^pane: must be 'A' or 'B'"):
        blind.label("C")


def test_transcript_export_holds_both_conversations(openai_server, tmp_path):
    chat = SideBySideChat(*backends(openai_server, "echo", "broken"), settings=SamplingSettings(seed=5))
    list(chat.send("look", [Image.new("RGB", (2, 2))]))
    path = chat.export_transcript(tmp_path / "out" / "transcript.json")
    data = json.loads(path.read_text())
    assert data["format"] == "gemma-lite-studio/chat-transcript/v1"
    assert data["panes"]["A"]["model"] == "echo-a" and data["panes"]["B"]["model"] == "broken-b"
    assert data["panes"]["A"]["settings"]["seed"] == 5
    assert data["panes"]["A"]["messages"][1] == {"role": "assistant", "content": "look"}
    assert data["panes"]["A"]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert data["panes"]["A"]["replies"][0]["stats"]["output_tokens"] == 1
    assert data["panes"]["B"]["replies"][0]["error"].startswith("server answered HTTP 500")
