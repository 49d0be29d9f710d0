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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--pruned", required=True, type=Path)
    parser.add_argument("--card", default="gemma4-lite-round2", help="preset whose widths the export must have")
    parser.add_argument("--full-load", action="store_true", help="also load the pruned export whole (needs its size in RAM)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from studio.modeling import load_text_config
    from studio.plan import find_preset, load_plan

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

    reference = streamed_logits(base, ids, zero_pruned_channels).float()
    streamed = streamed_logits(pruned, ids).float()
    # The tolerance: how far the same reference moves between float32 and bf16 arithmetic.
    control = streamed_logits(StreamedDecoder(args.base, torch.float32), ids, zero_pruned_channels)
    report = {
        "prompt_tokens": ids.shape[1],
        "dtype": str(pruned.dtype),
        "widths_equal_card": widths == card,
        "bias_in_every_layer": all(
            f"{pruned.prefix}layers.{i}.mlp.down_proj.bias" in pruned.checkpoint for i in range(len(widths))
        ),
        "logit_scale": float(reference.abs().max()),
        "bf16_vs_float32_reference_max_abs": float((reference - control).abs().max()),
        "streamed_vs_reference_max_abs": float((streamed - reference).abs().max()),
        "streamed_vs_reference_argmax_agree": float((streamed.argmax(-1) == reference.argmax(-1)).float().mean()),
    }
    if args.full_load:
        model = load_model(args.pruned, dtype=pruned.dtype)
        loaded = model(input_ids=ids, use_cache=False).logits.float()
        report["loaded_vs_streamed_max_abs"] = float((loaded - streamed).abs().max())
        report["loaded_vs_reference_max_abs"] = float((loaded - reference).abs().max())
        report["loaded_vs_reference_argmax_agree"] = float((loaded.argmax(-1) == reference.argmax(-1)).float().mean())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
