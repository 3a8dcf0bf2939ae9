"""Multi-step flow-matching samplers in latent space, and their exact collapse into one matrix.

The velocity of a Linearizer generator is ``v(z, t) = (A_t z - z) / (1 - t) = L_t z``: linear in
``z``. So each explicit step (Euler or RK4) is a matrix ``M_i``, and the whole sampler is
``B = M_{T-2} ... M_0``, accumulated here in float64. Steps run at ``t_i = i / T`` for
``i = 0 .. T-2``: the last interval is skipped, so ``1 - t`` never reaches 0. With the rank-only
``A_t`` the identity part of the Euler ``B`` telescopes to exactly ``1 / T`` (the degenerate
sampler); the isotropic operators (``lincore.operators.time_isotropic``) keep ``a(t)`` of it and
carry the noise through.

RK4 uses the true step matrix of a linear ODE, ``K1 = L1``, ``K2 = L2 (I + dt/2 K1)``,
``K3 = L2 (I + dt/2 K2)``, ``K4 = L4 (I + dt K3)``, ``M = I + dt/6 (K1 + 2 K2 + 2 K3 + K4)``; the
reference code drops the nested products and is only first order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lincore._checks import check_int, value_checks
from lincore.identity_plus import IdentityPlusBasis, IdentityPlusLowRank
from lincore.operators.time_isotropic import TimeIsotropicLowRank, TimeOperator

Method = Literal["euler", "rk4"]
METHODS = ("euler", "rk4")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def step_times(steps: int) -> list[float]:
    """``t_i = i / T`` for ``i = 0 .. T-2``: ``T - 1`` steps of ``dt = 1 / T``."""
    check_int("steps", steps, low=2)
    return [i / steps for i in range(steps - 1)]


Step = IdentityPlusLowRank | IdentityPlusBasis
"""A step matrix: ``alpha I + W Y^T``, or ``alpha I + U K V^T`` when every step shares a basis."""


def velocity_matrix(op: TimeOperator, t: float, *, dtype: torch.dtype) -> Step:
    """``L_t = (A_t - I) / (1 - t)``, in the operator's own identity-plus-low-rank form."""
    a = op.matrix_at(t, dtype=dtype)
    return (a + a.identity_like().scaled(-1.0)).scaled(1.0 / (1.0 - t))


def step_matrix(
    op: TimeOperator, t: float, dt: float, method: Method, *, dtype: torch.dtype
) -> Step:
    """The matrix ``M`` of one explicit step from ``t`` to ``t + dt``: ``z_next = M z``."""
    _check_method(method)
    l1 = velocity_matrix(op, t, dtype=dtype)
    eye = l1.identity_like()
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

    @property
    def floor(self) -> float:
        """The identity coefficient ``beta`` of a factored ``B = beta I + W Y^T`` (``nan`` when
        dense): what ``B`` keeps of the noise outside its low-rank part, and for the
        ``isotropic_psd`` operator's Euler sampler a lower bound on every singular value."""
        return float(self.matrix.alpha) if self.factored else float("nan")

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

    def singular_values(self) -> Tensor:
        """All singular values of ``B``, descending. Factored ``B = beta I + W Y^T`` costs
        ``O(D k^2)``, through its factors (``lincore.spectrum.sampler_svd``: those of a small
        core plus ``|beta|`` on the rest); dense ``B`` costs ``O(D^3)``."""
        if not self.factored:
            return torch.linalg.svdvals(self.matrix)
        from lincore.spectrum import sampler_svd  # spectrum builds on this module

        return sampler_svd(self).values()

    def condition_number(self) -> float:
        """``s_max / s_min`` of ``B``."""
        s = self.singular_values()
        return float(s.max() / s.min())

    def solve(self, z: Tensor) -> Tensor:
        """Rows ``z1 -> z0 = B^-1 z1`` (a sample back to its noise), by a solve, in float64."""
        z64 = z.to(torch.float64)
        if self.factored:
            return self.matrix.solve(z64).to(z.dtype)
        x, _ = torch.linalg.solve_ex(self.matrix, z64.T, check_errors=value_checks())
        return x.T.to(z.dtype)


Form = Literal["auto", "factored", "dense"]


