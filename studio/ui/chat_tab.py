"""Chat tab: one prompt (text and images) answered by two models side by side, both streaming.

Pane A defaults to the base model, pane B to the newest export. Each pane picks its model (the
demo model, a checkpoint or export folder) and how it runs: the transformers CPU fallback, a vLLM
server started by `studio.serve.ServerManager` (offered only when the vLLM environment exists), or
an OpenAI-compatible URL. "auto" lets `studio.serve.manager.choose_engine` decide (vLLM where it
can serve the model, the fallback otherwise, e.g. INT4 exports on CPU).

Models and servers are kept by a `BackendPool` shared by every visitor of the page (one loaded model
or server per folder), conversations by a `studio.serve.chat_session.ChatSession` per browser
session (a `gr.State`). The conversation logic itself is `studio.serve.side_by_side.SideBySideChat`
and what the panes show comes from `studio.serve.chat_session`; this module only wires them. Named
API endpoints: chat_send, chat_regenerate, chat_stop, chat_clear, chat_vote, chat_export.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio.jobs.results import job_outputs
from studio.jobs.client import job_store
from studio.paths import exports_dir
from studio.safety import IMAGE_UPLOAD_MAX_BYTES, check_upload
from studio.serve.chat import ChatError, SamplingSettings
from studio.serve.chat_session import ChatSession, render
from studio.serve.client import OpenAIBackend
from studio.serve.manager import DEFAULT_VLLM_PYTHON, ServerManager, ServerSpec, choose_engine, detect_device, is_gptq_checkpoint
from studio.serve.side_by_side import PANES, SideBySideChat
from studio.ui import access
from studio.ui.context import DEMO_MODEL, Shared, StudioContext

ENGINE_AUTO = "auto"
ENGINE_CPU = "transformers (CPU)"
ENGINE_VLLM = "vLLM server"
ENGINE_URL = "OpenAI-compatible URL"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
# Streaming re-renders both panes; at most this often, so long replies do not flood the browser.
RENDER_INTERVAL_S = 0.1
# While no pane sends anything (a model loading), the panes are still re-rendered this often.
IDLE_RENDER_S = 0.5
VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


def vllm_python() -> Path:
    """The vLLM environment's interpreter, as `ServerManager` finds it."""
    return Path(os.environ.get("STUDIO_VLLM_PYTHON") or DEFAULT_VLLM_PYTHON)


def vllm_available() -> bool:
    return vllm_python().exists()


def engine_choices() -> list[str]:
    engines = [ENGINE_AUTO, ENGINE_CPU]
    if vllm_available():
        engines.append(ENGINE_VLLM)
    return engines + [ENGINE_URL]


# --- which models can be chosen ---------------------------------------------------------------


def export_folders(ctx: StudioContext) -> list[Path]:
    """Servable folders under STUDIO_HOME/exports, newest first."""
    root = exports_dir(ctx.home)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if (p / "config.json").is_file()]
    return sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)


def finished_export(ctx: StudioContext, job_id: str | None) -> Path | None:
    """The export folder a job wrote under STUDIO_HOME/exports, or None (no job, no export stage)."""
    if not job_id:
        return None
    try:
        folder = job_store(ctx.home).job_dir(job_id)
    except ValueError:  # an unknown or malformed id
        return None
    return job_outputs(folder).export


def base_checkpoint(model_state: dict | None) -> str | None:
    """The base model's local folder from the Model tab's state (hub ids and config-only models: None)."""
    checkpoint = (model_state or {}).get("checkpoint")
    if checkpoint and Path(checkpoint).is_dir():
        return checkpoint
    return None


def model_choices(ctx: StudioContext, model_state: dict | None) -> list[tuple[str, str]]:
    """(label, value) pairs: the demo model, the base model, then every export."""
    choices = [("demo model", DEMO_MODEL)]
    base = base_checkpoint(model_state)
    if base and Path(base).resolve() != Path(ctx.demo_dir).resolve():
        choices.append((f"base: {Path(base).name}", base))
    choices += [(f"export: {p.name}", str(p)) for p in export_folders(ctx)]
    return choices


def default_models(ctx: StudioContext, model_state: dict | None) -> tuple[str, str]:
    """Pane A: the base model (the demo model until one is chosen); pane B: the newest export.

    Values are choices of `model_choices`, so both dropdowns show a label, never a bare path.
    """
    base = base_checkpoint(model_state)
    if base is None or Path(base).resolve() == Path(ctx.demo_dir).resolve():
        base = DEMO_MODEL
    exports = export_folders(ctx)
    return base, str(exports[0]) if exports else DEMO_MODEL


