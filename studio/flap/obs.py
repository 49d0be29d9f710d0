"""OBS channel selection: remove a layer's FFN channels in blocks, cheapest first, by the inverse Gram matrix.

With x the down_proj input of a token (width n), W its weight and C the centred Gram matrix of x
over the calibration tokens (`GramMatrix.centered`; centring is the constant column of the bias
solved out, so the bias is refit for free), the output error of a down_proj whose columns differ
from W by D is tr(D C D^T). With the ridge of the refit, H = C + lam I. Removing the channel set S
(D[:, S] = -W[:, S]) and moving the kept columns optimally costs

    cost(S) = tr(W_S (Hinv_SS)^-1 W_S^T),       Hinv = H^-1,

with the kept columns' optimal change D_K = -W_S (Hinv_SS)^-1 Hinv_SK, and Hinv of the kept set
becomes the Schur complement Hinv_KK - Hinv_KS (Hinv_SS)^-1 Hinv_SK (the inverse of H_KK). A single
channel costs ||W[:, j]||^2 / Hinv_jj; with H's off-diagonal dropped that is ||W[:, j]||^2 (C_jj + lam),
which is WIFV (plus the ridge): WIFV is the diagonal approximation of this selection.

The greedy (ZipLM / SlimGPT's batched form) removes, until the layer's planned width is reached,
the `block` channels of lowest single cost together (1/64 of the layer's channels, at most 128),
exactly by the block formulas above, then updates W and Hinv and repeats. Each step is exact, so the costs add up: after any number of steps
their sum is the damped refit objective of the kept set,
min over (W', b') of sum_t ||W x_t + b - W' x_t[K] - b'||^2 + lam ||W' - W_K||^2 + lam ||W_S||^2.
The kept columns' updates are not written: the chosen compensation (`refit` refits exactly this
objective's kept set) is applied afterwards by `studio.flap.prune`.

Memory: Hinv is n x n float64 (0.84 GB at E4B's width of 10240) next to the layer's Gram matrix;
the inversion and the compactions (dropping removed rows once a quarter of them are dead) hold a
second such matrix for a moment, so the peak is the Gram plus two n x n matrices, for one layer at a time (`studio.flap.layerwise` measures and prunes
one layer per visit). Work: one n^3 inversion and about 2 n^2 flops per removed channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from studio.flap.refit import GramMatrix

# Channels removed per step: at most 1/OBS_STEPS of the layer's channels and at most OBS_BLOCK (the
# plans' width multiple). Smaller steps are closer to the one-channel-at-a-time greedy (ZipLM) for about
# the same flops (each step is a rank-`block` update of Hinv) but make more passes over Hinv's memory.
# On the demo model (512 channels pruned to 256, refit), steps of 128 fit about as well as WIFV's channels
# and steps of 8 fit every layer better (docs/obs.md).
OBS_BLOCK = 128
OBS_STEPS = 64
# Hinv keeps the removed channels' (zeroed) rows until fewer than this fraction of its rows are live.
COMPACT_BELOW = 0.75


@dataclass(frozen=True)
class ObsStep:
    """One greedy step: the channels it removed (cheapest single cost first) and the objective's increase."""

    channels: torch.Tensor
    cost: float


@dataclass(frozen=True)
class ObsSelection:
    """The channels a layer keeps (ascending) and the greedy steps that removed the others."""

    width: int
    keep: torch.Tensor
    steps: list[ObsStep]

    @property
    def removal_order(self) -> torch.Tensor:
        if not self.steps:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([step.channels for step in self.steps])

    @property
    def total_cost(self) -> float:
        return sum(step.cost for step in self.steps)

    def scores(self) -> torch.Tensor:
        """Channel scores that `keep_indices` turns back into this selection at this width.

        A removed channel scores its place in the removal order (0 = removed first); kept channels
        all score the channel count, above every removed one.
        """
        order = self.removal_order
        scores = torch.full((self.width + order.numel(),), float(self.width + order.numel()), dtype=torch.float64)
        scores[order] = torch.arange(order.numel(), dtype=torch.float64)
        return scores


