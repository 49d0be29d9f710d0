"""`python -m studio demo-model`: build the offline demo Gemma 4."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-model",
        help="build the small random-weight Gemma 4 used by the demo and the tests",
        description="Build, offline and deterministically, a small Gemma4ForConditionalGeneration with "
        "E4B's structure (vision tower, PLE, sliding/full attention, KV-shared tail) plus its "
        "tokenizer, processor and chat template.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (written atomically)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (default: 8)")
    parser.add_argument("--hidden-size", type=int, default=128, help="hidden size (default: 128)")
    parser.add_argument(
        "--intermediate-size", type=int, default=512, help="FFN width, a multiple of 128 (default: 512)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from studio.demo_model import DemoModelShape, build_demo_model

    shape = DemoModelShape(
        num_layers=args.layers, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size
    )
    out = build_demo_model(args.out, shape=shape, seed=args.seed)
    print(f"demo model written to {out}")
    return 0
