"""Channel mixing between couplings: a fixed permutation, or a learned LU-factored 1x1 conv."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lincore.inn.base import FlowOutput, InvertibleBlock


def _mix(w: Tensor, x: Tensor) -> Tensor:
    """Apply a ``(C, C)`` matrix to dim 1 of ``(B, C)`` or ``(B, C, H, W)``."""
    if x.dim() == 2:
        return x @ w.T
    return torch.einsum("oc,bc...->bo...", w, x)


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

    On ``(B, C)`` input it is an invertible linear layer. The LU form gives ``log|det W| =
    sum(log_s)`` for free and an inverse by two triangular solves, never a general ``inv``.
    Starts from a seeded random rotation.
    """

    def __init__(self, channels: int, *, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.p @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """``W^-1 = U^-1 L^-1 P^T`` by triangular solves."""
        lower, upper = self._factors()
        linv_pt = torch.linalg.solve_triangular(lower, self.p.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, linv_pt, upper=True)

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        pixels = x[0, 0].numel()
        return FlowOutput(_mix(self.weight(), x), (self.log_s.sum() * pixels).expand(x.shape[0]))

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return _mix(self.inverse_weight(), z)
