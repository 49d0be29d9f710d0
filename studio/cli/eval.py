"""`python -m studio eval`: perplexity of a model on a text, printed as JSON."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from studio.checkpoint import DTYPE_NAMES, torch_dtype


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="sliding-window perplexity of a model (base, FLAP-pruned or GPTQ INT4) on a text",
        description="Compute the perplexity of a causal model on a text with sliding windows (each "
        "token scored once; every window starts with BOS when the tokenizer adds one, as Gemma's does, and the "
        "BOS is never scored; without BOS the text's first token is context only) and print a JSON object with ppl, nll (mean nats per "
        "token), tokens (scored), seqlen and stride. Stock and FLAP-pruned checkpoints load with "
        "the studio's loader; GPTQ exports (quantize_config.json) load through GPTQModel's kernels.",
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder (weights, config, tokenizer)")
    parser.add_argument(
        "--text",
        required=True,
        help="a UTF-8 text file, or hf:DATASET/CONFIG/SPLIT (e.g. hf:wikitext/wikitext-2-raw-v1/test)",
    )
    parser.add_argument("--seqlen", type=int, default=2048, help="tokens per window, BOS included (default: 2048)")
    parser.add_argument(
        "--stride",
        type=int,
        help="tokens between window starts, at most seqlen (default: seqlen, disjoint windows)",
    )
    parser.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens of the text")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default: 1)")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES,
        default="float32",
        help="compute dtype (default: float32; GPTQ exports run in bfloat16 unless float16 is chosen)",
    )
    parser.add_argument("--device", help="torch device, e.g. cuda (default: where the loader puts it, cpu)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from studio.eval.loading import evaluate_checkpoint

    # Loaders (GPTQModel's especially) print banners and configs: keep stdout for the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = evaluate_checkpoint(
            args.model,
            args.text,
            seqlen=args.seqlen,
            stride=args.stride,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            dtype=torch_dtype(args.dtype),
            device=args.device,
        )
    print(json.dumps({"model": str(args.model), "text": str(args.text), **result.to_dict()}))
    return 0
