"""Gemma Lite Studio: `python app.py` opens the studio in the browser, on the built-in demo model.

Everything the studio keeps (jobs, presets, the demo model) lives under STUDIO_HOME (see
`studio.paths`). A job worker is started beside the app and stopped with it; jobs it was running
resume when the app starts again.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def ensure_demo_model(home: Path) -> Path:
    """The demo model under STUDIO_HOME/models/demo, built on first start (seconds, offline)."""
    from studio.demo_model import build_demo_model

    path = home / "models" / "demo"
    if not (path / "config.json").is_file():
        print(f"building the demo model in {path} ...", flush=True)
        build_demo_model(path)
    return path


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """The command line; --host/--port default to Gradio's GRADIO_SERVER_NAME/GRADIO_SERVER_PORT."""
    parser = argparse.ArgumentParser(description="Start Gemma Lite Studio (Gradio) on the demo model.")
    parser.add_argument("--host", help=f"address to bind (default: $GRADIO_SERVER_NAME, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"port (default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT})")
    parser.add_argument("--no-worker", action="store_true", help="do not start a job worker (run `python -m studio worker` yourself)")
    args = parser.parse_args(argv)
    if args.host is None:
        args.host = environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    if args.port is None:
        port = environ.get("GRADIO_SERVER_PORT") or str(DEFAULT_PORT)
        if not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"GRADIO_SERVER_PORT: a port number from 1 to 65535, got {port!r}")
        args.port = int(port)
    return args


def main() -> None:
    args = parse_args()

    from studio.paths import studio_home
    from studio.ui.app import launch
    from studio.ui.context import StudioContext

    home = studio_home()
    home.mkdir(parents=True, exist_ok=True)
    ctx = StudioContext(home=home, demo_dir=ensure_demo_model(home))
    if not args.no_worker:
        from studio.jobs.worker import start_embedded_worker

        worker = start_embedded_worker(home)
        atexit.register(worker.stop)
        # SIGTERM stops the app like Ctrl-C (Gradio closes its server and `launch` returns), so the
        # worker is stopped at exit and a job it was running is queued again.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        print(f"job worker started (pid {worker.pid}, log {worker.log_path})", flush=True)
    launch(ctx, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
