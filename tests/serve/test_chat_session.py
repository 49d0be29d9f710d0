"""A visitor's conversation as the chat tab holds it: Stops that come before the turn, headings."""

from __future__ import annotations

import random

from studio.serve.chat_session import ChatSession, pane_heading, pane_messages
from studio.serve.client import OpenAIBackend
from studio.serve.side_by_side import SideBySideChat

WORDS = " ".join(f"w{i}" for i in range(30))


def slow_chat(server, **kwargs) -> SideBySideChat:
    return SideBySideChat(OpenAIBackend(server.url, "echo-slow", name="slow-a"),
                          OpenAIBackend(server.url, "echo-slow", name="slow-b"), **kwargs)


def test_a_stop_before_the_panes_exist_stops_the_turn_they_then_begin(openai_server):
    session = ChatSession(sources=("a", "b"), blind=False)
    assert pane_heading(session, "A") == "**A** · preparing…" and pane_messages(session, "A") == []
    session.stop()  # pressed while the panes are still being set up
    session.chat = slow_chat(openai_server)
    list(session.start_turn(lambda chat: chat.send(WORDS)))
    for name in "AB":
        reply = session.chat.panes[name].replies[-1]
        assert reply.stats.finish_reason == "stopped"
        assert len(reply.text.split()) < 30


def test_a_stop_from_before_a_new_send_does_not_stop_it(openai_server):
    session = ChatSession(sources=("a", "b"), blind=False, chat=SideBySideChat(
        OpenAIBackend(openai_server.url, "echo", name="a"), OpenAIBackend(openai_server.url, "echo", name="b")))
    session.stop()  # nothing was running
    session.expect_turn()  # the next send is being prepared
    list(session.start_turn(lambda chat: chat.send("one two")))
    assert [session.chat.panes[name].replies[-1].stats.finish_reason for name in "AB"] == ["stop", "stop"]
    assert pane_heading(session, "A").startswith("**A: a** · TTFT ")


def test_blind_headings_show_no_statistics_until_the_vote(openai_server, tmp_path):
    chat = SideBySideChat(OpenAIBackend(openai_server.url, "echo", name="a"),
                          OpenAIBackend(openai_server.url, "echo", name="b"),
                          blind=True, votes_dir=tmp_path, rng=random.Random(0))
    session = ChatSession(sources=("a", "b"), blind=True, chat=chat)
    list(session.start_turn(lambda c: c.send("one two")))
    assert [pane_heading(session, name) for name in "AB"] == ["**A: Model A** · done", "**B: Model B** · done"]
    chat.vote("A")
    assert all(" tokens/s · prompt 2 tokens · output 2 tokens · stop" in pane_heading(session, n) for n in "AB")
    session.clear()
    assert pane_messages(session, "A") == [] and pane_heading(session, "A") == "**A: Model A**"