def collapse(
    op: TimeOperator,
    steps: int,
    method: Method = "euler",
    *,
    form: Form = "auto",
    grad: bool = False,
) -> CollapsedSampler:
    """``B = M_{T-2} ... M_0`` in float64.

    An operator with shared bases (``IdentityPlusBasis`` steps) keeps ``B = beta I + U K V^T`` of
    rank ``r`` whatever ``T``: ``O(T r^3)`` time. Otherwise ``form="auto"`` keeps
    ``alpha I + W Y^T`` while its rank stays below ``D`` (memory ``O(D T r)``) and switches to a
    dense ``D x D`` matrix after; ``"factored"``/``"dense"`` force one form (for benchmarks).
    Dense accumulation multiplies each low-rank step into ``B`` in ``O(D^2 r)``, never as a
    ``D^3`` matmul. ``grad=True`` keeps the autograd graph (the one-step likelihood as a training
    term: cheap for shared bases, ``O(T r^3)``). Autocast (mixed-precision training) never
    reaches it: the time network runs in its parameters' dtype and ``B`` accumulates in float64.
    """
    device = next(op.parameters()).device.type
    with torch.set_grad_enabled(grad), torch.autocast(device, enabled=False):
        return _collapse(op, steps, method, form)


def _collapse(op: TimeOperator, steps: int, method: Method, form: Form) -> CollapsedSampler:
    _check_method(method)
    if form not in ("auto", "factored", "dense"):
        raise ValueError(f"form must be 'auto', 'factored' or 'dense', got {form!r}")
    if isinstance(op, TimeIsotropicLowRank) and method == "euler" and form != "dense":
        return _collapse_shared_euler(op, steps)
    dt = 1.0 / steps
    b: Step | Tensor | None = None
    for t in step_times(steps):
        m = step_matrix(op, t, dt, method, dtype=torch.float64)
        if b is None:
            b = m.dense() if form == "dense" else m
        elif isinstance(b, Tensor):
            b = m.times_dense(b)
        elif isinstance(b, IdentityPlusBasis) or form == "factored" or b.rank + m.rank < op.dim:
            b = m @ b  # type: ignore[operator]
        else:
            b = m.times_dense(b.dense())
    assert b is not None  # step_times gives at least one step
    return CollapsedSampler(b.factored() if isinstance(b, IdentityPlusBasis) else b)


def _collapse_shared_euler(op: TimeIsotropicLowRank, steps: int) -> CollapsedSampler:
    """The Euler ``B`` of a shared-basis operator with one batched call of the time network and a
    recursion on the ``r x r`` core alone: ``M_i = alpha_i I + U K_i V^T`` with
    ``alpha_i = 1 - dt (1 - a_i) / (1 - t_i)``, ``K_i = dt / (1 - t_i) core_i``; cheap enough to
    differentiate every training step (the one-step likelihood term)."""
    dt, f64 = 1.0 / steps, torch.float64
    # t_i = i / T made on the device (a list copied over would wait for the GPU); a tensor
    # divisor keeps the division exact where a scalar one may become a reciprocal multiply
    i = torch.arange(steps - 1, dtype=f64, device=op.U.device)
    t64 = i / torch.full((), steps, dtype=f64, device=op.U.device)
    t = t64.to(op.U.dtype)  # the network sees t in its own dtype, as matrix_at gives it
    a, cores = op.coefficient(t).to(f64), op.core_at(t).to(f64)
    alphas = 1 - dt * (1 - a) / (1 - t64)
    ks = cores * (dt / (1 - t64))[:, None, None]
    u, v = op.U.to(f64, copy=True), op.right.to(f64, copy=True)
    gram = v.T @ u
    beta, k = alphas[0], ks[0]
    for i in range(1, len(t)):  # (alpha_i I + U K_i V^T)(beta I + U K V^T)
        beta, k = alphas[i] * beta, alphas[i] * k + beta * ks[i] + ks[i] @ gram @ k
    return CollapsedSampler(IdentityPlusBasis(beta, k, u, v).factored())


def sample_latent(op: TimeOperator, z0: Tensor, steps: int, method: Method = "euler") -> Tensor:
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
