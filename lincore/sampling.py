"""Multi-step flow-matching samplers in latent space, and their exact collapse into one matrix.

The velocity of a Linearizer generator is ``v(z, t) = (A_t z - z) / (1 - t) = L_t z``: linear in
``z``. So each explicit step (Euler or RK4) is a matrix ``M_i``, and the whole sampler is
``B = M_{T-2} ... M_0``, accumulated here in float64. Steps run at ``t_i = i / T`` for
``i = 0 .. T-2``: the last interval is skipped, so ``1 - t`` never reaches 0 and the identity part
of the Euler ``B`` telescopes to exactly ``1 / T`` (``B`` is invertible).

RK4 uses the true step matrix of a linear ODE, ``K1 = L1``, ``K2 = L2 (I + dt/2 K1)``,
``K3 = L2 (I + dt/2 K2)``, ``K4 = L4 (I + dt K3)``, ``M = I + dt/6 (K1 + 2 K2 + 2 K3 + K4)``; the
reference code drops the nested products and is only first order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lincore._checks import check_int
from lincore.iplr import IdentityPlusLowRank
from lincore.operators.time_low_rank import TimeLowRank

Method = Literal["euler", "rk4"]
METHODS = ("euler", "rk4")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def step_times(steps: int) -> list[float]:
    """``t_i = i / T`` for ``i = 0 .. T-2``: ``T - 1`` steps of ``dt = 1 / T``."""
    check_int("steps", steps, low=2)
    return [i / steps for i in range(steps - 1)]


def velocity_matrix(op: TimeLowRank, t: float, *, dtype: torch.dtype) -> IdentityPlusLowRank:
    """``L_t = (A_t - I) / (1 - t)`` as ``-1/(1-t) I + (1/(1-t)) U_t V_t^T``."""
    ref = next(op.parameters())
    u, v = op.factors_at(torch.tensor([t], dtype=ref.dtype, device=ref.device))
    c = 1.0 / (1.0 - t)
    return IdentityPlusLowRank(
        torch.tensor(-c, dtype=dtype, device=ref.device), c * u[0].to(dtype), v[0].to(dtype)
    )


def step_matrix(
    op: TimeLowRank, t: float, dt: float, method: Method, *, dtype: torch.dtype
) -> IdentityPlusLowRank:
    """The matrix ``M`` of one explicit step from ``t`` to ``t + dt``: ``z_next = M z``."""
    _check_method(method)
    l1 = velocity_matrix(op, t, dtype=dtype)
    eye = IdentityPlusLowRank.identity(op.dim, like=l1.W)
    if method == "euler":
        return eye + l1.scaled(dt)
    l2 = velocity_matrix(op, t + dt / 2, dtype=dtype)
    l4 = velocity_matrix(op, t + dt, dtype=dtype)
    k1 = l1
    k2 = l2 @ (eye + k1.scaled(dt / 2))
    k3 = l2 @ (eye + k2.scaled(dt / 2))
    k4 = l4 @ (eye + k3.scaled(dt))
    return (eye + (k1 + k2.scaled(2.0) + k3.scaled(2.0) + k4).scaled(dt / 6)).compressed()


@dataclass(frozen=True)
class CollapsedSampler:
    """The whole sampler as one matrix ``B``: identity-plus-low-rank, or dense when smaller."""

    matrix: IdentityPlusLowRank | Tensor

    @property
    def factored(self) -> bool:
        return isinstance(self.matrix, IdentityPlusLowRank)

    def dense(self) -> Tensor:
        return self.matrix.dense() if self.factored else self.matrix

    def apply(self, z: Tensor) -> Tensor:
        """Rows ``z0 (B, D) -> z1 = B z0``, in the dtype of ``z``."""
        if self.factored:
            return self.matrix.to(z.dtype).apply(z)
        return z @ self.matrix.to(z.dtype).T

    def logabsdet(self) -> Tensor:
        """``log|det B|`` in float64: the volume change of the latent map, for exact likelihoods."""
        if self.factored:
            return self.matrix.logabsdet()
        return torch.linalg.slogdet(self.matrix).logabsdet

    def condition_number(self) -> float:
        """``s_max / s_min`` of ``B`` (forms ``B`` densely: ``O(D^3)``, meant for checks)."""
        s = torch.linalg.svdvals(self.dense())
        return float(s.max() / s.min())

    def solve(self, z: Tensor) -> Tensor:
        """Rows ``z1 -> z0 = B^-1 z1`` (a sample back to its noise), by a solve, in float64."""
        z64 = z.to(torch.float64)
        if self.factored:
            return self.matrix.solve(z64).to(z.dtype)
        return torch.linalg.solve(self.matrix, z64.T).T.to(z.dtype)


Form = Literal["auto", "factored", "dense"]


@torch.no_grad()
def collapse(
    op: TimeLowRank, steps: int, method: Method = "euler", *, form: Form = "auto"
) -> CollapsedSampler:
    """``B = M_{T-2} ... M_0`` in float64.

    ``form="auto"`` keeps ``alpha I + W Y^T`` while its rank stays below ``D`` (memory
    ``O(D T r)``) and switches to a dense ``D x D`` matrix after; ``"factored"``/``"dense"`` force
    one form (for benchmarks). Dense accumulation multiplies each low-rank step into ``B`` in
    ``O(D^2 r)``, never as a ``D^3`` matmul.
    """
    _check_method(method)
    if form not in ("auto", "factored", "dense"):
        raise ValueError(f"form must be 'auto', 'factored' or 'dense', got {form!r}")
    dt = 1.0 / steps
    device = next(op.parameters()).device
    b: IdentityPlusLowRank | Tensor = IdentityPlusLowRank.identity(
        op.dim, like=torch.empty(0, dtype=torch.float64, device=device)
    )
    if form == "dense":
        b = b.dense()
    for t in step_times(steps):
        m = step_matrix(op, t, dt, method, dtype=torch.float64)
        if isinstance(b, IdentityPlusLowRank) and (form == "factored" or b.rank + m.rank < op.dim):
            b = m @ b
        else:
            b = m.times_dense(b.dense() if isinstance(b, IdentityPlusLowRank) else b)
    return CollapsedSampler(b)


def sample_latent(op: TimeLowRank, z0: Tensor, steps: int, method: Method = "euler") -> Tensor:
    """The multi-step sampler: integrate ``dz/dt = (A_t z - z) / (1 - t)`` from ``t = 0``."""
    _check_method(method)
    dt = 1.0 / steps

    def v(z: Tensor, t: float) -> Tensor:
        tt = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
        return (op(z, tt) - z) / (1.0 - t)

    z = z0
    for t in step_times(steps):
        if method == "euler":
            z = z + dt * v(z, t)
        else:
            k1 = v(z, t)
            k2 = v(z + dt / 2 * k1, t + dt / 2)
            k3 = v(z + dt / 2 * k2, t + dt / 2)
            k4 = v(z + dt * k3, t + dt)
            z = z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z
