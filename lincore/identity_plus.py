"""Identity-plus-low-rank matrices ``alpha I + W Y^T``: the exact algebra of collapsed samplers.

Every explicit step of a sampler whose velocity is ``(A_t - I) / (1 - t)`` with ``A_t = U_t V_t^T``
is ``c I + (low rank)``, and so are their products; keeping that form costs ``O(D k)`` memory for
rank ``k`` instead of ``O(D^2)``. Column convention: ``z -> alpha z + W (Y^T z)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lincore._checks import value_checks


@dataclass(frozen=True)
class IdentityPlusLowRank:
    """``alpha I + W Y^T`` with ``W, Y`` of shape ``(D, k)``."""

    alpha: Tensor  # scalar
    W: Tensor
    Y: Tensor

    @staticmethod
    def identity(dim: int, *, scale: float | Tensor = 1.0, like: Tensor) -> IdentityPlusLowRank:
        empty = like.new_zeros(dim, 0)
        if isinstance(scale, Tensor):
            alpha = scale.to(dtype=like.dtype, device=like.device)
        else:  # filled on the device: no host -> device copy (a sync)
            alpha = like.new_full((), float(scale))
        return IdentityPlusLowRank(alpha, empty, empty)

    @property
    def dim(self) -> int:
        return self.W.shape[0]

    def identity_like(self) -> IdentityPlusLowRank:
        return IdentityPlusLowRank.identity(self.dim, like=self.W)

    @property
    def rank(self) -> int:
        """Columns of the low-rank part (an upper bound on its rank)."""
        return self.W.shape[1]

    def __add__(self, other: IdentityPlusLowRank) -> IdentityPlusLowRank:
        return IdentityPlusLowRank(
            self.alpha + other.alpha,
            torch.cat([self.W, other.W], 1),
            torch.cat([self.Y, other.Y], 1),
        )

    def scaled(self, c: float | Tensor) -> IdentityPlusLowRank:
        return IdentityPlusLowRank(self.alpha * c, self.W * c, self.Y)

    def __matmul__(self, other: IdentityPlusLowRank) -> IdentityPlusLowRank:
        """``(a I + W Y^T)(b I + P Q^T) = ab I + [P, W] [a Q, b Y + Q (P^T Y)]^T``."""
        a, b = self.alpha, other.alpha
        p, q = other.W, other.Y
        w = torch.cat([p, self.W], 1)
        y = torch.cat([a * q, b * self.Y + q @ (p.T @ self.Y)], 1)
        return IdentityPlusLowRank(a * b, w, y)

    def compressed(self, *, rtol: float | None = None) -> IdentityPlusLowRank:
        """Same matrix, fewer columns: drop directions of ``W Y^T`` below ``rtol * s_max``."""
        if self.rank == 0:
            return self
        q_w, r_w = torch.linalg.qr(self.W)
        q_y, r_y = torch.linalg.qr(self.Y)
        p, s, vh = torch.linalg.svd(r_w @ r_y.T)
        tol = (rtol if rtol is not None else self.dim * torch.finfo(s.dtype).eps) * s.max()
        k = int((s > tol).sum())
        return IdentityPlusLowRank(self.alpha, (q_w @ p[:, :k]) * s[:k], q_y @ vh[:k].T)

    def to(self, dtype: torch.dtype) -> IdentityPlusLowRank:
        return IdentityPlusLowRank(self.alpha.to(dtype), self.W.to(dtype), self.Y.to(dtype))

    def dense(self) -> Tensor:
        eye = torch.eye(self.dim, dtype=self.W.dtype, device=self.W.device)
        return self.alpha * eye + self.W @ self.Y.T

    def times_dense(self, b: Tensor) -> Tensor:
        """``M b`` for a dense ``(D, n)`` matrix ``b`` in ``O(D n k)``, never forming ``M``."""
        return self.alpha * b + self.W @ (self.Y.T @ b)

    def apply(self, z: Tensor) -> Tensor:
        """Rows ``z (B, D) -> (B, D)``: ``alpha z + (z Y) W^T``."""
        return self.alpha * z + (z @ self.Y) @ self.W.T

    def logabsdet(self) -> Tensor:
        """``log|det M| = D log|alpha| + log|det(I_k + Y^T W / alpha)|`` (determinant lemma)."""
        head = self.dim * torch.log(self.alpha.abs())
        if self.rank == 0:
            return head
        core = torch.eye(self.rank, dtype=self.W.dtype, device=self.W.device)
        return head + torch.linalg.slogdet(core + self.Y.T @ self.W / self.alpha).logabsdet

    def solve(self, z: Tensor) -> Tensor:
        """Rows ``x = M^-1 z`` by Woodbury, ``O(D k^2)``: no ``D x D`` matrix is formed."""
        k = self.rank
        if k == 0:
            return z / self.alpha
        # (aI + W Y^T)^-1 = (1/a) (I - W (a I_k + Y^T W)^-1 Y^T); rows: x = M^-1 z  <=>  x^T = ...
        core = self.alpha * torch.eye(k, dtype=z.dtype, device=z.device) + self.Y.T @ self.W
        # solve_ex: a singular core is an error only where value checks run (reading its status
        # waits for the GPU); inside ``unchecked()`` it gives inf/NaN, which training catches
        x, _ = torch.linalg.solve_ex(core, (z @ self.Y).T, check_errors=value_checks())
        return (z - x.T @ self.W.T) / self.alpha


@dataclass(frozen=True)
class IdentityPlusBasis:
    """``alpha I + U K V^T`` with the bases ``U, V (D, r)`` fixed and only the core ``K (r, r)``
    free: sums and products of such matrices stay in the family (rank ``r``, never more), so a
    sampler whose steps all share one basis collapses in ``O(T r^3)``, with ``O(D r)`` memory.
    """

    alpha: Tensor  # scalar
    K: Tensor
    U: Tensor
    V: Tensor

    def _like(self, alpha: Tensor, k: Tensor) -> IdentityPlusBasis:
        return IdentityPlusBasis(alpha, k, self.U, self.V)

    @property
    def dim(self) -> int:
        return self.U.shape[0]

    @property
    def rank(self) -> int:
        return self.K.shape[0]

    def identity_like(self) -> IdentityPlusBasis:
        return self._like(torch.ones_like(self.alpha), torch.zeros_like(self.K))

    def __add__(self, other: IdentityPlusBasis) -> IdentityPlusBasis:
        return self._like(self.alpha + other.alpha, self.K + other.K)

    def scaled(self, c: float | Tensor) -> IdentityPlusBasis:
        return self._like(self.alpha * c, self.K * c)

    def __matmul__(self, other: IdentityPlusBasis) -> IdentityPlusBasis:
        """``(a I + U K V^T)(b I + U L V^T) = ab I + U (a L + b K + K (V^T U) L) V^T``."""
        a, b = self.alpha, other.alpha
        gram = self.V.T @ self.U
        return self._like(a * b, a * other.K + b * self.K + self.K @ gram @ other.K)

    def compressed(self) -> IdentityPlusBasis:
        return self  # already minimal: the rank is the basis size

    def factored(self) -> IdentityPlusLowRank:
        """The same matrix as ``alpha I + W Y^T`` (``W = U K``, ``Y = V``)."""
        return IdentityPlusLowRank(self.alpha, self.U @ self.K, self.V)

    def dense(self) -> Tensor:
        return self.factored().dense()

    def times_dense(self, b: Tensor) -> Tensor:
        return self.factored().times_dense(b)
