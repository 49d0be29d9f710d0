"""Serving and chatting: vLLM servers, OpenAI-compatible clients, the CPU fallback, two-pane chat.

- `studio.serve.chat`: the backend-neutral interface (messages, `SamplingSettings`, stream events).
- `studio.serve.client`: `OpenAIBackend`, for vLLM or any OpenAI-compatible endpoint.
- `studio.serve.cpu_backend`: `TransformersBackend`, generation with transformers on the CPU
  (imported on its own: it loads torch).
- `studio.serve.side_by_side`: `SideBySideChat`, panes A and B, blind votes, transcripts.
- `studio.serve.chat_session`: `ChatSession`, a visitor's conversation as a UI holds it, and what
  the panes show (headings, messages; statistics hidden while blind).
- `studio.serve.chat_pool`: what runs a chat pane (`BackendPool`, shared by a page's visitors;
  `open_session`) and the model folders a chat page offers (`ChatModels`).
- `studio.serve.manager`: `ServerManager`, starting and stopping vLLM servers.
- `studio.serve.memory`: GPU shares and context lengths that fit.
- `studio.serve.sources`: backends for models named by a URL or a folder (the `chat` command).
"""

from studio.serve.chat import (
    ChatBackend,
    ChatError,
    ChatEvent,
    GenerationStats,
    SamplingSettings,
    TextDelta,
    image_to_data_url,
    user_message,
)
from studio.serve.client import OpenAIBackend
from studio.serve.manager import Server, ServerManager, ServerSpec, ServerStartError
from studio.serve.side_by_side import PaneUpdate, SideBySideChat

__all__ = [
    "ChatBackend",
    "ChatError",
    "ChatEvent",
    "GenerationStats",
    "OpenAIBackend",
    "PaneUpdate",
    "SamplingSettings",
    "Server",
    "ServerManager",
    "ServerSpec",
    "ServerStartError",
    "SideBySideChat",
    "TextDelta",
    "image_to_data_url",
    "user_message",
]
