"""Gemma Lite Studio: `python app.py` starts the studio in the browser on the built-in demo model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def studio_home() -> Path:
    return Path(os.environ.get("STUDIO_HOME", Path.home() / ".local" / "share" / "gemma-lite-studio"))


def ensure_demo_model(home: Path) -> Path:
    """The demo model under STUDIO_HOME, built on first start (a few seconds, offline)."""
    from studio.demo_model import build_demo_model

    path = home / "models" / "demo"
    if not (path / "config.json").is_file():
        build_demo_model(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Start Gemma Lite Studio (Gradio) on the demo model.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    args = parser.parse_args()

    import gradio as gr

    from studio.modeling import load_text_config, original_widths

    demo_dir = ensure_demo_model(studio_home())
    config = load_text_config(demo_dir)
    with gr.Blocks(title="Gemma Lite Studio") as page:
        gr.Markdown("# Gemma Lite Studio")
        gr.Markdown(
            f"Demo model at `{demo_dir}`: {config.num_hidden_layers} layers, "
            f"FFN widths {original_widths(config)}, KV-shared tail of {config.num_kv_shared_layers} layers."
        )
    page.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
