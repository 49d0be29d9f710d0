"""`python -m studio push`: publish an export folder to a Hugging Face Hub model repo."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload an export folder (checkpoint + model card) to a Hub model repo",
        description="Create the model repo REPO_ID if needed (private unless --public) and upload the "
        "export folder in two commits: every file but README.md first, then the model card, so the "
        "repo never shows a card describing files it does not hold. A card left by an earlier push is "
        "removed in the first commit; other files already in the repo are kept. On failure, prints "
        "what landed and what the repo holds, and exits 1.",
    )
    parser.add_argument("export", type=Path, help="export folder (holds README.md and config.json)")
    parser.add_argument("repo_id", help="the model repo, 'owner/name'")
    parser.add_argument(
        "--public", action="store_true", help="create the repo public (default: private; an existing repo keeps its visibility)"
    )
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="a file holding a Hugging Face token with write access (default: HF_TOKEN, else the token "
        "saved by `hf auth login`)",
    )
    tokens.add_argument(
        "--token",
        default=None,
        help="the token itself; discouraged: a command line is visible to every user of the machine "
        "(ps, /proc), so a warning is printed",
    )
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.set_defaults(func=run)


TOKEN_ON_COMMAND_LINE = (
    "warning: --token puts the token on the command line, where other users of this machine can read "
    "it (ps, /proc/PID/cmdline); prefer HF_TOKEN, `hf auth login` or --token-file"
)


def run(args) -> int:
    from studio.export.hub import PushFailed, push_export, read_token_file

    token = args.token
    if token is not None:
        print(TOKEN_ON_COMMAND_LINE, file=sys.stderr)
    elif args.token_file is not None:
        token = read_token_file(args.token_file)
    try:
        report = push_export(args.export, args.repo_id, token=token, private=not args.public, endpoint=args.endpoint)
    except PushFailed as failed:
        print(failed.report.describe(), file=sys.stderr)
        return 1
    print(report.describe())
    return 0
