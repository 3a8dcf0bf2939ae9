"""Channel mixing between couplings: a fixed permutation, or a learned LU-factored 1x1 conv."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from lincore.inn.base import FlowOutput, InvertibleBlock


def _rows(x: Tensor) -> Tensor:
    """``(B, C)`` or ``(B, C, H, W)`` -> ``(N, C)`` rows, channels last."""
    return x if x.dim() == 2 else x.movedim(1, -1).reshape(-1, x.shape[1])


def _full_precision(x: Tensor) -> AbstractContextManager:
    """Autocast off (mixed-precision training): the mixing, its triangular solves and its
    log-determinant stay in the parameters' dtype, so the inverse undoes the forward map."""
    device = x.device.type
    return (
        torch.autocast(device, enabled=False)
        if torch.is_autocast_enabled(device)
        else nullcontext()
    )


def _unrows(r: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 2:
        return r
    b, c, *spatial = like.shape
    return r.reshape(b, *spatial, c).movedim(-1, 1)


class Permutation(InvertibleBlock):
    """A fixed, seeded permutation of dim 1; exact in both directions, log-det 0."""

    def __init__(self, channels: int, *, seed: int = 0) -> None:
        super().__init__()
        perm = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        return FlowOutput(x[:, self.perm], x.new_zeros(x.shape[0]))

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return z[:, self.inv_perm]


class InvertibleConv1x1(InvertibleBlock):
    """Learned invertible channel mixing ``W = P L (U + diag(sign * exp(log_s)))`` (Glow, LU form).

    On ``(B, C)`` input it is an invertible linear layer. The factors are applied one by one
    (``O(N C^2)``, no ``C x C`` product per call) and inverted by triangular solves, never a
    general ``inv``; ``log|det W| = sum(log_s)``. It starts as a seeded random permutation
    (``L = U = I``): perfectly conditioned, where the LU factors of a random rotation have a
    condition number of ~2,800 at C = 1024 and cost float32 round-trip accuracy.
    """

    def __init__(self, channels: int, *, seed: int = 0) -> None:
        super().__init__()
        perm = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)  # P = I[perm]
        self.register_buffer("inv_perm", torch.argsort(perm))
        self.register_buffer("sign_s", torch.ones(channels))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(torch.zeros(channels, channels))
        self.upper = nn.Parameter(torch.zeros(channels, channels))
        self.log_s = nn.Parameter(torch.zeros(channels))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        """The dense ``(C, C)`` matrix ``P L U`` (for inspection and tests)."""
        lower, upper = self._factors()
        return (lower @ upper)[self.perm]

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        with _full_precision(x):
            lower, upper = self._factors()
            r = ((_rows(x) @ upper.T) @ lower.T)[:, self.perm]  # X W^T = X U^T L^T P^T
            log_det = (self.log_s.sum() * x[0, 0].numel()).expand(x.shape[0])
        return FlowOutput(_unrows(r, x), log_det)

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        with _full_precision(z):
            lower, upper = self._factors()
            r = _rows(z)[:, self.inv_perm]  # Z P, then solve X1 L^T = Z P, X U^T = X1
            r = torch.linalg.solve_triangular(
                lower.T, r, upper=True, left=False, unitriangular=True
            )
            r = torch.linalg.solve_triangular(upper.T, r, upper=False, left=False)
        return _unrows(r, z)
