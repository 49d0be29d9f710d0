"""A visitor's side-by-side conversation as a chat UI holds it, and what the UI shows of it.

`ChatSession` wraps a `SideBySideChat` with what the page needs around it: the pane choices it was
opened with, the uploaded image files per turn, and a Stop that also reaches a turn still being
prepared (panes being set up, servers starting), which a plain `SideBySideChat.stop()` cannot: that
turn's stop event does not exist yet. The rendering helpers turn a session into plain data (chat
messages, one heading line per pane) and hide every per-model statistic while a blind conversation
is not yet voted on. Nothing here knows about Gradio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from studio.serve.chat import GenerationStats, message_text
from studio.serve.side_by_side import PANES, PaneUpdate, Reply, SideBySideChat


@dataclass
class ChatSession:
    """One visitor's conversation: `chat` is None while its panes are being set up."""

    sources: tuple
    blind: bool
    chat: SideBySideChat | None = None
    setup_failed: bool = False
    # Image files uploaded with each user turn, shown in the panes (the chat holds data URLs).
    images: list[list[str]] = field(default_factory=list)
    _stop_requested: bool = field(default=False, repr=False)

    def matches(self, sources: tuple, blind: bool) -> bool:
        """Whether a new turn with these choices continues this conversation."""
        return self.chat is not None and not self.setup_failed and self.sources == sources and self.blind == blind

    def expect_turn(self) -> None:
        """A send or regenerate is being prepared: Stops from before it no longer apply."""
        self._stop_requested = False

    def start_turn(self, begin: Callable[[SideBySideChat], Iterator[PaneUpdate]]) -> Iterator[PaneUpdate]:
        """Begin a turn with `begin(chat)` (e.g. `SideBySideChat.send`); a Stop that came since
        `expect_turn` ends it at once."""
        updates = begin(self.chat)
        # Read after the turn began: a Stop either saw this turn's event or set the flag first.
        if self._stop_requested:
            self.chat.stop()
        return updates

    def stop(self) -> None:
        """Stop the running turn, or the one being prepared as soon as it begins."""
        self._stop_requested = True  # before reading `chat`: see start_turn
        if self.chat is not None:
            self.chat.stop()

    def clear(self) -> None:
        """Stop and forget the conversation, history included, in both panes."""
        if self.chat is not None:
            self.chat.clear()
        self.images = []

    def close(self) -> None:
        self.stop()


# --- what a UI shows --------------------------------------------------------------------------


def format_stats(stats: GenerationStats | None) -> str:
    """One line: time to first token, decode speed, prompt and output tokens, why it ended."""
    if stats is None:
        return ""

    def value(number, fmt: str) -> str:
        return "–" if number is None else format(number, fmt)

    return (
        f"TTFT {value(stats.ttft_s, '.2f')} s · {value(stats.tokens_per_s, '.1f')} tokens/s · "
        f"prompt {value(stats.prompt_tokens, 'd')} tokens · output {value(stats.output_tokens, 'd')} tokens · "
        f"{stats.finish_reason or 'done'}"
    )


def statistics_hidden(chat: SideBySideChat) -> bool:
    """Blind and not voted on yet: speeds, times and token counts would give the models away."""
    return chat.blind and not chat.revealed


def reply_status(reply: Reply | None, hide_statistics: bool = False) -> str:
    """The state of a pane's last reply; with `hide_statistics`, no numbers at all."""
    if reply is None:
        return ""
    if reply.error is not None:
        return "**error** (see the reply)"
    if not reply.done:
        return "streaming…"
    if hide_statistics:
        return "stopped" if reply.stats and reply.stats.finish_reason == "stopped" else "done"
    return format_stats(reply.stats)


def load_status(backend) -> str:
    """How the pane's model was loaded, for backends that load one (the CPU fallback)."""
    seconds = getattr(backend, "load_seconds", None)
    if seconds is not None:
        return f"loaded in {seconds:.1f} s"
    return "loading the model…" if getattr(backend, "loading", False) else ""


def pane_heading(session: ChatSession | None, pane: str) -> str:
    """The line above a pane: which model (hidden while blind), its load time and the last
    reply's statistics (hidden while blind and not voted on)."""
    if session is None:
        return f"**{pane}**"
    chat = session.chat
    if chat is None:
        return f"**{pane}** · preparing…"
    hide = statistics_hidden(chat)
    replies = chat.panes[pane].replies
    parts = [f"**{pane}: {chat.label(pane)}**"]
    if not hide:
        parts.append(load_status(chat.panes[pane].backend))
    parts.append(reply_status(replies[-1] if replies else None, hide_statistics=hide))
    return " · ".join(part for part in parts if part)


def reply_content(reply: Reply) -> str:
    if reply.error is not None:
        prefix = f"{reply.text}\n\n" if reply.text else ""
        return f"{prefix}⚠️ **Error:** {reply.error}"
    if reply.text:
        return reply.text
    if not reply.done:
        return "…"
    return "(stopped before any text)" if reply.stats and reply.stats.finish_reason == "stopped" else "(empty reply)"


def pane_messages(session: ChatSession | None, pane: str) -> list[dict]:
    """The pane's conversation as chat messages ({"role", "content"}), uploaded images included
    as {"path": file}."""
    if session is None or session.chat is None:
        return []
    state = session.chat.panes[pane]
    rendered = []
    for turn, (user, reply) in enumerate(zip(state.user_turns, list(state.replies))):
        for path in session.images[turn] if turn < len(session.images) else ():
            rendered.append({"role": "user", "content": {"path": path}})
        if text := message_text(user):
            rendered.append({"role": "user", "content": text})
        rendered.append({"role": "assistant", "content": reply_content(reply)})
    return rendered


def render(session: ChatSession | None) -> list:
    """Messages of pane A, of pane B, heading A, heading B."""
    return [pane_messages(session, p) for p in PANES] + [pane_heading(session, p) for p in PANES]


def render_stream(session: ChatSession, updates: Iterator, interval_s: float) -> Iterator[list]:
    """`render(session)` as the updates arrive, at most every `interval_s` (long replies would
    flood a browser otherwise), and once more at the end."""
    last = 0.0
    for _update in updates:
        if time.monotonic() - last >= interval_s:
            last = time.monotonic()
            yield render(session)
    yield render(session)
