"""Chat tab: one prompt (text and images) answered by two models side by side, both streaming.

Pane A defaults to the base model, pane B to the newest export. Each pane picks its model (the
demo model, a checkpoint or export folder) and how it runs: the transformers CPU fallback, a vLLM
server (offered only when the vLLM environment exists), an OpenAI-compatible URL, or "auto".

This module is layout and wiring. What runs the panes (`BackendPool`, shared by every visitor of
the page) and which models are offered (`ChatModels`) is `studio.serve.chat_pool`; a visitor's
conversation is a `studio.serve.chat_session.ChatSession` (a `gr.State`), which also says what the
panes show. Named API endpoints: chat_send, chat_regenerate, chat_stop, chat_clear, chat_vote,
chat_export.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio.safety import IMAGE_UPLOAD_MAX_BYTES, check_upload
from studio.serve.chat import RANDOM_SEED, TEMPERATURE_RANGE, TOP_P_RANGE, SamplingSettings
from studio.serve.chat_pool import ENGINE_AUTO, ENGINE_URL, BackendPool, ChatModels, PaneSource, engine_choices, open_session
from studio.serve.chat_session import ChatSession, render, render_stream
from studio.serve.side_by_side import PANES, SideBySideChat
from studio.ui import access
from studio.ui.context import ChatTab, Shared, StudioContext

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
# Streaming re-renders both panes; at most this often, so long replies do not flood the browser.
RENDER_INTERVAL_S = 0.1
VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
# The form fields of a pane's choice (API names: engine_a, model_a, ..., served_b) and of its
# sampling settings (temperature, ... for both panes; temperature_b, ... for pane B's own).
SOURCE_FIELDS = ("engine", "model", "url", "served")
SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "seed")


def chat_models(ctx: StudioContext) -> ChatModels:
    return ChatModels(ctx.home, ctx.demo_dir, roots=ctx.visitor_roots())


def base_checkpoint(model_state: dict | None) -> str | None:
    """The Model tab's model (a folder, a hub id or None)."""
    return (model_state or {}).get("checkpoint")


# --- the form ---------------------------------------------------------------------------------


@dataclass
class PaneControls:
    engine: gr.Dropdown
    model: gr.Dropdown
    url: gr.Textbox
    served: gr.Textbox
    chatbot: gr.Chatbot
    stats: gr.Markdown

    def source_inputs(self, pane: str) -> dict:
        """The pane's choice as named inputs: engine_a, model_a, url_a, served_a (pane A)."""
        return {f"{name}_{pane.lower()}": getattr(self, name) for name in SOURCE_FIELDS}


def pane_controls(pane: str, choices: list[tuple[str, str]], default: str) -> PaneControls:
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
    engine.change(lambda e: (gr.update(visible=e == ENGINE_URL), gr.update(visible=e != ENGINE_URL)),
                  engine, [url_row, model], api_visibility="private")
    return PaneControls(engine, model, url, served, chatbot, stats)


@dataclass
class SamplingControls:
    row: gr.Row
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Number
    seed: gr.Number

    def inputs(self, suffix: str = "") -> dict:
        """The settings as named inputs: temperature, top_p, max_tokens, seed (+ suffix)."""
        return {f"{name}{suffix}": getattr(self, name) for name in SAMPLING_FIELDS}


def sampling_controls(prefix: str = "", visible: bool = True) -> SamplingControls:
    """One row of sampling controls, spanning what `SamplingSettings` accepts, at its defaults."""
    defaults = SamplingSettings()
    top_p_step = 0.05
    with gr.Row(visible=visible) as row:
        temperature = gr.Slider(*TEMPERATURE_RANGE, defaults.temperature, step=0.05, label=f"{prefix}temperature")
        # top-p 0 is not allowed (the range is open there): the slider starts one step above it
        top_p = gr.Slider(TOP_P_RANGE[0] + top_p_step, TOP_P_RANGE[1], defaults.top_p, step=top_p_step,
                          label=f"{prefix}top-p")
        max_tokens = gr.Number(defaults.max_tokens, precision=0, minimum=1, label=f"{prefix}max tokens")
        seed = gr.Number(RANDOM_SEED, precision=0, minimum=RANDOM_SEED, label=f"{prefix}seed ({RANDOM_SEED}: random)")
    return SamplingControls(row, temperature, top_p, max_tokens, seed)


def pane_sources(form: dict) -> tuple[PaneSource, ...]:
    """Both panes' choices from the named inputs of `PaneControls.source_inputs`."""
    return tuple(PaneSource.from_form(*(form[f"{name}_{pane.lower()}"] for name in SOURCE_FIELDS)) for pane in PANES)


def apply_settings(session: ChatSession, form: dict) -> None:
    """The sampling settings of the form (pane B's own where `separate_b`) onto the conversation."""
    try:
        session.chat.set_settings(SamplingSettings.from_form(*(form[name] for name in SAMPLING_FIELDS)))
        if form["separate_b"]:
            session.chat.set_settings(SamplingSettings.from_form(*(form[f"{name}_b"] for name in SAMPLING_FIELDS)),
                                      pane="B")
    except ValueError as err:
        raise input_error(err) from err


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