def resolve_model_dir(choice: str | None, ctx: StudioContext, field: str) -> Path:
    """The folder behind a model choice; on a Space only folders inside STUDIO_HOME are allowed."""
    choice = (choice or "").strip() or DEMO_MODEL
    if choice == DEMO_MODEL:
        return Path(ctx.demo_dir)
    path = access.visitor_path(choice, field, ctx.home)
    if not (path / "config.json").is_file():
        raise ValueError(f"{field}: {path} is not a checkpoint or export folder (no config.json)")
    return path


# --- what runs a pane -------------------------------------------------------------------------


@dataclass(frozen=True)
class PaneSource:
    """A pane's choice as the form states it: engine and model folder (choice), or URL and the
    model served there (empty: the server's first)."""

    engine: str
    model: str
    url: str = ""
    served_model: str = ""

    @classmethod
    def from_form(cls, engine, model, url, served_model) -> PaneSource:
        return cls(*((value or "").strip() for value in (engine or ENGINE_AUTO, model, url, served_model)))


class UnavailableBackend:
    """Stands in for a pane whose model could not be set up: every reply is that error."""

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message

    def stream_chat(self, messages, settings, stop=None):
        yield ChatError(self.message)


class BackendPool:
    """Chat backends shared by all sessions of the page: one CPU model per (folder, pane), one
    vLLM server per folder.

    CPU models are kept per pane so that A and B on the same folder still generate at once (a
    `TransformersBackend` answers one reply at a time). Servers are started by one
    `ServerManager`, created on first use; it stops its servers at interpreter exit.
    """

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self._cpu: dict[tuple[Path, str], object] = {}
        self._servers: dict[Path, object] = {}
        self._manager: ServerManager | None = None
        self._cpu_lock = threading.Lock()
        self._server_lock = threading.Lock()  # one server start at a time

    def plan(self, pane: str, source: PaneSource, profile) -> tuple[str, Path | None]:
        """(engine, model folder) for a pane's choice; ValueError for bad input, gr.Error to sign in."""
        access.require_user(profile, action="chat with the models or start servers")
        field = f"model_{pane.lower()}"
        if source.engine not in (ENGINE_AUTO, ENGINE_CPU, ENGINE_VLLM, ENGINE_URL):
            raise ValueError(f"engine_{pane.lower()}: must be one of {', '.join(engine_choices())}, got {source.engine!r}")
        if source.engine == ENGINE_URL:
            if not source.url:
                raise ValueError(f"url_{pane.lower()}: give the server's URL (http://host:port or .../v1)")
            return ENGINE_URL, None
        model_dir = resolve_model_dir(source.model, self.ctx, field)
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
                specs = [ServerSpec(d, name=self._label(d)) for d in missing]
                for model_dir, server in zip(missing, self._server_manager().start_pair(*specs)):
                    self._servers[model_dir] = server

    def _cpu_backend(self, model_dir: Path, pane: str):
        from studio.serve.cpu_backend import TransformersBackend  # imports torch: only when needed

        with self._cpu_lock:
            key = (model_dir, pane)
            if key not in self._cpu:
                name = self._label(model_dir)
                loader = None
                if is_gptq_checkpoint(model_dir):
                    from studio.gptq.quantize import load_quantized

                    loader = load_quantized
                self._cpu[key] = TransformersBackend(model_dir, name=f"{name} (transformers)", loader=loader)
            return self._cpu[key]

    def _vllm_backend(self, model_dir: Path):
        with self._server_lock:
            if not self._running(model_dir):
                server = self._server_manager().start(ServerSpec(model_dir, name=self._label(model_dir)))
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
            self._manager = ServerManager(log_dir=self.ctx.home / "logs" / "vllm")
        return self._manager

    def _label(self, model_dir: Path) -> str:
        return "demo" if model_dir.resolve() == Path(self.ctx.demo_dir).resolve() else model_dir.name


# --- one browser session's conversation -------------------------------------------------------


def pane_label(source: PaneSource) -> str:
    """A short name for a pane's choice (a folder's name, not its path)."""
    if source.engine == ENGINE_URL:
        return source.url or "URL"
    return Path(source.model).name if source.model else DEMO_MODEL


