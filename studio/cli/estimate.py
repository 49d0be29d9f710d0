"""`python -m studio estimate`: parameters and bytes per component from a config, a plan and GPTQ
settings, without weights."""

from __future__ import annotations

import json
from pathlib import Path

from studio.sizes.card import CARD_CLAIMS
from studio.checkpoint import DEFAULT_DTYPE, DTYPE_NAMES, dtype_of


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="estimate parameters and bytes per component from a config and a pruning plan",
        description="Build the model on PyTorch's meta device from a Gemma 4 config (a checkpoint folder, its "
        "config.json, or a bare text config), apply the plan's FFN widths and the GPTQ storage of the quantized "
        "modules (int4 qweight, float16 scales per group, packed zeros, int32 g_idx), and print parameters and "
        "bytes per component beside the unpruned, unquantized base. A text-only config has no vision or audio "
        "tower: give their sizes with --vision-params/--audio-params, or --base-bytes to attribute the rest of "
        "a known checkpoint size to them; otherwise they are left out and the table says so.",
    )
    parser.add_argument("--config", required=True, type=Path, help="config.json, a checkpoint folder, or a text config JSON")
    parser.add_argument("--plan", help="preset file or built-in preset name (default: no pruning)")
    parser.add_argument("--bits", type=int, default=4, help="GPTQ weight bits (default: 4)")
    parser.add_argument("--group-size", type=int, default=128, help="GPTQ group size, -1 for none (default: 128)")
    parser.add_argument("--no-quant", action="store_true", help="estimate the pruned model unquantized")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help="dtype of unquantized tensors (default: %(default)s)")
    parser.add_argument("--vision-params", type=int, help="vision tower parameters, when the config has none")
    parser.add_argument("--audio-params", type=int, help="audio tower parameters, when the config has none")
    parser.add_argument(
        "--base-bytes",
        type=float,
        help="total tensor bytes of the base checkpoint (e.g. 15.9e9); what the text config does not account "
        "for is taken as the vision + audio towers, unquantized",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="check that the widths split over this many GPUs in vLLM (multiples of 128 x this; default: 1)",
    )
    parser.add_argument("--compare-card", action="store_true", help="print the gemma4-lite-round2 card's size claims beside the estimate")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON instead of a table")
    parser.set_defaults(func=run)


def _towers_from_base_bytes(base_bytes: float, text_bytes: int, dtype_bytes: int) -> int:
    residual = int(base_bytes) - text_bytes
    if residual < 0:
        raise ValueError(f"--base-bytes: {base_bytes:.4g} is below the text model alone ({text_bytes:,} bytes)")
    return residual // dtype_bytes


def estimates(args):
    """(config, plan, base estimate, compressed estimate) for the parsed arguments."""
    from studio.modeling import layer_widths, text_config_of
    from studio.plans.plan import check_tensor_parallel, find_preset, load_plan
    from studio.gptq.quantize import QuantizeSettings
    from studio.sizes import config_from_file, estimate

    config = config_from_file(args.config)
    plan = load_plan(find_preset(args.plan), text_config_of(config)) if args.plan else None
    check_tensor_parallel(plan.widths if plan else layer_widths(text_config_of(config)), args.tensor_parallel_size)
    quantize = None if args.no_quant else QuantizeSettings(bits=args.bits, group_size=args.group_size)
    towers = {"vision_params": args.vision_params, "audio_params": args.audio_params}
    if args.base_bytes is not None:
        if args.vision_params is not None or args.audio_params is not None:
            raise ValueError("--base-bytes: give it or --vision-params/--audio-params, not both")
        text_only = estimate(config, dtype=args.dtype)
        dtype_bytes = dtype_of(args.dtype).bytes
        towers = {"tower_params": _towers_from_base_bytes(args.base_bytes, text_only.tensor_bytes, dtype_bytes)}
    before = estimate(config, None, None, args.dtype, **towers)
    after = estimate(config, plan, quantize, args.dtype, **towers)
    return config, plan, before, after


