"""What runs a chat pane, and the models a chat page offers: the library behind the chat tab.

A pane is chosen as a `PaneSource` (an engine and a model folder, or an OpenAI-compatible URL).
`BackendPool`, shared by every visitor of a page, turns choices into backends: one loaded model
per (folder, pane) for the transformers CPU fallback, one vLLM server per folder started by
`studio.serve.manager.ServerManager`. "auto" lets `studio.serve.manager.choose_engine` decide (vLLM
where it can serve the model, the fallback otherwise, e.g. INT4 exports on CPU). `open_session`
sets up a visitor's `ChatSession` from its choices; a pane that cannot be set up answers with why.
`ChatModels` lists the folders a page offers (the demo model, the base model, the exports) and
resolves a typed choice to a folder. Nothing here knows about Gradio.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.jobs.client import job_store
from studio.jobs.results import job_outputs
from studio.model_source import DEMO_MODEL, resolve_model
from studio.paths import exports_dir
from studio.serve.chat import ChatError
from studio.serve.chat_session import ChatSession
from studio.serve.client import OpenAIBackend
from studio.serve.manager import DEFAULT_VLLM_PYTHON, ServerManager, ServerSpec, choose_engine, detect_device, is_gptq_checkpoint
from studio.serve.side_by_side import PANES, SideBySideChat

ENGINE_AUTO = "auto"
ENGINE_CPU = "transformers (CPU)"
ENGINE_VLLM = "vLLM server"
ENGINE_URL = "OpenAI-compatible URL"
ENGINES = (ENGINE_AUTO, ENGINE_CPU, ENGINE_VLLM, ENGINE_URL)
# While no pane sends anything (a model loading), the chat still yields an update this often, so
# a UI can redraw the panes' headings.
IDLE_TICK_S = 0.5


def vllm_python() -> Path:
    """The vLLM environment's interpreter, as `ServerManager` finds it."""
    return Path(os.environ.get("STUDIO_VLLM_PYTHON") or DEFAULT_VLLM_PYTHON)


def vllm_available() -> bool:
    return vllm_python().exists()


def engine_choices() -> list[str]:
    """The engines this machine offers (vLLM only where its environment exists)."""
    return [engine for engine in ENGINES if engine != ENGINE_VLLM or vllm_available()]


# --- which models can be chosen ---------------------------------------------------------------


@dataclass(frozen=True)
class ChatModels:
    """The model folders a chat page offers and accepts. `roots`: where typed folders may lie (a
    Space: `studio.safety.readable_roots`); None: anywhere, relative to the working folder."""

    home: Path
    demo_dir: Path
    roots: Sequence[Path] | None = None

    def folder(self, choice: str | None, field: str) -> Path:
        """The folder behind a model choice (empty: the demo model)."""
        choice = (choice or "").strip() or DEMO_MODEL
        return resolve_model(choice, field, named={DEMO_MODEL: Path(self.demo_dir)}, roots=self.roots, hub_ids=False)

    def is_demo(self, folder: str | Path) -> bool:
        return Path(folder).resolve() == Path(self.demo_dir).resolve()

    def label(self, model_dir: Path) -> str:
        return "demo" if self.is_demo(model_dir) else model_dir.name

    def exports(self) -> list[Path]:
        """Servable folders under STUDIO_HOME/exports, newest first."""
        root = exports_dir(self.home)
        if not root.is_dir():
            return []
        folders = [p for p in root.iterdir() if (p / "config.json").is_file()]
        return sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)

    def finished_export(self, job_id: str | None) -> Path | None:
        """The export folder a job wrote under STUDIO_HOME/exports, or None (no job, no export stage)."""
        if not job_id:
            return None
        try:
            folder = job_store(self.home).job_dir(job_id)
        except ValueError:  # an unknown or malformed id
            return None
        return job_outputs(folder).export

    @staticmethod
    def local_base(checkpoint: str | None) -> str | None:
        """The base model's local folder (hub ids and config-only models: None)."""
        return checkpoint if checkpoint and Path(checkpoint).is_dir() else None

    def choices(self, base_checkpoint: str | None) -> list[tuple[str, str]]:
        """(label, value) pairs: the demo model, the base model, then every export."""
        choices = [("demo model", DEMO_MODEL)]
        base = self.local_base(base_checkpoint)
        if base and not self.is_demo(base):
            choices.append((f"base: {Path(base).name}", base))
        return choices + [(f"export: {p.name}", str(p)) for p in self.exports()]

    def defaults(self, base_checkpoint: str | None) -> tuple[str, str]:
        """Pane A: the base model (the demo model until one is chosen); pane B: the newest export.

        Values are choices of `choices`, so a menu shows a label, never a bare path.
        """
        base = self.local_base(base_checkpoint)
        if base is None or self.is_demo(base):
            base = DEMO_MODEL
        exports = self.exports()
        return base, str(exports[0]) if exports else DEMO_MODEL


