"""`python -m studio eval`: perplexity of a model on a text and lm-eval task scores, printed as JSON."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from studio.checkpoint import DTYPE_NAMES, torch_dtype


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="sliding-window perplexity of a model (base, FLAP-pruned or GPTQ INT4) on a text, and lm-eval tasks",
        description="Compute the perplexity of a causal model on a text with sliding windows (each "
        "token scored once; every window starts with BOS when the tokenizer adds one, as Gemma's does, and the "
        "BOS is never scored; without BOS the text's first token is context only) and print a JSON object with ppl, nll (mean nats per "
        "token), tokens (scored), seqlen and stride. Stock and FLAP-pruned checkpoints load with "
        "the studio's loader; GPTQ exports (quantize_config.json) load through GPTQModel's kernels. With "
        "--tasks, lm-evaluation-harness tasks run on the same loaded model (or, with --server, on the model an "
        "OpenAI-compatible server such as the studio's vLLM serves) and their metrics appear under \"tasks\".",
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder (weights, config, tokenizer)")
    parser.add_argument(
        "--text",
        help="a UTF-8 text file, or hf:DATASET/CONFIG/SPLIT (e.g. hf:wikitext/wikitext-2-raw-v1/test); "
        "required unless --tasks is given",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="lm-eval tasks: names such as arc_easy or hellaswag (their data sets come from the hub), or "
        "fact_recall=FILE.jsonl, the studio's fact-recall task over a local file of "
        '{"prompt": ..., "answer": " ..."} lines (acc: the answer is the greedy continuation; loglikelihood)',
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="run --tasks against this OpenAI-compatible server (e.g. http://127.0.0.1:8000, vLLM started by "
        "`studio serve`) through lm-eval's local-completions model, instead of loading --model; --model then "
        "gives the tokenizer and the served model name is its folder name unless --served-model-name says",
    )
    parser.add_argument("--served-model-name", help="the model name the --server serves (default: the --model folder's name)")
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
    from studio.eval.downstream import evaluate_model_tasks, evaluate_server_tasks, parse_tasks
    from studio.eval.loading import evaluate_checkpoint, load_eval_model, load_eval_tokenizer

    if args.text is None and not args.tasks:
        raise ValueError("text: give --text (perplexity), --tasks (lm-eval), or both")
    if args.server and args.text is not None:
        raise ValueError("text: perplexity runs on the loaded model; --server evaluates --tasks only")
    tasks = parse_tasks(args.tasks, field="tasks") if args.tasks else ()
    record: dict = {"model": str(args.model)}
    # Loaders (GPTQModel's especially) and lm-eval print banners and configs: keep stdout for the JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        if args.server:
            name = args.served_model_name or args.model.resolve().name
            record["server"] = args.server
            record["tasks"] = evaluate_server_tasks(args.server, args.model, tasks, model=name)
        else:
            dtype = torch_dtype(args.dtype)
            if args.text is not None:
                result = evaluate_checkpoint(
                    args.model,
                    args.text,
                    seqlen=args.seqlen,
                    stride=args.stride,
                    batch_size=args.batch_size,
                    max_tokens=args.max_tokens,
                    dtype=dtype,
                    device=args.device,
                )
                record.update(text=str(args.text), **result.to_dict())
            if tasks:
                model = load_eval_model(args.model, dtype=dtype, device=args.device)
                record["tasks"] = evaluate_model_tasks(model, load_eval_tokenizer(args.model), tasks, args.batch_size)
    print(json.dumps(record))
    return 0
