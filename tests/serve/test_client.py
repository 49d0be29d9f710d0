"""OpenAIBackend against a real OpenAI-streaming HTTP server on loopback."""

from __future__ import annotations

import base64
import io
import socket
import threading

import pytest
from PIL import Image

from studio.serve.chat import ChatError, GenerationStats, SamplingSettings, TextDelta, user_message
from studio.serve.client import OpenAIBackend, api_base_url


def run(backend, messages, settings=SamplingSettings(), stop=None):
    events = list(backend.stream_chat(messages, settings, stop))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert events[-1] not in deltas, "a reply must end with a stats or an error event"
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(d.text for d in deltas), events[-1]


def test_streams_reply_and_server_token_counts(openai_server):
    backend = OpenAIBackend(openai_server.url, "echo")
    text, final = run(backend, [user_message("one two three four")])
    assert text == "four three two one"
    assert isinstance(final, GenerationStats)
    assert (final.prompt_tokens, final.output_tokens, final.finish_reason) == (4, 4, "stop")
    assert final.ttft_s is not None and 0 <= final.ttft_s <= final.total_s
    assert final.tokens_per_s is not None and final.tokens_per_s > 0


def test_sampling_settings_and_usage_request_reach_the_server(openai_server):
    backend = OpenAIBackend(openai_server.url, "echo")
    settings = SamplingSettings(temperature=0.3, top_p=0.8, max_tokens=2, seed=11)
    text, final = run(backend, [user_message("a b c d e")], settings)
    assert text == "e d"
    assert (final.output_tokens, final.finish_reason) == (2, "length")
    request = openai_server.requests[-1]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert (request["temperature"], request["top_p"], request["max_tokens"], request["seed"]) == (0.3, 0.8, 2, 11)


def test_no_seed_is_left_out_of_the_request(openai_server):
    run(OpenAIBackend(openai_server.url, "echo"), [user_message("x")], SamplingSettings(seed=None))
    assert "seed" not in openai_server.requests[-1]


def test_image_reaches_the_server_as_a_data_url(openai_server):
    picture = Image.new("RGB", (20, 10), (250, 0, 0))
    run(OpenAIBackend(openai_server.url, "echo"), [user_message("what is this", [picture])])
    content = openai_server.requests[-1]["messages"][0]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"]
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    received = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert received.size == (20, 10)
    assert received.convert("RGB").getpixel((5, 5)) == (250, 0, 0)


def test_model_name_is_asked_from_the_server(openai_server):
    backend = OpenAIBackend(openai_server.url + "/v1/")
    assert backend.served_model() == "echo"
    assert backend.base_url == openai_server.url + "/v1"


def test_http_error_becomes_a_readable_error_event(openai_server):
    text, final = run(OpenAIBackend(openai_server.url, "broken"), [user_message("hi")])
    assert text == ""
    assert isinstance(final, ChatError)
    assert final.message == "server answered HTTP 500: the model crashed (test)"


def test_unknown_model_is_reported(openai_server):
    _, final = run(OpenAIBackend(openai_server.url, "nope"), [user_message("hi")])
    assert isinstance(final, ChatError)
    assert "HTTP 404" in final.message and "'nope' does not exist" in final.message


def test_refused_connection_is_reported():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, final = run(OpenAIBackend(f"http://127.0.0.1:{port}", "echo", timeout_s=5), [user_message("hi")])
    assert isinstance(final, ChatError)
    assert final.message.startswith(f"cannot reach http://127.0.0.1:{port}/v1")


def test_a_silent_server_times_out(openai_server):
    _, final = run(OpenAIBackend(openai_server.url, "silent", timeout_s=0.5), [user_message("hi")])
    assert isinstance(final, ChatError)
    assert final.message == f"no answer from {openai_server.url}/v1 within 0.5 s (request timed out)"


def test_stop_ends_the_reply_early(openai_server):
    backend = OpenAIBackend(openai_server.url, "echo-slow")
    stop = threading.Event()
    deltas = []
    for event in backend.stream_chat([user_message(" ".join(f"w{i}" for i in range(40)))], SamplingSettings(), stop):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
            if len(deltas) == 2:
                stop.set()
        final = event
    assert isinstance(final, GenerationStats)
    assert final.finish_reason == "stopped"
    assert 2 <= len(deltas) < 40
    assert deltas[0] == "w39"


def test_stop_while_the_server_is_silent_returns_promptly(openai_server):
    backend = OpenAIBackend(openai_server.url, "silent", timeout_s=60)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    events = list(backend.stream_chat([user_message("hi")], SamplingSettings(), stop))
    # The server never answers: only the stop (not the 60 s read timeout) can end this reply.
    assert len(events) == 1
    assert isinstance(events[0], GenerationStats)
    assert events[0].finish_reason == "stopped"
    assert events[0].ttft_s is None and events[0].output_tokens is None


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host"])
def test_bad_urls_are_input_errors(url):
    with pytest.raises(ValueError, match="^url: must start with http"):
        api_base_url(url)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"), ({"seed": -2}, "seed")],
)
def test_sampling_settings_name_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SamplingSettings(**kwargs)


def test_sampling_settings_take_whole_floats_from_widgets():
    settings = SamplingSettings(max_tokens=64.0, seed=3.0)
    assert (settings.max_tokens, settings.seed) == (64, 3)
    assert isinstance(settings.max_tokens, int)
