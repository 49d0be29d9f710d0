"""`python -m studio demo-model`: build the offline demo Gemma 4, or a full-size random one."""

from __future__ import annotations

from pathlib import Path

from studio.checkpoint import DTYPE_NAMES, torch_dtype


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-model",
        help="build the small random-weight Gemma 4 used by the demo and the tests",
        description="Build, offline and deterministically, a small Gemma4ForConditionalGeneration with "
        "E4B's structure (vision tower, PLE, sliding/full attention, KV-shared tail) plus its "
        "tokenizer, processor and chat template. With --config, build a random-weight model of a "
        "published text config instead (e.g. data/gemma-4-e4b-text-config.json, 7.5 B parameters), "
        "written tensor by tensor into sharded safetensors so that it needs far less memory than "
        "its size.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (written atomically)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a text config JSON to build at full size, streamed to disk (the demo's small vision tower is added)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="decoder layers (default: 8; with --config, the config's count: fewer keep its shapes, "
        "its sliding/full pattern and a KV-shared tail of the same share)",
    )
    parser.add_argument("--hidden-size", type=int, default=None, help="hidden size (default: 128; not with --config)")
    parser.add_argument(
        "--intermediate-size",
        type=int,
        default=None,
        help="FFN width, a multiple of 128 (default: 512; not with --config)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default=None,
        help="weight dtype (default: float32; with --config, bfloat16)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from studio.demo_model import DemoModelShape, build_demo_model, config_from_text_config, write_streamed_model

    if args.config is None:
        shape = DemoModelShape(
            num_layers=8 if args.layers is None else args.layers,
            hidden_size=128 if args.hidden_size is None else args.hidden_size,
            intermediate_size=512 if args.intermediate_size is None else args.intermediate_size,
        )
        out = build_demo_model(args.out, shape=shape, seed=args.seed, dtype=torch_dtype(args.dtype or "float32"))
    else:
        for flag, value in (("--hidden-size", args.hidden_size), ("--intermediate-size", args.intermediate_size)):
            if value is not None:
                raise ValueError(f"{flag}: not with --config (the config gives the shapes)")
        config = config_from_text_config(args.config, args.layers)
        out = write_streamed_model(args.out, config, seed=args.seed, dtype=torch_dtype(args.dtype or "bfloat16"))
    print(f"demo model written to {out}")
    return 0
