"""Least-squares refit of a pruned layer's down_proj: the kept columns and the bias, fitted to the full layer.

With x the down_proj input of a token (width w), W and b0 the full down_proj, and K the kept
channels, the refit solves, over the calibration tokens,

    min over (W', b')   sum_t || W x_t + b0 - W' x_t[K] - b' ||^2  +  lam * || W' - W[:, K] ||^2

a least-squares fit of the full layer's output by the kept inputs and a constant column. Its normal
equations need only the Gram matrix of [x, 1] (the sums of x x^T and x, and the token count),
accumulated in float64 while the layer runs: no activations are kept. The constant column's
equation gives the bias exactly, b' = b0 + W mean(x) - W' mean(x[K]); what remains is the ridge-damped
system on the centred Gram matrix C (the covariance times the token count),

    (C[K, K] + lam I) W'^T = C[K, :] W^T + lam W[:, K]^T,

solved by Cholesky. The ridge pulls toward FLAP's bias solution (W' = W[:, K], which with the
formula above is exactly the mean-folding bias), so the refit's output error on the calibration
tokens is never above the bias's, whatever `lam`. `lam` is `damp` times the mean diagonal of
C[K, K]; it keeps the system positive definite when channels are dead or tokens are few.

Memory: one w x w float64 matrix per layer being refit (10240^2 x 8 bytes = 0.84 GB for E4B's widest
FFN); the layer-by-layer pass (`studio.flap.layerwise`) holds one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GramMatrix:
    """Running float64 sums over tokens of x x^T and x, and the token count: the Gram matrix of [x, 1]."""

    xx: torch.Tensor
    x: torch.Tensor
    count: int = 0

    @classmethod
    def empty(cls, channels: int, device: torch.device | str | None = None) -> GramMatrix:
        return cls(
            torch.zeros(channels, channels, dtype=torch.float64, device=device),
            torch.zeros(channels, dtype=torch.float64, device=device),
        )

    @torch.no_grad()
    def add(self, activations: torch.Tensor, rows_per_chunk: int = 1024) -> None:
        """Accumulate the tokens of `activations` ([..., channels]), a chunk of rows at a time in float64."""
        rows = activations.detach().reshape(-1, activations.shape[-1]).to(self.xx.device)
        for chunk in rows.split(rows_per_chunk):
            chunk = chunk.to(torch.float64)
            self.xx.addmm_(chunk.T, chunk)
            self.x += chunk.sum(dim=0)
            self.count += chunk.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.x / self.count

    def centered(self, rows: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Block C[rows, cols] of the centred Gram matrix sum_t (x_t - mean)(x_t - mean)^T."""
        mean = self.mean
        block = self.xx[rows] if cols is None else self.xx[rows][:, cols]
        col_mean = mean if cols is None else mean[cols]
        # In place: at E4B's width a second block-sized temporary would be another 0.7 GB.
        return block.addr_(mean[rows], col_mean, alpha=-self.count)


@torch.no_grad()
def refit_down_proj(
    gram: GramMatrix,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    keep: torch.Tensor,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The refit down_proj (weight [hidden, len(keep)], bias [hidden]), float64, on the Gram's device.

    `weight` [hidden, width] and `bias` (or None) are the full layer's down_proj; `keep` the kept
    channels; `damp` the ridge weight relative to the mean diagonal (see the module docstring).
    """
    if gram.count == 0:
        raise ValueError("compensation: refit needs calibration tokens, none were recorded")
    if not 0 <= damp < 1:
        raise ValueError(f"flap.refit_damp: must be in [0, 1), got {damp}")
    device = gram.xx.device
    full = weight.detach().to(device=device, dtype=torch.float64)
    b0 = torch.zeros(full.shape[0], dtype=torch.float64, device=device)
    if bias is not None:
        b0 += bias.detach().to(device=device, dtype=torch.float64)
    keep = keep.to(device)
    kept = full[:, keep]
    system = gram.centered(keep, keep)
    rhs = gram.centered(keep) @ full.T
    lam = damp * float(system.diagonal().mean())
    if lam > 0:
        system.diagonal().add_(lam)
        rhs += lam * kept.T
    factor, info = torch.linalg.cholesky_ex(system)
    del system  # the factor is a new matrix; at E4B's width each is 0.5 GB
    if int(info) != 0:
        raise ValueError(
            "compensation: the refit's Gram matrix is singular (dead channels or too few calibration tokens); "
            "use a positive flap.refit_damp (--refit-damp) or more calibration samples"
        )
    new_weight = torch.cholesky_solve(rhs, factor).T
    new_bias = b0 + full @ gram.mean - new_weight @ gram.mean[keep]
    return new_weight, new_bias
