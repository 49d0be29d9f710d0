"""A small OpenAI-compatible HTTP server on loopback for testing the chat client and panes.

It speaks the parts of the protocol the studio uses: `GET /health`, `GET /v1/models` and streamed
`POST /v1/chat/completions` (server-sent events, `data: [DONE]`, a usage chunk when
`stream_options.include_usage` is set). Each served model behaves in a fixed way:

- "echo": streams the words of the last user text, reversed, one chunk per word; a prompt
  token per word of all messages, an output token per chunk. `max_tokens` cuts the reply.
- "echo-slow": the same with a pause between chunks, for stop tests.
- "broken": answers HTTP 500 with an OpenAI-style error body.
- "paired-A"/"paired-B": like "echo", but each first waits (up to 10 s) until both paired
  requests have arrived, so a reply only comes when the two were sent concurrently.
- "silent": accepts the request and sends nothing until the client gives up.

Every chat request's JSON body is kept in `requests` for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = ("echo", "echo-slow", "broken", "paired-A", "paired-B", "silent")


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content or () if part.get("type") == "text")


class OpenAITestServer:
    """Run with `start()`/`stop()` or as a context manager; `url` is the server root."""

    def __init__(self, chunk_delay_s: float = 0.2, port: int = 0):
        self.requests: list[dict] = []
        self.chunk_delay_s = chunk_delay_s
        self.paired = threading.Barrier(2, timeout=10)
        self.silent_release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OpenAITestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.silent_release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send_json(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/health":
                    self._send_json(200, {})
                elif self.path == "/v1/models":
                    self._send_json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "NotFound"}})

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "NotFound"}})
                    return
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(request)
                model = request.get("model")
                if model == "broken":
                    self._send_json(
                        500, {"error": {"message": "the model crashed (test)", "type": "InternalServerError", "code": 500}}
                    )
                    return
                if model not in MODELS:
                    self._send_json(404, {"error": {"message": f"model {model!r} does not exist", "type": "NotFound"}})
                    return
                if model.startswith("paired-"):
                    server.paired.wait()
                if model == "silent":
                    server.silent_release.wait(30)
                    return
                self._stream(request, delay_s=server.chunk_delay_s if model == "echo-slow" else 0.0)

            def _stream(self, request: dict, delay_s: float) -> None:
                messages = request["messages"]
                last_user = next(m for m in reversed(messages) if m["role"] == "user")
                words = list(reversed(message_text(last_user).split()))
                max_tokens = request.get("max_tokens") or len(words)
                finish = "length" if len(words) > max_tokens else "stop"
                words = words[:max_tokens]
                prompt_tokens = sum(len(message_text(m).split()) for m in messages)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": request["model"]}
                try:
                    self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                    for i, word in enumerate(words):
                        text = word if i == 0 else f" {word}"
                        self._event({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
                        time.sleep(delay_s)
                    self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                    if (request.get("stream_options") or {}).get("include_usage"):
                        usage = {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": len(words),
                            "total_tokens": prompt_tokens + len(words),
                        }
                        self._event({**base, "choices": [], "usage": usage})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading

            def _event(self, payload: dict) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

        return Handler
