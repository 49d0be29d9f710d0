"""The `python -m studio` command line: a thin layer over the `studio` library.

Each subcommand lives in its own module under `studio/cli/` and provides
`add_parser(subparsers)` (which registers it and sets `func`) so that commands stay independent.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

# Modules under studio/cli/ that define subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "demo_model",
    "eval",
    "prune",
    "quantize",
    "compress",
    "estimate",
    "jobs",
    "push",
    "serve",
    "chat",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m studio",
        description="Gemma Lite Studio: FLAP pruning + GPTQ W4A16 for Gemma 4, served by vLLM.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"studio.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torchao (a GPTQModel dependency) registers enums that this torch warns about at every import.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        model = getattr(args, "model", None)
        if isinstance(model, (str, Path)):
            # Every `--model` names a checkpoint: checked before anything loads (studio.model_source).
            from studio.model_source import check_model_source

            args.model = type(model)(check_model_source(str(model), field="--model"))
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        # Input errors are the user's to fix: one readable line, no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # The machine's failures (a full disk, a read-only folder): one line naming the file.
        print(f"error: {err}", file=sys.stderr)
        return 1
