"""Check a pruned full-size checkpoint against its unpruned source, layer by layer (docs/scale.md).

The reference is the unpruned model with the pruned FFN channels zeroed (their down_proj columns)
and the compensation bias added to down_proj's output: the pruned model must compute exactly that,
up to the rounding of a bf16 matmul over fewer channels. Both run one decoder layer at a time from
their shards (`studio.streaming.StreamedDecoder`), so neither model is ever whole in memory; with
`--full-load` the pruned export is also loaded whole through the studio's loader, when memory allows.

    python benchmarks/check_pruned_scale.py --base /work/scale/e4b --pruned /work/scale/e4b-pruned
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.flap.pipeline import STATS_FILE, load_tokenizer, text_tokenizer  # noqa: E402
from studio.flap.prune import keep_indices  # noqa: E402
from studio.modeling import layer_widths, load_model  # noqa: E402
from studio.streaming import StreamedDecoder  # noqa: E402

PROMPT = "The tower is 324 metres tall, about the same height as an 81-storey building, and"


@torch.no_grad()
def streamed_logits(source: StreamedDecoder, ids: torch.Tensor, edit_layer=None) -> torch.Tensor:
    """Logits of `ids` ([1, T]) computed one decoder layer at a time; `edit_layer(i, layer)` may
    change each layer before it runs."""
    calls = source.layer_calls(ids)
    hidden = calls[0][0]
    for index in range(source.num_layers):
        layer = source.load(index)
        if edit_layer is not None:
            edit_layer(index, layer)
        _, args, kwargs = calls[index]
        hidden = layer(hidden, *args, **kwargs)
        del layer
    hidden = source.decoder.norm(hidden)
    embedding = source.tensor("embed_tokens.weight")  # tied LM head
    logits = hidden @ embedding.T
    cap = source.text_config.final_logit_softcapping
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def lockstep_errors(base, pruned, base32, ids, edit_layer) -> list[dict]:
    """Per layer, on the reference's own input: the pruned layer's and the float32 reference layer's
    largest deviation from the bf16 reference layer's output, relative to that output's largest value."""
    # Each model records its own calls: producer layers fill the KV-sharing store in them.
    calls, pruned_calls, float_calls = base.layer_calls(ids), pruned.layer_calls(ids), base32.layer_calls(ids)
    hidden = calls[0][0]
    errors = []
    for index in range(base.num_layers):
        reference_layer, pruned_layer, float_layer = base.load(index), pruned.load(index), base32.load(index)
        edit_layer(index, reference_layer)
        edit_layer(index, float_layer)
        _, args, kwargs = calls[index]
        _, pruned_args, pruned_kwargs = pruned_calls[index]
        _, float_args, float_kwargs = float_calls[index]
        out = reference_layer(hidden, *args, **kwargs)
        out_pruned = pruned_layer(hidden, *pruned_args, **pruned_kwargs)
        out_float = float_layer(hidden.float(), *float_args, **float_kwargs)
        scale = float(out.float().abs().max())
        errors.append({
            "layer": index,
            "pruned_vs_reference": float((out_pruned.float() - out.float()).abs().max()) / scale,
            "bf16_vs_float32": float((out_float - out.float()).abs().max()) / scale,
        })
        hidden = out
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--pruned", required=True, type=Path)
    parser.add_argument("--card", default="gemma4-lite-round2", help="preset whose widths the export must have")
    parser.add_argument("--full-load", action="store_true", help="also load the pruned export whole (needs its size in RAM)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from studio.modeling import load_text_config
    from studio.plans.plan import find_preset, load_plan

    tokenizer = text_tokenizer(load_tokenizer(args.pruned))
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    pruned = StreamedDecoder(args.pruned)
    base = StreamedDecoder(args.base, pruned.dtype)
    widths = layer_widths(pruned.text_config)
    card = load_plan(find_preset(args.card), load_text_config(args.base)).widths
    stats = load_file(args.pruned / STATS_FILE)

    def zero_pruned_channels(index: int, layer) -> None:
        keep = keep_indices(stats[f"layers.{index}.scores"], widths[index])
        dropped = torch.ones(layer.mlp.down_proj.in_features, dtype=torch.bool)
        dropped[keep] = False
        layer.mlp.down_proj.weight[:, dropped] = 0
        bias = pruned.tensor(f"layers.{index}.mlp.down_proj.bias")
        layer.mlp.down_proj.register_forward_hook(lambda _m, _i, out: out + bias.to(out.dtype))

    # 1. The same function: in float32 arithmetic the pruned model and the reference differ only by
    #    summation order (bf16 weights and biases are exact in float32).
    base32, pruned32 = StreamedDecoder(args.base, torch.float32), StreamedDecoder(args.pruned, torch.float32)
    reference32 = streamed_logits(base32, ids, zero_pruned_channels)
    streamed32 = streamed_logits(pruned32, ids)
    # 2. In bf16, layer by layer on the same inputs (a random-weight stack amplifies rounding from
    #    layer to layer, so end-to-end bf16 logits say little): each pruned layer's output against
    #    the reference layer's, next to how far the reference layer itself moves from float32 to bf16.
    per_layer = lockstep_errors(base, pruned, base32, ids, zero_pruned_channels)
    report = {
        "prompt_tokens": ids.shape[1],
        "dtype": str(pruned.dtype),
        "widths_equal_card": widths == card,
        "bias_in_every_layer": all(
            f"{pruned.prefix}layers.{i}.mlp.down_proj.bias" in pruned.checkpoint for i in range(len(widths))
        ),
        "float32_logit_scale": float(reference32.abs().max()),
        "float32_pruned_vs_reference_max_abs": float((streamed32 - reference32).abs().max()),
        "float32_argmax_agree": float((streamed32.argmax(-1) == reference32.argmax(-1)).float().mean()),
        "bf16_layer_error_max": max(e["pruned_vs_reference"] for e in per_layer),
        "bf16_layer_rounding_max": max(e["bf16_vs_float32"] for e in per_layer),
        "bf16_layers": per_layer,
    }
    if args.full_load:
        model = load_model(args.pruned, dtype=pruned.dtype)
        loaded = model(input_ids=ids, use_cache=False).logits.float()
        streamed = streamed_logits(pruned, ids).float()
        report["bf16_loaded_vs_streamed_max_abs"] = float((loaded - streamed).abs().max())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