def _format_table(before, after) -> list[str]:
    from studio.sizes import COMPONENT_LABELS

    unit, scale = ("GB", 1e9) if before.tensor_bytes >= 1e9 else ("MB", 1e6)
    header = f"{'component':<36}{'params base':>16}{'params after':>16}{unit + ' base':>10}{unit + ' after':>10}"
    lines = [header, "-" * len(header)]
    for name in dict.fromkeys([*before.components, *after.components]):
        b, a = before.component(name), after.component(name)
        lines.append(f"{COMPONENT_LABELS[name]:<36}{b.params:>16,}{a.params:>16,}{b.bytes / scale:>10.3f}{a.bytes / scale:>10.3f}")
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<36}{before.params:>16,}{after.params:>16,}{before.tensor_bytes / scale:>10.3f}{after.tensor_bytes / scale:>10.3f}"
    )
    return lines


def card_comparison(plan, before, after, dtype: str) -> list[str]:
    """The card's claims against this estimate, each with a verdict."""
    lines = ["", "gemma4-lite-round2 card vs this estimate:"]
    has_towers = any(n in before.components for n in ("vision_tower", "audio_tower", "towers"))
    reduction = 1 - after.tensor_bytes / before.tensor_bytes
    lines.append(
        f"  total size: card ~{CARD_CLAIMS['export_bytes'] / 1e9:.1f} GB vs ~{CARD_CLAIMS['base_bytes'] / 1e9:.0f} GB "
        f"(~{CARD_CLAIMS['total_reduction']:.0%} less); estimate {after.tensor_bytes / 1e9:.2f} GB "
        f"({after.tensor_bytes / 2**30:.2f} GiB) vs "
        f"{before.tensor_bytes / 1e9:.2f} GB ({reduction:.1%} less)"
        + ("" if has_towers else " [text model only: no tower sizes given]")
    )
    ffn_b, ffn_a = before.component("ffn").params, after.component("ffn").params
    if plan is not None:
        channels = plan.global_ratio
        lines.append(
            f"  FFN parameters removed: card ~{CARD_CLAIMS['ffn_params_removed']:.0%}; the plan's widths remove "
            f"{channels:.1%} of FFN channels, {1 - ffn_a / ffn_b:.2%} of FFN parameters with the FLAP biases "
            f"({'the card overstates it' if channels < CARD_CLAIMS['ffn_params_removed'] - 0.01 else 'consistent'})"
        )
    if after.quantized_params:
        element = dtype_of(dtype).bytes
        share = after.quantized_bytes / (after.quantized_params * element)
        lines.append(
            f"  quantized modules: card \"~{CARD_CLAIMS['quantized_modules_memory']:.0%} memory\"; GPTQ storage is "
            f"{share:.1%} of the same weights in {dtype} ({1 - share:.1%} saved): right if read as 'what remains', "
            f"wrong if read as 'saved'"
        )
        quantized_share = after.quantized_params / after.params
        lines.append(
            f"  only {quantized_share:.1%} of the parameters are quantized (embeddings, PLE table, q/k/v and towers "
            f"stay in {dtype}), which is why the total shrinks far less than 4-bit suggests"
        )
    return lines


def run(args) -> int:
    config, plan, before, after = estimates(args)
    if args.json:
        print(json.dumps({"plan": plan.name if plan else None, "base": before.to_dict(), "estimate": after.to_dict()}, indent=2))
        return 0
    what = f"plan {plan.name}" if plan else "no pruning"
    what += ", unquantized" if args.no_quant else f", GPTQ W{args.bits} g{args.group_size}"
    print(f"estimate for {args.config} ({what}; unquantized tensors in {args.dtype})")
    for line in _format_table(before, after):
        print(line)
    assumptions = sorted(set(before.assumptions) | set(after.assumptions))
    has_towers = any(n in before.components for n in ("vision_tower", "audio_tower", "towers"))
    if not has_towers:
        assumptions.append("no vision or audio tower: the config has none and no size was given")
    for note in assumptions:
        print(f"assumption: {note}")
    if args.compare_card:
        for line in card_comparison(plan, before, after, args.dtype):
            print(line)
    return 0
