"""`python -m studio chat A B`: one prompt to two models, both replies streamed side by side."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="ask two models (URLs or folders) the same prompt; replies side by side, then JSON",
        description="Send PROMPT (and an optional image) to models A and B at once and stream both "
        "replies side by side to the terminal (stderr), then print one JSON object on stdout with "
        "both replies and their statistics (time to first token, tokens/s, token counts, finish "
        "reason). A and B are each an OpenAI-compatible URL (http://host:port or .../v1, "
        "URL#MODEL to pick a served model) or a model folder. Folders are served by vLLM (started "
        "here, with the export's plugin and vllm_config.yaml, and stopped at the end) or, for INT4 "
        "exports on a CPU and where there is no vLLM environment, by transformers on the CPU; "
        "--engine forces one. Exit status 1 when a reply failed (its error is in the JSON).",
    )
    parser.add_argument("a", metavar="A", help="pane A: a URL or a model folder")
    parser.add_argument("b", metavar="B", help="pane B: a URL or a model folder")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--image", type=Path, help="an image file sent with the prompt")
    parser.add_argument(
        "--engine",
        choices=["auto", "vllm", "transformers"],
        default="auto",
        help="what runs folder models (default: auto, vLLM where it can serve them)",
    )
    parser.add_argument(
        "--studio-plugin",
        action="store_true",
        help="vLLM servers use the studio's vllm_flap_plugin (for a FLAP folder that carries none, or another one)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding (default: 0)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (default: 0.95)")
    parser.add_argument("--max-tokens", type=int, default=256, help="reply length cap in tokens (default: 256)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: random)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for a server or a reply's next text (default: 600)"
    )
    parser.set_defaults(func=run)


def side_by_side(chat):
    """A rich table with one column per pane: its label, reply so far, and statistics."""
    from rich.table import Table

    table = Table(expand=True, show_lines=True)
    for pane in ("A", "B"):
        table.add_column(f"{pane}: {chat.label(pane)}", ratio=1, overflow="fold")
    replies = [chat.panes[pane].replies[-1] for pane in ("A", "B")]
    table.add_row(*[reply.text + (f"\n[error] {reply.error}" if reply.error else "") for reply in replies])
    table.add_row(*[stats_line(reply) for reply in replies])
    return table


def stats_line(reply) -> str:
    stats = reply.stats
    if stats is None:
        return "failed" if reply.error else "..."

    def number(value, fmt):
        return "-" if value is None else format(value, fmt)

    return (
        f"ttft {number(stats.ttft_s, '.2f')} s | {number(stats.tokens_per_s, '.1f')} tok/s | "
        f"{number(stats.output_tokens, 'd')} tokens | {stats.finish_reason}"
    )


def run(args) -> int:
    from rich.console import Console

    from studio.cli.serve import sigterm_as_ctrl_c
    from studio.serve.chat import SamplingSettings, user_message
    from studio.serve.manager import ServerManager, ServerStartError
    from studio.serve.side_by_side import SideBySideChat
    from studio.serve.sources import ModelSource, open_backends

    sources = [ModelSource.parse(args.a, "A"), ModelSource.parse(args.b, "B")]
    settings = SamplingSettings(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
    if args.image is not None and not args.image.is_file():
        raise FileNotFoundError(f"--image: no such file {args.image}")
    images = [args.image] if args.image else []
    user_message(args.prompt, images)  # an empty prompt or unreadable image fails before any server starts
    console = Console(file=sys.stderr)
    try:
        # Loaders (GPTQModel's especially) print banners: stdout is kept for the JSON alone.
        with contextlib.redirect_stdout(sys.stderr), sigterm_as_ctrl_c(), ServerManager(
            startup_timeout_s=args.timeout
        ) as manager:
            (backend_a, engine_a), (backend_b, engine_b) = open_backends(
                sources, manager, args.engine, timeout_s=args.timeout, studio_plugin=args.studio_plugin
            )
            chat = SideBySideChat(backend_a, backend_b, settings=settings)
            stream_to(console, chat, chat.send(args.prompt, images))
    except ServerStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while servers were starting: they are stopped by now
        print("stopped", file=sys.stderr)
        return 130
    replies = {pane: chat.panes[pane].replies[-1] for pane in ("A", "B")}
    result = {
        "prompt": args.prompt,
        "image": str(args.image) if args.image else None,
        "settings": settings.to_dict(),
        "panes": {
            pane: {"source": source_text, "model": chat.label(pane), "engine": engine, **replies[pane].to_dict()}
            for pane, source_text, engine in (("A", args.a, engine_a), ("B", args.b, engine_b))
        },
    }
    print(json.dumps(result, ensure_ascii=False))
    return 1 if any(reply.error for reply in replies.values()) else 0


def stream_to(console, chat, updates) -> None:
    """Render both panes live until the turn ends; Ctrl-C stops the replies where they are."""
    from rich.live import Live

    try:
        with Live(side_by_side(chat), console=console, refresh_per_second=8) as live:
            for _update in updates:
                live.update(side_by_side(chat))
            live.update(side_by_side(chat))
    except KeyboardInterrupt:
        chat.stop()
        chat.wait(30)
        console.print("stopped")
