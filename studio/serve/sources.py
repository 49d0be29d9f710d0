"""Chat backends for models named by a URL or a folder, as `python -m studio chat A B` takes them.

A source that starts with http:// or https:// is an OpenAI-compatible server (its first listed
model unless `URL#MODEL` names one). Any other source is a checkpoint or export folder, served by
vLLM through a `ServerManager` or generated on the CPU with transformers, as
`studio.serve.manager.choose_engine` decides (or as `engine` forces). Two folders served by vLLM
start together, so on a GPU they get planned memory shares; a folder named twice runs once on vLLM
and twice (once per pane, so both generate at once) on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.checkpoint import is_checkpoint_folder, is_gptq_checkpoint
from studio.serve.chat import ChatBackend
from studio.serve.client import OpenAIBackend, api_base_url
from studio.serve.manager import ServerManager, ServerSpec, choose_engine

ENGINES = ("auto", "vllm", "transformers")


@dataclass(frozen=True)
class ModelSource:
    """One pane's model: a server URL (and optionally its model name) or a folder."""

    field: str  # the argument it came from, for error messages
    url: str | None = None
    model: str | None = None
    folder: Path | None = None

    @classmethod
    def parse(cls, text: str, field: str) -> ModelSource:
        text = (text or "").strip()
        if not text:
            raise ValueError(f"{field}: give an OpenAI-compatible URL or a model folder")
        if text.startswith(("http://", "https://")):
            url, _, model = text.partition("#")
            return cls(field, url=api_base_url(url), model=model or None)
        folder = Path(text).expanduser().resolve()
        if not is_checkpoint_folder(folder):
            raise ValueError(f"{field}: {folder} is neither a URL nor a model folder (no config.json)")
        return cls(field, folder=folder)


def cpu_backend(folder: Path, name: str) -> ChatBackend:
    """A transformers backend for `folder`; GPTQ exports load through GPTQModel's CPU kernels."""
    from studio.serve.cpu_backend import TransformersBackend  # imports torch: only when needed

    loader = None
    if is_gptq_checkpoint(folder):
        from studio.gptq.quantize import load_quantized

        loader = load_quantized
    return TransformersBackend(folder, name=name, loader=loader)


def engine_for(source: ModelSource, engine: str, manager: ServerManager) -> str:
    """"url", "vllm" or "transformers": what answers for `source`."""
    if source.url is not None:
        return "url"
    vllm_available = manager.vllm_python.exists()
    if engine == "auto":
        return choose_engine(source.folder, manager.device, vllm_available)
    if engine == "vllm" and not vllm_available:
        raise ValueError(f"engine: no vLLM environment at {manager.vllm_python}; run scripts/setup_vllm_env.sh")
    return engine


def open_backends(
    sources: Sequence[ModelSource],
    manager: ServerManager,
    engine: str = "auto",
    *,
    timeout_s: float = 600.0,
    studio_plugin: bool = False,
) -> list[tuple[ChatBackend, str]]:
    """A (backend, engine) per source, starting the vLLM servers the folders need.

    `engine` ("auto", "vllm" or "transformers") applies to folders; URLs are used as they are.
    `studio_plugin`: vLLM servers use the studio's vllm_flap_plugin (`ServerSpec.studio_plugin`).
    CPU models are loaded here, one after the other.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    engines = [engine_for(source, engine, manager) for source in sources]
    vllm_folders = list(dict.fromkeys(s.folder for s, e in zip(sources, engines) if e == "vllm"))
    specs = [ServerSpec(folder, studio_plugin=studio_plugin) for folder in vllm_folders]
    if len(specs) == 2:
        servers = dict(zip(vllm_folders, manager.start_pair(*specs)))
    else:
        servers = {spec.path: manager.start(spec) for spec in specs}
    backends = []
    for source, chosen in zip(sources, engines):
        if chosen == "url":
            name = f"{source.model} at {source.url}" if source.model else source.url
            backend = OpenAIBackend(source.url, source.model, name=name, timeout_s=timeout_s)
        elif chosen == "vllm":
            server = servers[source.folder]
            backend = server.backend(timeout_s)
            backend.name = f"{server.name} (vLLM)"
        else:
            backend = cpu_backend(source.folder, f"{source.folder.name} (transformers)")
            # Now and one at a time: a load error shows before the chat, and loads do not race
            # (transformers' init switches are process-wide).
            backend.load()
        backends.append((backend, chosen))
    return backends