def open_session(pool: BackendPool, session: ChatSession, profile, votes_dir: Path) -> None:
    """Set up the panes of a new conversation (`session.chat`); a pane whose backend cannot be set
    up shows why in its replies.

    Input errors (a missing folder, an empty URL) and failed server starts stay in their pane;
    a sign-in request (gr.Error) goes to the whole page.
    """
    sources, blind = session.sources, session.blind
    errors: dict[str, str] = {}
    plans: dict[str, tuple[str, Path | None]] = {}
    for pane, source in zip(PANES, sources):
        try:
            plans[pane] = pool.plan(pane, source, profile)
        except gr.Error:  # a ValueError too, but for the whole page: sign in
            raise
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
        backends.append(UnavailableBackend(pane_label(source), errors[pane]))
    session.setup_failed = bool(errors)
    session.chat = SideBySideChat(
        backends[0], backends[1], blind=blind, votes_dir=votes_dir if blind else None, tick_s=IDLE_RENDER_S
    )


def sampling_settings(temperature, top_p, max_tokens, seed) -> SamplingSettings:
    """Settings from the form; a seed of -1 (or empty) means a random one."""
    seed = None if seed is None or seed == "" or seed == -1 else seed
    return SamplingSettings(float(temperature), float(top_p), max_tokens, seed)


# --- rendering --------------------------------------------------------------------------------


def stream(session: ChatSession, updates: Iterator) -> Iterator[list]:
    """Render both panes as the updates arrive (throttled), and once more at the end."""
    last = 0.0
    for _update in updates:
        if time.monotonic() - last >= RENDER_INTERVAL_S:
            last = time.monotonic()
            yield render(session)
    yield render(session)


def image_files(files) -> list[str]:
    paths = [str(f) for f in files or ()]
    rejected = [Path(p).name for p in paths if Path(p).suffix.lower() not in IMAGE_SUFFIXES]
    if rejected:
        raise gr.Error(f"message: only images can be attached, not {', '.join(rejected)}")
    try:
        return [str(check_upload(p, "message", IMAGE_UPLOAD_MAX_BYTES)) for p in paths]
    except ValueError as err:
        raise gr.Error(str(err), title="Invalid input") from err


def input_error(err: ValueError) -> gr.Error:
    return gr.Error(str(err), title="Invalid input")


# --- the tab ----------------------------------------------------------------------------------