def create_ui(ctx: StudioContext, shared: Shared) -> ChatTab:
    pool = BackendPool(chat_models(ctx))
    votes_dir = ctx.home / "chat"
    defaults = pool.models.defaults(None)
    choices = pool.models.choices(None)

    session_state = gr.State(None, delete_callback=lambda session: session.close() if session else None)
    with gr.Row():
        panes = {}
        for pane, default in zip(PANES, defaults):
            with gr.Column():
                panes[pane] = pane_controls(pane, choices, default)
    a, b = panes["A"], panes["B"]
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
        sampling = sampling_controls()
        separate_b = gr.Checkbox(False, label="pane B has its own settings")
        sampling_b = sampling_controls("B: ", visible=False)
        separate_b.change(lambda on: gr.update(visible=on), separate_b, sampling_b.row, api_visibility="private")
    with gr.Row():
        blind = gr.Checkbox(False, label="blind mode: hide which model is in which pane until you vote")
        vote_choice = gr.Radio([(label, key) for key, label in VOTE_LABELS.items()], label="Your vote",
                               visible=False)
        vote_button = gr.Button("Vote and reveal", visible=False)
    vote_message = gr.Markdown()
    with gr.Row():
        export_button = gr.Button("Export both transcripts (JSON)")
        transcript_file = gr.File(label="transcript", interactive=False)

    # Named inputs, in the order the API documents them.
    settings_inputs = {**sampling.inputs(), "separate_b": separate_b, **sampling_b.inputs("_b")}
    send_inputs = {"message": message, **a.source_inputs("A"), **b.source_inputs("B"), "blind": blind,
                   **settings_inputs}
    view = [a.chatbot, b.chatbot, a.stats, b.stats]

    def chat_send(session, profile: gr.OAuthProfile | None = None, **form):
        """Send a message (text and images) to panes A and B; streams both replies."""
        message = form["message"] or {}
        text = (message.get("text") or "").strip()
        images = image_files(message.get("files"))
        if not text and not images:
            raise gr.Error("message: write something or attach an image", title="Invalid input")
        sources, blind = pane_sources(form), bool(form["blind"])
        if session is not None and session.matches(sources, blind):
            session.expect_turn()
        else:
            if session is not None:
                session.close()
            # The new session reaches the page's state before its panes are set up (which can
            # start servers), so a Stop pressed meanwhile reaches this turn, not the old session.
            session = ChatSession(sources, blind)
            yield [session, *render(session), gr.update()]
            access.require_user(profile, action="chat with the models or start servers")
            open_session(pool, session, votes_dir)
        apply_settings(session, form)
        try:
            updates = session.start_turn(lambda chat: chat.send(text, images))
        except ValueError as err:
            raise input_error(err) from err
        session.images.append(images)
        cleared = {"text": "", "files": []}
        for rendered in render_stream(session, updates, RENDER_INTERVAL_S):
            yield [session, *rendered, cleared]

    def chat_regenerate(session, **form):
        """Answer the last message again in both panes (with the current sampling settings)."""
        if session is None or session.chat is None:
            raise gr.Error("regenerate: there is no message to answer again yet", title="Invalid input")
        session.expect_turn()
        apply_settings(session, form)
        try:
            updates = session.start_turn(SideBySideChat.regenerate)
        except ValueError as err:
            raise input_error(err) from err
        for rendered in render_stream(session, updates, RENDER_INTERVAL_S):
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
        fresh = pool.models.choices(base_checkpoint(model_state))
        return gr.update(choices=fresh, value=model_a), gr.update(choices=fresh, value=model_b)

    def follow_finished_job(job_id, model_state, model_a, model_b):
        """A job finished while the page was open: pane B offers its export (when it wrote one)."""
        fresh = pool.models.choices(base_checkpoint(model_state))
        export = pool.models.finished_export(job_id)
        return gr.update(choices=fresh, value=model_a), gr.update(choices=fresh, value=str(export) if export else model_b)

    def follow_base_model(model_state, model_b):
        """The Model tab chose another model: pane A becomes it."""
        base = base_checkpoint(model_state)
        fresh = pool.models.choices(base)
        return gr.update(choices=fresh, value=pool.models.defaults(base)[0]), gr.update(choices=fresh, value=model_b)

    send_outputs = [session_state, *view, message]
    send_button.click(chat_send, [session_state], send_outputs, inputs_kwargs=send_inputs, api_name="chat_send")
    message.submit(chat_send, [session_state], send_outputs, inputs_kwargs=send_inputs, api_visibility="private")
    regenerate_button.click(chat_regenerate, [session_state], [session_state, *view], inputs_kwargs=settings_inputs,
                            api_name="chat_regenerate")
    # Runs beside the streaming send (no queue slot needed) so it takes effect at once.
    stop_button.click(chat_stop, session_state, vote_message, api_name="chat_stop", concurrency_limit=None)
    clear_button.click(chat_clear, session_state, [session_state, *view, vote_message], api_name="chat_clear")
    # A pane's trash icon clears the conversation as Clear does, history included: the panes answer
    # the same turns, and a view-only clear let Regenerate bring the old turns back.
    for chatbot in (a.chatbot, b.chatbot):
        chatbot.clear(chat_clear, session_state, [session_state, *view, vote_message], api_visibility="private")
    vote_button.click(chat_vote, [vote_choice, session_state], [a.stats, b.stats, vote_message],
                      api_name="chat_vote")
    blind.change(lambda on: (gr.update(visible=on), gr.update(visible=on)), blind, [vote_choice, vote_button],
                 api_visibility="private")
    export_button.click(chat_export, session_state, transcript_file, api_name="chat_export")
    models = [a.model, b.model]
    refresh_button.click(refresh_models, [shared.model_state, *models], models, api_visibility="private")
    if shared.finished_job is not None:
        shared.finished_job.change(follow_finished_job, [shared.finished_job, shared.model_state, *models], models,
                                   api_visibility="private")
    if shared.model_state is not None:
        shared.model_state.change(follow_base_model, [shared.model_state, b.model], models, api_visibility="private")
    return ChatTab(model_a=a.model, model_b=b.model, session=session_state)