# --- what runs a pane -------------------------------------------------------------------------


@dataclass(frozen=True)
class PaneSource:
    """A pane's choice as a form states it: engine and model folder (choice), or URL and the
    model served there (empty: the server's first)."""

    engine: str
    model: str
    url: str = ""
    served_model: str = ""

    @classmethod
    def from_form(cls, engine, model, url, served_model) -> PaneSource:
        return cls(*((value or "").strip() for value in (engine or ENGINE_AUTO, model, url, served_model)))

    def label(self) -> str:
        """A short name for the choice (a folder's name, not its path)."""
        if self.engine == ENGINE_URL:
            return self.url or "URL"
        return Path(self.model).name if self.model else DEMO_MODEL


class UnavailableBackend:
    """Stands in for a pane whose model could not be set up: every reply is that error."""

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message

    def stream_chat(self, messages, settings, stop=None):
        yield ChatError(self.message)


class BackendPool:
    """Chat backends shared by all sessions of a page: one CPU model per (folder, pane), one
    vLLM server per folder.

    CPU models are kept per pane so that A and B on the same folder still generate at once (a
    `TransformersBackend` answers one reply at a time). Servers are started by one
    `ServerManager`, created on first use; it stops its servers at interpreter exit.
    """

    def __init__(self, models: ChatModels):
        self.models = models
        self._cpu: dict[tuple[Path, str], object] = {}
        self._servers: dict[Path, object] = {}
        self._manager: ServerManager | None = None
        self._cpu_lock = threading.Lock()
        self._server_lock = threading.Lock()  # one server start at a time

    def plan(self, pane: str, source: PaneSource) -> tuple[str, Path | None]:
        """(engine, model folder) for a pane's choice; ValueError naming the field for bad input."""
        if source.engine not in ENGINES:
            raise ValueError(f"engine_{pane.lower()}: must be one of {', '.join(engine_choices())}, got {source.engine!r}")
        if source.engine == ENGINE_URL:
            if not source.url:
                raise ValueError(f"url_{pane.lower()}: give the server's URL (http://host:port or .../v1)")
            return ENGINE_URL, None
        model_dir = self.models.folder(source.model, f"model_{pane.lower()}")
        engine = source.engine
        if engine == ENGINE_AUTO:
            chosen = choose_engine(model_dir, detect_device(), vllm_available())
            engine = ENGINE_VLLM if chosen == "vllm" else ENGINE_CPU
        if engine == ENGINE_VLLM:
            if not vllm_available():
                raise ValueError(f"engine_{pane.lower()}: no vLLM environment at {vllm_python()}; run scripts/setup_vllm_env.sh")
        return engine, model_dir

    def backend(self, pane: str, source: PaneSource, engine: str, model_dir: Path | None):
        """The chat backend for a planned pane (starting its vLLM server if none runs)."""
        if engine == ENGINE_URL:
            # No up-front check: a server that does not answer shows its error in this pane.
            served = source.served_model or None
            return OpenAIBackend(source.url, served, name=f"{served} at {source.url}" if served else source.url)
        if engine == ENGINE_VLLM:
            return self._vllm_backend(model_dir)
        return self._cpu_backend(model_dir, pane)

    def start_servers(self, model_dirs: list[Path]) -> None:
        """Start the servers of both panes together, so that on a GPU they get planned shares."""
        with self._server_lock:
            missing = [d for d in dict.fromkeys(model_dirs) if not self._running(d)]
            if len(missing) == 2:
                specs = [ServerSpec(d, name=self.models.label(d)) for d in missing]
                for model_dir, server in zip(missing, self._server_manager().start_pair(*specs)):
                    self._servers[model_dir] = server

    def _cpu_backend(self, model_dir: Path, pane: str):
        from studio.serve.cpu_backend import TransformersBackend  # imports torch: only when needed

        with self._cpu_lock:
            key = (model_dir, pane)
            if key not in self._cpu:
                name = self.models.label(model_dir)
                loader = None
                if is_gptq_checkpoint(model_dir):
                    from studio.gptq.quantize import load_quantized

                    loader = load_quantized
                self._cpu[key] = TransformersBackend(model_dir, name=f"{name} (transformers)", loader=loader)
            return self._cpu[key]

    def _vllm_backend(self, model_dir: Path):
        with self._server_lock:
            if not self._running(model_dir):
                server = self._server_manager().start(ServerSpec(model_dir, name=self.models.label(model_dir)))
                self._servers[model_dir] = server
            server = self._servers[model_dir]
            backend = server.backend()
            backend.name = f"{server.name} (vLLM)"
            return backend

    def _running(self, model_dir: Path) -> bool:
        """Whether a server for the folder runs; one that died is stopped (and started anew later)."""
        server = self._servers.get(model_dir)
        if server is not None and not server.alive:
            self._manager.stop(server)
            del self._servers[model_dir]
            return False
        return server is not None

    def _server_manager(self) -> ServerManager:
        if self._manager is None:
            self._manager = ServerManager(log_dir=self.models.home / "logs" / "vllm")
        return self._manager


