"""Two chat panes answering the same user turns at once: the studio's "what did I lose?" view.

`SideBySideChat` sends each user turn to pane A and pane B concurrently (one thread per pane) and
yields `PaneUpdate`s as either pane produces text, so a UI can render both replies streaming at the
same time. Each pane keeps its own history (its model's replies, not the other's). Stop, regenerate
and clear act on the running or last turn. In blind mode the two backends are assigned to A and B at
random and shown as "Model A"/"Model B", their statistics withheld, until the user votes; votes are
appended to `votes.jsonl` in a given folder. `transcript()` gives both conversations as one JSON-ready dict.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import queue
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from studio.atomic import atomic_write_text
from studio.serve.chat import (
    ChatBackend,
    ChatError,
    ChatEvent,
    GenerationStats,
    Message,
    SamplingSettings,
    TextDelta,
    message_text,
    user_message,
)

PANES = ("A", "B")
VOTE_CHOICES = ("A", "B", "tie", "both_bad")
VOTES_FILE = "votes.jsonl"
TRANSCRIPT_FORMAT = "gemma-lite-studio/chat-transcript/v1"
# How long closing the updates early waits for the stopped panes to record their replies.
_CLOSE_WAIT_S = 30.0


@dataclass
class Reply:
    """One pane's answer to one user turn, filled in while it streams."""

    text: str = ""
    stats: GenerationStats | None = None
    error: str | None = None
    done: bool = False

    def apply(self, event: ChatEvent) -> None:
        if isinstance(event, TextDelta):
            self.text += event.text
        elif isinstance(event, GenerationStats):
            self.stats, self.done = event, True
        elif isinstance(event, ChatError):
            self.error, self.done = event.message, True

    def to_dict(self, with_stats: bool = True) -> dict:
        stats = self.stats.to_dict() if self.stats and with_stats else None
        return {"text": self.text, "stats": stats, "error": self.error}


@dataclass
class Pane:
    """A backend, its sampling settings and its own conversation."""

    backend: ChatBackend
    settings: SamplingSettings
    # Alternating user and assistant messages as this pane's model saw and answered them.
    messages: list[Message] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)

    @property
    def user_turns(self) -> list[Message]:
        return [m for m in self.messages if m["role"] == "user"]

    def prompt_for_last_turn(self) -> list[Message]:
        """The history up to and including the last user message (its reply left out)."""
        last_user = max(i for i, m in enumerate(self.messages) if m["role"] == "user")
        return self.messages[: last_user + 1]


@dataclass(frozen=True)
class PaneUpdate:
    """Something new in one pane: the event, and the pane's reply text so far.

    With `tick_s` set on the chat, an update with `pane` and `event` None comes whenever no event
    came for that long: nothing changed in the replies, but a UI may refresh (e.g. "loading").
    """

    pane: str | None
    event: ChatEvent | None
    text: str


