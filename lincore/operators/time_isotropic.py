"""Time operators whose collapsed sampler covers the whole latent space by construction.

``A_t = a(t) I + U C_t V^T`` (``kind="isotropic_low_rank"``) or ``A_t = a(t) I + U S_t U^T`` with
``S_t = C_t C_t^T / r`` positive semi-definite (``kind="isotropic_psd"``, the default).

Why: with a rank-only ``A_t = U_t V_t^T`` the velocity ``(A_t z - z) / (1 - t)`` only contracts the
``D - r`` directions ``A_t`` never predicts, and the collapsed Euler sampler keeps ``1/T`` of the
noise there: one-step samples live on a thin slice of the latent space. Here those directions are
treated as one isotropic Gaussian, noise variance ``v`` and data variance ``s`` (two learned
scalars), and ``a(t) = t s / ((1 - t)^2 v + t^2 s)`` is the exact least-squares coefficient
``E[z1 z_t] / E[z_t^2]`` for them: the flow carries their noise through, scaled by ``sqrt(s / v)``.
The low-rank part adds ``r`` learned directions on top (probabilistic PCA in latent space). Its core
carries the factor ``w(t) = 6.75 t (1 - t)^2`` (peak 1 at t = 1/3) that the least-squares optimum
has whenever the noise side is isotropic (``E[z1 z_t^T] (E[z_t z_t^T])^-1 - a(t) I``): it makes
``A_0 = 0`` and ``A_1 = I`` exact, so the velocity's low-rank part vanishes at t = 1 instead of
being divided by ``1 - t`` there.

The bases ``U, V (D, r)`` are shared by all times and only the small ``r x r`` core ``C_t`` comes
from the time network, so the operator has ``O(D r + hidden r^2)`` parameters (not
``O(D r hidden)``), one step costs ``O(B D r)`` memory, and the whole ``T``-step sampler collapses
to ``beta I + U K V^T`` of rank ``r`` (``lincore.identity_plus.IdentityPlusBasis``).

The promise of ``isotropic_psd``: every Euler step ``M_i = I + dt (A_{t_i} - I) / (1 - t_i)`` is
symmetric with eigenvalues at least ``alpha_i = 1 - dt (1 - a(t_i)) / (1 - t_i)``, positive
because ``a >= 0`` and ``dt / (1 - t_i) = 1 / (T - i) <= 1/2``; so the collapsed ``B`` has
``s_min(B) >= prod s_min(M_i) >= beta = prod_i alpha_i``: no direction is lost, and ``beta`` is
exactly the identity coefficient of ``B`` (``CollapsedSampler.floor``). The PSD core assumes, as
probabilistic PCA does, that the learned directions carry more variance than the isotropic rest
(the least-squares optimum is PSD exactly where the data covariance exceeds ``s``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.identity_plus import IdentityPlusBasis
from lincore.operators.time_low_rank import TimeLowRank, sinusoidal_embedding

OPERATOR_KINDS = ("isotropic_psd", "isotropic_low_rank", "low_rank")
"""``model.operator``: the first is the default; ``low_rank`` is the original ``U_t V_t^T``."""


class TimeIsotropicLowRank(nn.Module):
    """``A_t = a(t) I + U C_t V^T`` on ``R^dim``; symmetric: ``a(t) I + U C_t C_t^T U^T / r``."""

    def __init__(
        self,
        dim: int,
        rank: int,
        *,
        hidden: int = 128,
        embed_dim: int = 64,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        self.rank = check_int("rank", rank, low=1, high=dim)
        self.embed_dim = check_int("embed_dim", embed_dim, low=2)
        self.symmetric = bool(symmetric)
        self.U = nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        self.V = None if symmetric else nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, rank * rank),
        )
        # log of the isotropic variances: data side ``s`` and noise side ``v`` (1 and 1 at start)
        self.log_signal = nn.Parameter(torch.zeros(()))
        self.log_noise = nn.Parameter(torch.zeros(()))

    @property
    def kind(self) -> str:
        return "isotropic_psd" if self.symmetric else "isotropic_low_rank"

    @property
    def right(self) -> Tensor:
        """The right basis: ``V``, or ``U`` itself for the symmetric kind."""
        return self.U if self.V is None else self.V

    def coefficient(self, t: Tensor) -> Tensor:
        """``a(t) = t s / ((1 - t)^2 v + t^2 s)``, elementwise: 0 at t = 0, 1 at t = 1."""
        s, v = self.log_signal.exp(), self.log_noise.exp()
        return t * s / ((1 - t).pow(2) * v + t.pow(2) * s)

    def core_at(self, t: Tensor) -> Tensor:
        """The ``(B, r, r)`` core ``w(t) C_t / sqrt(r)``, or the positive semi-definite
        ``w(t) C_t C_t^T / r``, with ``w(t) = 6.75 t (1 - t)^2``."""
        c = self.mlp(sinusoidal_embedding(t, self.embed_dim)).view(-1, self.rank, self.rank)
        w = (6.75 * t * (1 - t).pow(2))[:, None, None]
        if self.symmetric:
            return w * (c @ c.transpose(1, 2)) / self.rank
        return w * c / self.rank**0.5

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``A_t z`` per sample, ``z (B, dim)``, ``t (B,)``: ``O(B dim r)``, nothing of size
        ``dim x r`` per sample."""
        p = z @ self.right
        q = torch.einsum("brs,bs->br", self.core_at(t), p)
        return self.coefficient(t)[:, None] * z + q @ self.U.T

    def matrix_at(self, t: float, *, dtype: torch.dtype) -> IdentityPlusBasis:
        """``A_t`` as ``a I + U K V^T`` in ``dtype`` (for the exact collapse)."""
        tt = torch.full((1,), t, dtype=self.U.dtype, device=self.U.device)  # no host copy
        # copies: a collapsed sampler must not follow the parameters through a later .float()
        return IdentityPlusBasis(
            self.coefficient(tt)[0].to(dtype),
            self.core_at(tt)[0].to(dtype),
            self.U.to(dtype, copy=True),
            self.right.to(dtype, copy=True),
        )


TimeOperator = TimeLowRank | TimeIsotropicLowRank


def time_operator(kind: str, dim: int, rank: int, *, hidden: int = 128) -> TimeOperator:
    """The ``A_t`` of ``model.operator`` (one of ``OPERATOR_KINDS``)."""
    if kind == "low_rank":
        return TimeLowRank(dim, rank, hidden=hidden)
    if kind in ("isotropic_psd", "isotropic_low_rank"):
        return TimeIsotropicLowRank(dim, rank, hidden=hidden, symmetric=kind == "isotropic_psd")
    raise ValueError(f"operator kind must be one of {OPERATOR_KINDS}, got {kind!r}")
