"""Sizing vLLM servers: GPU memory shares and a `--max-model-len` whose KV cache fits.

vLLM's `--gpu-memory-utilization` is a per-server fraction of the whole GPU, so two servers on one
GPU need explicit shares that add up to less than one. Each server here gets its weights, a fixed
reserve (activations, CUDA graphs, the vision encoder's cache) and an equal part of what is left
for its KV cache; the longest context whose KV cache fits that part becomes its `--max-model-len`.

The KV estimate reads the checkpoint's `config.json`: Gemma 4 layers that reuse an earlier layer's
KV (`num_kv_shared_layers`, the last ones) store none; sliding-window layers store at most
`sliding_window` tokens; full-attention layers store every token at `global_head_dim`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.checkpoint import DEFAULT_DTYPE, find_dtype, read_config, text_config_of

GIB = 1024**3
# Per-server memory beyond weights and KV cache: activations, CUDA graphs, encoder caches.
DEFAULT_RESERVE_BYTES = 2 * GIB
# vLLM allocates KV cache in blocks; lengths are rounded down to whole blocks.
BLOCK_TOKENS = 16
# Below this a chat is not useful; a smaller fit is reported as not fitting.
MIN_CONTEXT_TOKENS = 512


@dataclass(frozen=True)
class GpuShare:
    """One server's slice of a GPU."""

    gpu_memory_utilization: float
    max_model_len: int


def weights_bytes(model_dir: str | Path) -> int:
    """Bytes of the checkpoint's weight files (packed INT4 weights count at their packed size)."""
    files = [*Path(model_dir).glob("*.safetensors"), *Path(model_dir).glob("*.bin")]
    return sum(f.stat().st_size for f in files)


def kv_cache_bytes(config: dict, tokens: int, dtype: str | None = None) -> int:
    """Bytes of KV cache one sequence of `tokens` tokens needs (an upper bound)."""
    text = text_config_of(config)
    dtype = dtype if dtype not in (None, "auto") else (config.get("dtype") or text.get("dtype") or DEFAULT_DTYPE)
    known = find_dtype(dtype)
    element = known.bytes if known else 2  # an unknown spelling counts as 16-bit
    layers = int(text["num_hidden_layers"])
    layer_types = text.get("layer_types") or ["full_attention"] * layers
    storing = layers - int(text.get("num_kv_shared_layers") or 0)
    kv_heads = int(text.get("num_key_value_heads") or text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"])
    per_layer = text.get("per_layer_config") or {}
    window = text.get("sliding_window")
    total = 0
    for index, kind in enumerate(layer_types[:storing]):
        sliding = kind == "sliding_attention" and window
        dim = head_dim if sliding else int(text.get("global_head_dim") or head_dim)
        dim = int(per_layer.get(str(index), {}).get("head_dim", dim))
        stored_tokens = min(tokens, int(window)) if sliding else tokens
        total += 2 * kv_heads * dim * element * stored_tokens
    return total


def fit_max_model_len(
    config: dict, kv_budget_bytes: float, cap: int | None = None, dtype: str | None = None
) -> int:
    """The longest context (a multiple of 16 tokens, at most `cap` and the model's limit) whose KV
    cache fits in `kv_budget_bytes`; a limit below 512 tokens is kept as it is. Raises ValueError
    when not even min(512, limit) tokens fit."""
    limit = int(text_config_of(config).get("max_position_embeddings") or 2**20)
    if cap is not None:
        limit = min(limit, int(cap))
    floor = min(MIN_CONTEXT_TOKENS, limit)
    if kv_cache_bytes(config, floor, dtype) > kv_budget_bytes:
        raise ValueError(
            f"max_model_len: the KV cache for {floor} tokens does not fit in {kv_budget_bytes / GIB:.2f} GiB"
        )
    if limit <= MIN_CONTEXT_TOKENS:
        return limit
    low, high = MIN_CONTEXT_TOKENS, limit
    while low < high:  # the largest length that fits; the cost grows with length
        mid = (low + high + 1) // 2
        if kv_cache_bytes(config, mid, dtype) <= kv_budget_bytes:
            low = mid
        else:
            high = mid - 1
    return max(MIN_CONTEXT_TOKENS, low - low % BLOCK_TOKENS)


def plan_gpu_shares(
    model_dirs: list[str | Path],
    gpu_total_bytes: int,
    *,
    total_utilization: float = 0.9,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    max_model_len_cap: int | Sequence[int | None] | None = None,
    dtype: str | None = None,
) -> list[GpuShare]:
    """Shares of one GPU for servers of `model_dirs` that together use `total_utilization` of it.

    `max_model_len_cap` bounds every server's context, or each its own when a list is given.
    """
    if not 0 < total_utilization <= 1:
        raise ValueError(f"total_utilization: must be in (0, 1], got {total_utilization}")
    budget = total_utilization * gpu_total_bytes
    weights = [weights_bytes(d) for d in model_dirs]
    spare = budget - sum(weights) - reserve_bytes * len(model_dirs)
    if spare <= 0:
        raise ValueError(
            f"model_dirs: weights of {sum(weights) / GIB:.1f} GiB plus {reserve_bytes / GIB:.1f} GiB per server "
            f"do not fit in {budget / GIB:.1f} GiB ({total_utilization:.0%} of the GPU)"
        )
    kv_budget = spare / len(model_dirs)
    caps = list(max_model_len_cap) if isinstance(max_model_len_cap, Sequence) else [max_model_len_cap] * len(model_dirs)
    shares = []
    for model_dir, weight, cap in zip(model_dirs, weights, caps):
        # Rounded down so the shares never add up to more than the total.
        utilization = int((weight + reserve_bytes + kv_budget) / gpu_total_bytes * 1000) / 1000
        max_len = fit_max_model_len(read_config(model_dir), kv_budget, cap, dtype)
        shares.append(GpuShare(utilization, max_len))
    return shares