def create_ui(ctx: StudioContext, shared: Shared) -> None:
    pool = BackendPool(ctx)
    votes_dir = ctx.home / "chat"
    default_a, default_b = default_models(ctx, None)
    choices = model_choices(ctx, None)

    session_state = gr.State(None, delete_callback=lambda session: session.close() if session else None)
    panes = {}
    with gr.Row():
        for pane, default in (("A", default_a), ("B", default_b)):
            with gr.Column():
                with gr.Row():
                    engine = gr.Dropdown(engine_choices(), value=ENGINE_AUTO, label=f"{pane}: runs on", scale=1)
                    model = gr.Dropdown(choices, value=default, label=f"{pane}: model (or a folder path)",
                                        allow_custom_value=True, scale=2)
                with gr.Row(visible=False) as url_row:
                    url = gr.Textbox("", label=f"{pane}: server URL", placeholder="http://127.0.0.1:8000/v1", scale=2)
                    served = gr.Textbox("", label=f"{pane}: model (empty: the server's first)", scale=1)
                stats = gr.Markdown(f"**{pane}**", elem_id=f"chat-stats-{pane.lower()}")
                # No label badge: it sat over the first message; the heading above names the pane.
                chatbot = gr.Chatbot(label=pane, show_label=False, height=420, elem_id=f"chat-pane-{pane.lower()}")
                panes[pane] = dict(engine=engine, model=model, url=url, served=served, chatbot=chatbot, stats=stats)
                engine.change(lambda e: (gr.update(visible=e == ENGINE_URL), gr.update(visible=e != ENGINE_URL)),
                              engine, [url_row, model], api_visibility="private")
    message = gr.MultimodalTextbox(
        placeholder="Ask both models; attach images with the clip", file_types=["image"], file_count="multiple",
        show_label=False, elem_id="chat-input",
    )
    with gr.Row():
        send_button = gr.Button("Send", variant="primary")
        stop_button = gr.Button("Stop", variant="stop")
        regenerate_button = gr.Button("Regenerate")
        clear_button = gr.Button("Clear")
        refresh_button = gr.Button("↻ model list")
    with gr.Accordion("Sampling", open=False):
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, 0.7, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1.0, 0.95, step=0.05, label="top-p")
            max_tokens = gr.Number(256, precision=0, minimum=1, label="max tokens")
            seed = gr.Number(-1, precision=0, minimum=-1, label="seed (-1: random)")
        separate_b = gr.Checkbox(False, label="pane B has its own settings")
        with gr.Row(visible=False) as b_row:
            temperature_b = gr.Slider(0.0, 2.0, 0.7, step=0.05, label="B: temperature")
            top_p_b = gr.Slider(0.05, 1.0, 0.95, step=0.05, label="B: top-p")
            max_tokens_b = gr.Number(256, precision=0, minimum=1, label="B: max tokens")
            seed_b = gr.Number(-1, precision=0, minimum=-1, label="B: seed (-1: random)")
        separate_b.change(lambda on: gr.update(visible=on), separate_b, b_row, api_visibility="private")
    with gr.Row():
        blind = gr.Checkbox(False, label="blind mode: hide which model is in which pane until you vote")
        vote_choice = gr.Radio([(label, key) for key, label in VOTE_LABELS.items()], label="Your vote",
                               visible=False)
        vote_button = gr.Button("Vote and reveal", visible=False)
    vote_message = gr.Markdown()
    with gr.Row():
        export_button = gr.Button("Export both transcripts (JSON)")
        transcript_file = gr.File(label="transcript", interactive=False)

    a, b = panes["A"], panes["B"]
    source_inputs = [a["engine"], a["model"], a["url"], a["served"], b["engine"], b["model"], b["url"], b["served"], blind]
    settings_inputs = [temperature, top_p, max_tokens, seed, separate_b, temperature_b, top_p_b, max_tokens_b, seed_b]
    view = [a["chatbot"], b["chatbot"], a["stats"], b["stats"]]

    def apply_settings(session: ChatSession, values) -> None:
        shared_values, own_b, b_values = values[:4], values[4], values[5:]
        try:
            session.chat.set_settings(sampling_settings(*shared_values))
            if own_b:
                session.chat.set_settings(sampling_settings(*b_values), pane="B")
        except ValueError as err:
            raise input_error(err) from err

    def chat_send(message, engine_a, model_a, url_a, served_a, engine_b, model_b, url_b, served_b, blind,
                  temperature, top_p, max_tokens, seed, separate_b, temperature_b, top_p_b, max_tokens_b, seed_b,
                  session, profile: gr.OAuthProfile | None = None):
        """Send a message (text and images) to panes A and B; streams both replies."""
        message = message or {}
        text = (message.get("text") or "").strip()
        images = image_files(message.get("files"))
        if not text and not images:
            raise gr.Error("message: write something or attach an image", title="Invalid input")
        sources = (PaneSource.from_form(engine_a, model_a, url_a, served_a),
                   PaneSource.from_form(engine_b, model_b, url_b, served_b))
        if session is not None and session.matches(sources, bool(blind)):
            session.expect_turn()
        else:
            if session is not None:
                session.close()
            # The new session reaches the page's state before its panes are set up (which can
            # start servers), so a Stop pressed meanwhile reaches this turn, not the old session.
            session = ChatSession(sources, bool(blind))
            yield [session, *render(session), gr.update()]
            try:
                open_session(pool, session, profile, votes_dir)
            except ValueError as err:
                raise input_error(err) from err
        apply_settings(session, [temperature, top_p, max_tokens, seed, separate_b,
                                 temperature_b, top_p_b, max_tokens_b, seed_b])
        try:
            updates = session.start_turn(lambda chat: chat.send(text, images))
        except ValueError as err:
            raise input_error(err) from err
        session.images.append(images)
        cleared = {"text": "", "files": []}
        for rendered in stream(session, updates):
            yield [session, *rendered, cleared]

    def chat_regenerate(temperature, top_p, max_tokens, seed, separate_b, temperature_b, top_p_b,
                        max_tokens_b, seed_b, session):
        """Answer the last message again in both panes (with the current sampling settings)."""
        if session is None or session.chat is None:
            raise gr.Error("regenerate: there is no message to answer again yet", title="Invalid input")
        session.expect_turn()
        apply_settings(session, [temperature, top_p, max_tokens, seed, separate_b,
                                 temperature_b, top_p_b, max_tokens_b, seed_b])
        try:
            updates = session.start_turn(SideBySideChat.regenerate)
        except ValueError as err:
            raise input_error(err) from err
        for rendered in stream(session, updates):
            yield [session, *rendered]

    def chat_stop(session) -> str:
        """Stop both replies that are streaming or about to start; each pane keeps what it said so far."""
        if session is None:
            return ""
        session.stop()
        return "Stopped."

    def chat_clear(session):
        """Start a new conversation, history included (in blind mode the models are shuffled again)."""
        if session is not None:
            session.clear()
        return [session, *render(session), ""]

    def chat_vote(choice, session):
        """Blind mode: say which pane answered better; the vote is saved and the models revealed."""
        if session is None or session.chat is None:
            raise gr.Error("vote: chat first, then vote", title="Invalid input")
        try:
            record = session.chat.vote(choice)
        except ValueError as err:
            raise input_error(err) from err
        winner = f" ({record['winner']})" if record["winner"] else ""
        revealed = f"A was **{record['pane_a']}**, B was **{record['pane_b']}**."
        return [*render(session)[2:], f"Vote saved: {VOTE_LABELS[choice]}{winner}. {revealed}"]

    def chat_export(session) -> str:
        """Both conversations as a JSON file (format gemma-lite-studio/chat-transcript/v1)."""
        if session is None or session.chat is None:
            raise gr.Error("export: there is no conversation yet", title="Invalid input")
        folder = Path(tempfile.mkdtemp(prefix="studio-chat-"))
        return str(session.chat.export_transcript(folder / "chat-transcript.json"))

    def refresh_models(model_state, model_a, model_b):
        fresh = model_choices(ctx, model_state)
        return gr.update(choices=fresh, value=model_a), gr.update(choices=fresh, value=model_b)

    def follow_finished_job(job_id, model_state, model_a, model_b):
        """A job finished while the page was open: pane B offers its export (when it wrote one)."""
        fresh = model_choices(ctx, model_state)
        export = finished_export(ctx, job_id)
        return gr.update(choices=fresh, value=model_a), gr.update(choices=fresh, value=str(export) if export else model_b)

    def follow_base_model(model_state, model_b):
        """The Model tab chose another model: pane A becomes it."""
        fresh = model_choices(ctx, model_state)
        return gr.update(choices=fresh, value=default_models(ctx, model_state)[0]), gr.update(choices=fresh, value=model_b)

    send_inputs = [message, *source_inputs, *settings_inputs, session_state]
    send_outputs = [session_state, *view, message]
    send_button.click(chat_send, send_inputs, send_outputs, api_name="chat_send")
    message.submit(chat_send, send_inputs, send_outputs, api_visibility="private")
    regenerate_button.click(chat_regenerate, [*settings_inputs, session_state], [session_state, *view],
                            api_name="chat_regenerate")
    # Runs beside the streaming send (no queue slot needed) so it takes effect at once.
    stop_button.click(chat_stop, session_state, vote_message, api_name="chat_stop", concurrency_limit=None)
    clear_button.click(chat_clear, session_state, [session_state, *view, vote_message], api_name="chat_clear")
    # A pane's trash icon clears the conversation as Clear does, history included: the panes answer
    # the same turns, and a view-only clear let Regenerate bring the old turns back.
    for chatbot in (a["chatbot"], b["chatbot"]):
        chatbot.clear(chat_clear, session_state, [session_state, *view, vote_message], api_visibility="private")
    vote_button.click(chat_vote, [vote_choice, session_state], [a["stats"], b["stats"], vote_message],
                      api_name="chat_vote")
    blind.change(lambda on: (gr.update(visible=on), gr.update(visible=on)), blind, [vote_choice, vote_button],
                 api_visibility="private")
    export_button.click(chat_export, session_state, transcript_file, api_name="chat_export")
    refresh_button.click(refresh_models, [shared.model_state, a["model"], b["model"]], [a["model"], b["model"]],
                         api_visibility="private")
    if shared.finished_job is not None:
        shared.finished_job.change(follow_finished_job, [shared.finished_job, shared.model_state, a["model"], b["model"]],
                                   [a["model"], b["model"]], api_visibility="private")
    if shared.model_state is not None:
        shared.model_state.change(follow_base_model, [shared.model_state, b["model"]], [a["model"], b["model"]],
                                  api_visibility="private")