# --- one visitor's conversation ---------------------------------------------------------------


def open_session(pool: BackendPool, session: ChatSession, votes_dir: Path) -> None:
    """Set up the panes of a new conversation (`session.chat`) from `session.sources`; a pane whose
    backend cannot be set up shows why in its replies.

    Input errors (a missing folder, an empty URL) and failed server starts stay in their pane.
    Whether the visitor may chat at all is the caller's to check first.
    """
    sources, blind = session.sources, session.blind
    errors: dict[str, str] = {}
    plans: dict[str, tuple[str, Path | None]] = {}
    for pane, source in zip(PANES, sources):
        try:
            plans[pane] = pool.plan(pane, source)
        except ValueError as err:
            errors[pane] = str(err)
    vllm_panes = [pane for pane, (engine, _dir) in plans.items() if engine == ENGINE_VLLM]
    if len(vllm_panes) == 2:
        try:
            pool.start_servers([plans[pane][1] for pane in vllm_panes])
        except Exception as err:  # noqa: BLE001 - shown in both vLLM panes
            errors.update({pane: f"{type(err).__name__}: {err}" for pane in vllm_panes})
    backends = []
    for pane, source in zip(PANES, sources):
        if pane not in errors:
            try:
                backends.append(pool.backend(pane, source, *plans[pane]))
                continue
            except Exception as err:  # noqa: BLE001 - shown in this pane only
                errors[pane] = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        backends.append(UnavailableBackend(source.label(), errors[pane]))
    session.setup_failed = bool(errors)
    session.chat = SideBySideChat(
        backends[0], backends[1], blind=blind, votes_dir=votes_dir if blind else None, tick_s=IDLE_TICK_S
    )
