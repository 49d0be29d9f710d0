"""A chat backend for any OpenAI-compatible server (vLLM, or an endpoint the user attaches to).

Replies stream from `/v1/chat/completions` through the `openai` client with
`stream_options={"include_usage": True}`, so the server's own token counts end the stream. Every
failure (refused connection, timeout, an HTTP error, an error sent mid-stream) becomes a `ChatError`
whose message says what happened in words, and never an exception.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import openai

from studio.serve.chat import ChatError, ChatEvent, Message, SamplingSettings, StatsClock, TextDelta

# How often a waiting reply looks at its stop flag.
_STOP_POLL_S = 0.05


def api_base_url(url: str) -> str:
    """The `/v1` base URL the openai client wants, from a server root or a `/v1` URL."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url: must start with http:// or https://, got {url!r}")
    return url if url.endswith("/v1") else f"{url}/v1"


def describe_api_error(err: Exception, base_url: str, timeout_s: float) -> str:
    """A one-line, user-facing description of a failed request."""
    if isinstance(err, openai.APITimeoutError):
        return f"no answer from {base_url} within {timeout_s:g} s (request timed out)"
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err.__context__
        detail = f": {cause}" if cause else ""
        return f"cannot reach {base_url}{detail}"
    if isinstance(err, openai.APIStatusError):
        body = err.body
        message = body.get("message") if isinstance(body, dict) else body
        return f"server answered HTTP {err.status_code}: {message or err.message}"
    if isinstance(err, openai.APIError):  # an error event inside the stream
        return f"server error: {err.message}"
    return f"{type(err).__name__}: {err}"


class OpenAIBackend:
    """Streams chat replies from an OpenAI-compatible server.

    `url` is the server root (`http://127.0.0.1:8000`) or its `/v1` URL. `model` is the served model
    name; None asks the server (`/v1/models`) and uses its first model. `timeout_s` bounds connecting
    and each wait for data, so a hung server turns into an error instead of a frozen pane.
    `diagnose()`, when given, is asked after a failed request and may add a line on why (a
    managed server that died).
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        name: str | None = None,
        api_key: str = "EMPTY",
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        diagnose: Callable[[], str | None] | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: must be positive, got {timeout_s}")
        self.base_url = api_base_url(url)
        self.model = model
        self.name = name or model or self.base_url
        self.timeout_s = float(timeout_s)
        self._diagnose = diagnose
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key,
            timeout=openai.Timeout(self.timeout_s, connect=min(connect_timeout_s, self.timeout_s)),
            max_retries=0,  # a retried chat request would stream a second, different reply
        )

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, model={self.model!r})"

    def served_model(self) -> str:
        """The model name requests use, asked from the server once when not given."""
        if self.model is None:
            models = self._client.models.list().data
            if not models:
                raise ValueError(f"model: the server at {self.base_url} lists no models")
            self.model = models[0].id
        return self.model

    def stream_chat(
        self, messages: Sequence[Message], settings: SamplingSettings, stop: threading.Event | None = None
    ) -> Iterator[ChatEvent]:
        # The request runs in a worker thread so that a stop takes effect at once, even while the
        # server has not answered yet; the worker then closes the response when it gets one,
        # which makes the server abort the request.
        clock = StatsClock()
        stop = stop or threading.Event()
        abandoned = threading.Event()
        outbox: queue.Queue = queue.Queue()
        worker = threading.Thread(
            target=self._request,
            args=(list(messages), settings, outbox, (stop, abandoned)),
            name=f"chat-{self.name}",
            daemon=True,
        )
        worker.start()
        try:
            while True:
                try:
                    kind, *payload = outbox.get(timeout=_STOP_POLL_S)
                except queue.Empty:
                    if stop.is_set():
                        yield clock.finish(prompt_tokens=None, output_tokens=None, finish_reason="stopped")
                        return
                    continue
                if kind == "text":
                    clock.mark_text()
                    yield TextDelta(payload[0])
                elif kind == "error":
                    yield ChatError(payload[0])
                    return
                else:  # "done"
                    usage, finish_reason = payload
                    if stop.is_set() and usage is None:
                        finish_reason = "stopped"
                    yield clock.finish(
                        prompt_tokens=usage.prompt_tokens if usage else None,
                        output_tokens=usage.completion_tokens if usage else None,
                        finish_reason=finish_reason,
                    )
                    return
        finally:
            abandoned.set()

    def _request(self, messages, settings: SamplingSettings, outbox: queue.Queue, cancel: tuple) -> None:
        """Stream one reply into `outbox` as ("text", str), then ("done", usage, finish) or ("error", str)."""
        try:
            stream = self._client.chat.completions.create(
                model=self.served_model(),
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_tokens,
                seed=settings.seed if settings.seed is not None else openai.omit,
            )
            usage = None
            finish_reason = None
            with stream:
                for chunk in stream:
                    if any(event.is_set() for event in cancel):
                        break
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta is not None and choice.delta.content:
                            outbox.put(("text", choice.delta.content))
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
            outbox.put(("done", usage, finish_reason))
        except Exception as err:  # noqa: BLE001 - every failure reaches the pane as text
            message = describe_api_error(err, self.base_url, self.timeout_s)
            diagnosis = self._diagnose() if self._diagnose else None
            outbox.put(("error", f"{message}\n{diagnosis}" if diagnosis else message))

    def close(self) -> None:
        self._client.close()
