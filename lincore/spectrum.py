"""The singular value decomposition of a collapsed sampler ``B``: the generator's principal
directions.

The one-step sampler ``x = g^-1(B g(e; 0); 1)`` is linear from the induced space of ``g(.; 0)``
to that of ``g(.; 1)``, so the SVD ``B = sum_i s_i u_i v_i^T`` says which directions ``v_i`` of
the noise's latent move the sample most, and where (``g^-1(u_i; 1)``, scaled by ``s_i``). A
factored ``B = beta I + W Y^T`` is decomposed through its factors in ``O(D k^2)``, never as a
dense ``D x D``: with ``Q`` an orthonormal basis of the span of ``[W, Y]`` (``k <= 2r``
columns), ``B = Q C Q^T + beta (I - Q Q^T)`` with the small core ``C = beta I + Q^T W Y^T Q``;
the core's SVD ``C = P S R^T`` gives ``u_i = Q p_i`` and ``v_i = Q r_i``, and every direction
orthogonal to ``Q`` keeps the isotropic floor ``|beta|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lincore.sampling import CollapsedSampler


@dataclass(frozen=True)
class SamplerSVD:
    """``B = U diag(S) V^T`` on the span of ``V`` (``k`` columns, ``S`` descending), and ``floor``
    times a rotation (the sign of ``beta``) on its orthogonal complement; a dense ``B`` has
    ``k = D`` and no complement (``floor`` is ``nan``)."""

    U: Tensor
    S: Tensor
    V: Tensor
    floor: float
    dim: int

    @property
    def k(self) -> int:
        """Directions held explicitly (the learned ones; ``D`` for a dense ``B``)."""
        return self.S.shape[0]

    def values(self) -> Tensor:
        """All ``D`` singular values of ``B``, descending (the floor repeated ``D - k`` times)."""
        rest = self.S.new_full((self.dim - self.k,), self.floor)
        return torch.cat([self.S, rest]).sort(descending=True).values

    def effective_rank(self) -> float:
        """``exp`` of the entropy of the normalised spectrum (Roy and Vetterli, 2007): ``D`` for
        an isotropic ``B``, 1 when one direction carries everything."""
        s = self.values()
        p = s / s.sum()
        p = p[p > 0]
        return math.exp(float(-(p * p.log()).sum()))

    def edit(self, z: Tensor, i: int, amounts: Tensor) -> Tensor:
        """``(len(amounts), N, D)``: latents ``z`` ``(N, D)`` moved by each amount along ``v_i``
        (``i`` from 0, in the order of ``S``). ``B`` sends the move to ``amount * s_i * u_i``."""
        self._check_index(i)
        v = self.V[:, i].to(z.dtype)
        return z[None] + amounts.to(z.dtype)[:, None, None] * v

    def project(self, z: Tensor, k: int) -> Tensor:
        """Latents ``z`` ``(N, D)`` projected on the top ``k`` right singular vectors: the input
        of the rank-``k`` generator. ``k`` is one of ``1..self.k`` (the learned directions,
        whose order the SVD fixes) or ``D`` (all of them: ``z`` itself; the floor's directions
        have no order among themselves)."""
        if k == self.dim:
            return z
        if not 1 <= k <= self.k:
            raise ValueError(
                f"k must be in 1..{self.k} (the learned directions) or {self.dim} (all), got {k}"
            )
        v = self.V[:, :k].to(z.dtype)
        return (z @ v) @ v.T

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.k:
            raise ValueError(f"direction index must be in 0..{self.k - 1}, got {i}")


@torch.no_grad()
def sampler_svd(b: CollapsedSampler) -> SamplerSVD:
    """The SVD of ``B``, through its factors when it is factored (see the module's docstring),
    in float64."""
    if not b.factored:
        u, s, vh = torch.linalg.svd(b.matrix.to(torch.float64))
        return SamplerSVD(u, s, vh.T, math.nan, b.matrix.shape[0])
    m = b.matrix
    w, y, beta = m.W.to(torch.float64), m.Y.to(torch.float64), m.alpha.to(torch.float64)
    q = _span(torch.cat([w, y], 1))  # (D, k): an orthonormal basis of the span of W and Y
    core = beta * torch.eye(q.shape[1], dtype=q.dtype, device=q.device) + (q.T @ w) @ (y.T @ q)
    p, s, rt = torch.linalg.svd(core)
    return SamplerSVD(q @ p, s, q @ rt.T, float(beta.abs()), m.dim)


def _span(a: Tensor) -> Tensor:
    """An orthonormal basis of the column space of ``a`` (``D x m``), of its numerical rank
    (the SVD's tolerance convention, ``max(D, m) eps s_max``): a symmetric ``B`` (``W`` and ``Y``
    share columns) gets as many directions as it learned, not twice as many."""
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    if not len(s):
        return u
    tol = max(a.shape) * torch.finfo(a.dtype).eps * s[0]
    return u[:, s > tol]