class SideBySideChat:
    """Orchestrates panes A and B: concurrent turns, stop, regenerate, clear, blind votes, export.

    `settings` applies to both panes unless `settings_b` gives pane B its own. With `blind=True`
    the backends are shuffled onto A and B with `rng` (a `random.Random`, for reproducible tests)
    and `label()` hides their names until `vote()`. Votes go to `votes_dir/votes.jsonl`.
    `tick_s`: see `PaneUpdate`.
    """

    def __init__(
        self,
        backend_a: ChatBackend,
        backend_b: ChatBackend,
        *,
        settings: SamplingSettings | None = None,
        settings_b: SamplingSettings | None = None,
        blind: bool = False,
        votes_dir: str | Path | None = None,
        rng: random.Random | None = None,
        tick_s: float | None = None,
    ):
        if blind and votes_dir is None:
            raise ValueError("votes_dir: blind mode needs a folder to save votes in")
        settings = settings or SamplingSettings()
        self._backends = (backend_a, backend_b)
        self._rng = rng or random.Random()
        self.blind = blind
        self.tick_s = tick_s
        self.votes_dir = Path(votes_dir) if votes_dir is not None else None
        self.panes = {
            "A": Pane(backend_a, settings),
            "B": Pane(backend_b, settings_b or settings),
        }
        self.revealed = not blind
        self.votes: list[dict] = []
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._state_lock = threading.Lock()  # claims a turn
        self._reply_lock = threading.Lock()  # guards replies while pane threads write them
        self._assign_backends()

    # --- who is where --------------------------------------------------------------------------

    def _assign_backends(self) -> None:
        order = list(self._backends)
        if self.blind:
            self._rng.shuffle(order)
        for name, backend in zip(PANES, order):
            self.panes[name].backend = backend

    def label(self, pane: str) -> str:
        """What the UI shows above a pane: the backend's name, or "Model A/B" while blind."""
        self._check_pane(pane)
        return self.panes[pane].backend.name if self.revealed else f"Model {pane}"

    @property
    def streaming(self) -> bool:
        return not self._idle.is_set()

    # --- settings ------------------------------------------------------------------------------

    def set_settings(self, settings: SamplingSettings, pane: str | None = None) -> None:
        """Use `settings` for one pane, or for both when `pane` is None (shared settings)."""
        for name in PANES if pane is None else (pane,):
            self._check_pane(name)
            self.panes[name].settings = settings

    # --- turns ---------------------------------------------------------------------------------

    def send(self, text: str, images: Sequence[Image.Image | str | Path] = ()) -> Iterator[PaneUpdate]:
        """Send one user turn (text and images) to both panes; yield updates until both finish."""
        message = user_message(text, images)
        with self._begin_turn():
            for pane in self.panes.values():
                pane.messages.append(message)
                pane.replies.append(Reply())
        return self._run(PANES)

    def regenerate(self, panes: Sequence[str] = PANES) -> Iterator[PaneUpdate]:
        """Answer the last user turn again in `panes`, replacing their last replies."""
        if not panes:
            raise ValueError("panes: name at least one pane to answer again")
        for name in panes:
            self._check_pane(name)
        with self._begin_turn():
            if not self.panes["A"].replies:
                raise ValueError("regenerate: there is no turn to answer again")
            for name in panes:
                pane = self.panes[name]
                pane.messages = pane.prompt_for_last_turn()
                pane.replies[-1] = Reply()
        return self._run(tuple(panes))

    def stop(self) -> None:
        """Ask the running replies to end; each pane then finishes with `finish_reason="stopped"`."""
        self._stop.set()

    def clear(self, timeout_s: float = 30.0) -> None:
        """Stop any running turn and start a new conversation (re-shuffling the panes when blind)."""
        self.stop()
        self._idle.wait(timeout_s)
        with self._state_lock:
            for pane in self.panes.values():
                pane.messages, pane.replies = [], []
            self.revealed = not self.blind
            self.votes = []
            self._assign_backends()

    @contextlib.contextmanager
    def _begin_turn(self):
        """Claim the chat for one turn; a second turn while one streams is an input error."""
        with self._state_lock:
            if not self._idle.is_set():
                raise ValueError("chat: a reply is still streaming; stop it or wait for it first")
            self._idle.clear()
            self._stop = threading.Event()
            try:
                yield
            except BaseException:
                self._idle.set()
                raise

    def _run(self, names: tuple[str, ...]) -> Iterator[PaneUpdate]:
        """Start one thread per pane in `names`; return the iterator of their updates.

        The pane threads record replies themselves, so the conversation is complete even if the
        updates are never read; the turn ends (`streaming` turns false) when the last one finishes.
        """
        stop = self._stop
        updates: queue.Queue = queue.Queue()
        remaining = [len(names)]
        for name in names:
            threading.Thread(
                target=self._answer,
                args=(name, stop, updates, remaining),
                name=f"chat-pane-{name}",
                daemon=True,
            ).start()
        return self._updates(len(names), updates, stop)

    def _answer(self, name: str, stop: threading.Event, updates: queue.Queue, remaining: list[int]) -> None:
        """One pane's reply: stream it from the backend into the pane's last Reply."""
        pane = self.panes[name]
        # Held on to: clear() gives the pane new lists, and a late reply must not land in them.
        messages, reply = pane.messages, pane.replies[-1]
        try:
            for event in pane.backend.stream_chat(list(messages), pane.settings, stop):
                with self._reply_lock:
                    reply.apply(event)
                    text = reply.text
                updates.put(PaneUpdate(name, event, text))
        except Exception as err:  # noqa: BLE001 - backends should not raise; if one does, show it
            error = ChatError(f"{type(err).__name__}: {err}")
            with self._reply_lock:
                reply.apply(error)
            updates.put(PaneUpdate(name, error, reply.text))
        finally:
            with self._reply_lock:
                if not reply.done:
                    reply.apply(ChatError("the backend ended the reply without a result"))
                messages.append({"role": "assistant", "content": reply.text})
                remaining[0] -= 1
                if remaining[0] == 0:
                    self._idle.set()
            updates.put(None)

    def _updates(self, pending: int, updates: queue.Queue, stop: threading.Event) -> Iterator[PaneUpdate]:
        try:
            while pending:
                try:
                    update = updates.get(timeout=self.tick_s)
                except queue.Empty:  # only with tick_s
                    yield PaneUpdate(None, None, "")
                    continue
                if update is None:
                    pending -= 1
                else:
                    yield update
        finally:
            if pending:  # closed early (the UI went away): stop the panes and let them record it
                stop.set()
                self._idle.wait(_CLOSE_WAIT_S)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until no turn is streaming; False if `timeout_s` passed first."""
        return self._idle.wait(timeout_s)

    # --- blind votes ---------------------------------------------------------------------------

    def vote(self, choice: str) -> dict:
        """Record which pane answered better, reveal the models, and return the saved record.

        `choice` is "A", "B", "tie" or "both_bad". One vote per conversation; `clear()` starts the next.
        """
        if choice not in VOTE_CHOICES:
            raise ValueError(f"choice: must be one of {', '.join(VOTE_CHOICES)}, got {choice!r}")
        if not self.blind:
            raise ValueError("vote: votes are taken in blind mode only")
        if self.revealed:
            raise ValueError("vote: this conversation already has a vote; clear it to vote again")
        if self.streaming:
            raise ValueError("vote: wait for both replies to finish")
        if not any(reply.done for reply in self.panes["A"].replies):
            raise ValueError("vote: there is no finished turn to judge")
        names = {pane: self.panes[pane].backend.name for pane in PANES}
        record = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "choice": choice,
            "winner": names.get(choice),
            "pane_a": names["A"],
            "pane_b": names["B"],
            "turns": len(self.panes["A"].replies),
            "prompts": [message_text(m) for m in self.panes["A"].user_turns],
            "settings": {pane: self.panes[pane].settings.to_dict() for pane in PANES},
        }
        self.votes_dir.mkdir(parents=True, exist_ok=True)
        with open(self.votes_dir / VOTES_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.votes.append(record)
        self.revealed = True
        return record

    # --- transcripts ---------------------------------------------------------------------------

    def transcript(self) -> dict:
        """Both conversations as a JSON-ready dict; model names and reply statistics stay hidden
        while blind and not voted on."""
        with self._reply_lock:  # a consistent snapshot, also while a turn streams
            return self._transcript()

    def _transcript(self) -> dict:
        return {
            "format": TRANSCRIPT_FORMAT,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "blind": self.blind,
            "revealed": self.revealed,
            "panes": {
                name: {
                    "model": self.label(name),
                    "settings": pane.settings.to_dict(),
                    "messages": list(pane.messages),
                    # Speeds and token counts would give a blind pane's model away before the vote.
                    "replies": [reply.to_dict(with_stats=self.revealed) for reply in pane.replies],
                }
                for name, pane in self.panes.items()
            },
            "votes": self.votes,
        }

    def export_transcript(self, path: str | Path) -> Path:
        """Write `transcript()` as JSON to `path` (atomically) and return the path."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.transcript(), indent=2, ensure_ascii=False) + "\n")
        return path

    @staticmethod
    def _check_pane(pane: str) -> None:
        if pane not in PANES:
            raise ValueError(f"pane: must be 'A' or 'B', got {pane!r}")
