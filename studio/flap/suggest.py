"""FLAP's adaptive structure search, restricted to FFN widths.

FLAP removes the globally lowest standardised scores, so layers whose channels matter less lose
more. Widths here must stay multiples of `multiple` (GPTQ groups and kernel tiles), so channels are
removed in blocks: a layer's k-th block is its k-th lowest-scoring group of `multiple` channels,
costing the mean z-score of that group. Blocks are taken cheapest first across all unlocked layers
until the global ratio is met; a layer's blocks are taken in order, and no layer goes past its
maximum ratio or below one block.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch


def suggest_widths(
    z_scores: Sequence[torch.Tensor],
    original: Sequence[int],
    target_ratio: float,
    locks: Sequence[bool] | None = None,
    locked_widths: Sequence[int] | None = None,
    max_ratio: float | Sequence[float] = 0.5,
    multiple: int = 128,
) -> list[int]:
    """Per-layer widths pruning `target_ratio` of all FFN channels, within one block of it.

    `locks[i]` keeps layer i at `locked_widths[i]` (default: its original width); its pruning
    still counts toward the target. `max_ratio` caps each layer's pruned fraction.
    """
    n = len(original)
    locks = list(locks) if locks is not None else [False] * n
    locked_widths = list(locked_widths) if locked_widths is not None else list(original)
    caps = [max_ratio] * n if isinstance(max_ratio, (int, float)) else list(max_ratio)
    if not 0 <= target_ratio < 1:
        raise ValueError(f"target_ratio: must be in [0, 1), got {target_ratio}")
    if not (len(z_scores) == len(locks) == len(locked_widths) == len(caps) == n):
        raise ValueError(f"suggest: expected {n} layers in scores, locks, widths and max ratios")
    for index, cap in enumerate(caps):
        if not 0 <= cap < 1:
            raise ValueError(f"layer {index}: max ratio must be in [0, 1), got {cap}")

    total = sum(original)
    target_blocks = round(target_ratio * total / multiple)
    widths = [locked_widths[i] if locks[i] else original[i] for i in range(n)]
    taken = sum(original[i] - widths[i] for i in range(n)) // multiple
    block_costs = {i: _block_costs(z_scores[i], original[i], caps[i], multiple) for i in range(n) if not locks[i]}

    available = taken + sum(len(c) for c in block_costs.values())
    if target_blocks > available:
        reachable = available * multiple / total
        raise ValueError(
            f"target_ratio: {target_ratio:.3f} cannot be met with these locks and max ratios; "
            f"at most {reachable:.3f} of the FFN channels can be pruned"
        )
    heap = [(costs[0], i, 0) for i, costs in block_costs.items() if costs]
    heapq.heapify(heap)
    while taken < target_blocks:
        _, layer, block = heapq.heappop(heap)
        widths[layer] -= multiple
        taken += 1
        costs = block_costs[layer]
        if block + 1 < len(costs):
            heapq.heappush(heap, (costs[block + 1], layer, block + 1))
    return widths


def _block_costs(z: torch.Tensor, original: int, cap: float, multiple: int) -> list[float]:
    """Mean z-score of each removable block of the layer, lowest channels first."""
    max_blocks = min(int(original * cap) // multiple, original // multiple - 1)
    ordered = torch.sort(z.to(torch.float64)).values
    return [float(ordered[k * multiple : (k + 1) * multiple].mean()) for k in range(max(max_blocks, 0))]
