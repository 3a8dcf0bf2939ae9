"""Time-conditioned rank-``r`` operator ``A_t = U_t V_t^T`` for flow matching.

A small MLP of a sinusoidal embedding of ``t`` produces ``U_t, V_t`` (``D x r`` each); the operator
is applied as ``(z V_t) U_t^T`` and never materialised as ``D x D`` (the reference code builds a
dense ``B x D x D`` tensor: 9.7 GB at CelebA size).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.identity_plus import IdentityPlusLowRank


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """``(B,) -> (B, dim)``: sin/cos of ``t`` at ``dim // 2`` frequencies from 1 to 32 rad.

    The top frequency is kept low on purpose: ``A_t`` must be smooth in ``t`` for a 100-step
    sampler (and its RK4 collapse) to resolve it.
    """
    half = dim // 2
    steps = torch.arange(half, dtype=t.dtype, device=t.device) / max(half - 1, 1)
    freqs = torch.exp(math.log(32.0) * steps)
    angles = t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeLowRank(nn.Module):
    """``A_t = U_t V_t^T`` of rank ``rank`` on ``R^dim``, one per time ``t in [0, 1]``.

    The original operator (``model.operator: low_rank``), kept so that old checkpoints load: its
    collapsed sampler keeps only ``1/T`` of the noise outside the predicted directions (see
    ``lincore.operators.time_isotropic``), and its last layer has ``2 dim rank hidden`` weights.
    """

    kind = "low_rank"

    def __init__(self, dim: int, rank: int, *, hidden: int = 256, embed_dim: int = 64) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        self.rank = check_int("rank", rank, low=1, high=dim)
        self.embed_dim = check_int("embed_dim", embed_dim, low=2)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 2 * dim * rank),
        )

    def factors_at(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``U_t, V_t`` of shape ``(B, dim, rank)`` for times ``t`` of shape ``(B,)``."""
        out = self.mlp(sinusoidal_embedding(t, self.embed_dim))
        u, v = out.view(-1, 2, self.dim, self.rank).unbind(1)
        return u / self.rank**0.5, v / self.dim**0.5

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``A_t z`` per sample: ``z (B, dim)``, ``t (B,)`` -> ``(B, dim)``."""
        u, v = self.factors_at(t)
        return torch.einsum("bdr,br->bd", u, torch.einsum("bdr,bd->br", v, z))

    def matrix_at(self, t: float, *, dtype: torch.dtype) -> IdentityPlusLowRank:
        """``A_t`` as ``0 I + U_t V_t^T`` in ``dtype`` (for the exact collapse)."""
        ref = next(self.parameters())
        u, v = self.factors_at(torch.full((1,), t, dtype=ref.dtype, device=ref.device))
        zero = torch.zeros((), dtype=dtype, device=ref.device)
        return IdentityPlusLowRank(zero, u[0].to(dtype), v[0].to(dtype))