def default_block(channels: int) -> int:
    """Channels removed per step for a layer of `channels`: 1/OBS_STEPS of them, between 1 and OBS_BLOCK."""
    return max(1, min(OBS_BLOCK, channels // OBS_STEPS))


def damped_inverse_gram(gram: GramMatrix, damp: float) -> torch.Tensor:
    """(C + lam I)^-1 in float64 on the Gram's device, lam = `damp` times C's mean diagonal."""
    if gram.count == 0:
        raise ValueError("flap.metric: obs needs calibration tokens, none were recorded")
    if not 0 <= damp < 1:
        raise ValueError(f"flap.refit_damp: must be in [0, 1), got {damp}")
    system = gram.centered(torch.arange(gram.xx.shape[0], device=gram.xx.device))
    lam = damp * float(system.diagonal().mean())
    if lam > 0:
        system.diagonal().add_(lam)
    factor, info = torch.linalg.cholesky_ex(system)
    del system  # one n x n matrix at a time beside the Gram
    if int(info) != 0:
        raise ValueError(
            "flap.metric: obs needs an invertible Gram matrix, this layer's is singular (dead channels or too "
            "few calibration tokens); use a positive flap.refit_damp (--refit-damp, it damps obs too) or more samples"
        )
    return torch.cholesky_inverse(factor)


@torch.no_grad()
def obs_select(
    gram: GramMatrix, weight: torch.Tensor, width: int, damp: float = 0.01, block: int | None = None
) -> ObsSelection:
    """Greedily remove blocks of `block` channels from down_proj `weight` [hidden, n] until `width` remain.

    `gram` is the layer's down_proj input Gram matrix; `damp` the ridge weight relative to the mean
    diagonal of its centred form (the refit's `refit_damp`). `block` defaults to `default_block`.
    The last step removes what is left to reach `width`, so `width` need not be a multiple of `block`.
    """
    channels = weight.shape[1]
    if gram.xx.shape[0] != channels:
        raise ValueError(f"gram: covers {gram.xx.shape[0]} channels, down_proj has {channels}")
    if not 0 < width <= channels:
        raise ValueError(f"width: must be between 1 and {channels}, got {width}")
    block = default_block(channels) if block is None else block
    if block <= 0:
        raise ValueError(f"block: must be positive, got {block}")
    device = gram.xx.device
    hinv = damped_inverse_gram(gram, damp)
    w = weight.detach().to(device=device, dtype=torch.float64, copy=True)  # updated in place
    live = torch.arange(channels, device=device)  # original index of each row/column of hinv and w
    alive = torch.ones(channels, dtype=torch.bool, device=device)  # which of them are still kept
    remaining, steps = channels, []
    while remaining > width:
        size = min(block, remaining - width)
        single = torch.where(alive, w.pow(2).sum(dim=0) / hinv.diagonal(), torch.inf)
        chosen = torch.argsort(single, stable=True)[:size]
        factor = torch.linalg.cholesky(hinv[chosen[:, None], chosen])
        w_removed = w[:, chosen]
        cost = float((w_removed.T * torch.cholesky_solve(w_removed.T, factor)).sum())
        rows = hinv[chosen]
        # (Hinv_SS)^-1 Hinv_S: both updates are rank-`size` corrections by it. In place: the removed rows
        # and columns of Hinv, and the removed columns of W, become zero (up to rounding) and are masked.
        correction = torch.cholesky_solve(rows, factor)
        hinv.addmm_(rows.T, correction, alpha=-1)
        w.addmm_(w_removed, correction, alpha=-1)
        steps.append(ObsStep(live[chosen].cpu(), cost))
        alive[chosen] = False
        remaining -= size
        if remaining < COMPACT_BELOW * live.numel():  # drop the dead rows and columns, a copy of the live part
            index = alive.nonzero().squeeze(1)
            hinv = hinv[index[:, None], index]
            w, live, alive = w[:, index], live[index], alive[index]
    live = live[alive]
    return ObsSelection(width, live.sort().values.cpu(), steps)
