"""`python -m studio serve`: a model folder on vLLM's OpenAI-compatible server, until Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model or export folder with vLLM (the FLAP plugin and the folder's vllm_config.yaml)",
        description="Start vLLM's OpenAI-compatible server for PATH from the vLLM environment (.venv-vllm, "
        "or STUDIO_VLLM_PYTHON) and keep it running until Ctrl-C or SIGTERM, which end the server's whole "
        "process group (API server, engine, workers). An export folder goes on PYTHONPATH so that vLLM "
        "loads its vllm_flap_plugin, and its vllm_config.yaml is passed with --config (the options here "
        "override the file's). A FLAP-pruned folder is checked first; what keeps it from being served is "
        "said in one line (exit status 2). Waits for /health, then prints the URL; a server that fails "
        "to start is reported with the tail of its log (exit status 1). Listens on 127.0.0.1. On a CPU "
        "machine a multimodal checkpoint is served as text-only, without compilation.",
    )
    parser.add_argument("path", type=Path, help="model or export folder (config.json, weights, tokenizer)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help="fraction of each GPU's memory vLLM may use (default: planned from the model's size; vLLM's own "
        "default with --tensor-parallel-size above 1)",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="GPUs to split the model over (default: 1); every FFN width must then be a multiple of 128 x this",
    )
    parser.add_argument("--max-model-len", type=int, help="context length cap (default: vllm_config.yaml, else 8192)")
    parser.add_argument("--name", help="served model name (default: the folder name)")
    parser.add_argument(
        "--studio-plugin",
        action="store_true",
        help="serve with the studio's vllm_flap_plugin (for a FLAP checkpoint that carries none, or another one)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=1200.0, help="seconds to wait for /health (default: 1200)"
    )
    parser.set_defaults(func=run)


def check_arguments(args) -> None:
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port: must be between 1 and 65535, got {args.port}")
    if args.gpu_memory_utilization is not None and not 0 < args.gpu_memory_utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization: must be in (0, 1], got {args.gpu_memory_utilization}")
    if args.tensor_parallel_size < 1:
        raise ValueError(f"--tensor-parallel-size: must be at least 1, got {args.tensor_parallel_size}")
    if args.max_model_len is not None and args.max_model_len < 1:
        raise ValueError(f"--max-model-len: must be a positive integer, got {args.max_model_len}")
    if not (args.path / "config.json").is_file():
        raise FileNotFoundError(f"path: {args.path} is not a model folder (no config.json)")


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """While active, SIGTERM ends the command as Ctrl-C does, so its vLLM servers are stopped."""
    previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    from studio.serve.manager import ServerManager, ServerSpec, ServerStartError

    check_arguments(args)
    spec = ServerSpec(
        args.path,
        name=args.name,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        port=args.port,
        tensor_parallel_size=args.tensor_parallel_size,
        studio_plugin=args.studio_plugin,
    )
    with sigterm_as_ctrl_c(), ServerManager(startup_timeout_s=args.startup_timeout) as manager:
        manager.check(spec)  # a folder that cannot be served is one line, before anything starts
        try:
            print(f"starting vLLM for {spec.path} (log: {manager.log_dir})", file=sys.stderr, flush=True)
            server = manager.start(spec)
            print(f"serving {server.model} at {server.url}/v1 (log: {server.log_path}); Ctrl-C stops it", flush=True)
            server.process.wait()
        except ServerStartError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("stopping the vLLM server", file=sys.stderr, flush=True)
            return 0
        failure = server.failure()
        print(f"error: {failure}", file=sys.stderr)
        return 1
