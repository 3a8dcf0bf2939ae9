"""The contract of a linear operator ``A: R^n -> R^m`` between two latent spaces.

An operator applies itself to a batch (row vectors, ``z -> z A^T``) without building its dense
matrix when it has a cheaper factorised form ``A = L R^T``; ``matrix()`` is for small dims and
tests. SVD, pseudo-inverse and range projector all go through the factors when they exist, at
``O((m + n) k^2)`` instead of ``O(m n min(m, n))``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lincore._checks import check_int, check_tensor


class SVD(NamedTuple):
    """Thin SVD ``A = U diag(S) Vh``: ``U (m, k)``, ``S (k,)`` descending, ``Vh (k, n)``."""

    U: Tensor
    S: Tensor
    Vh: Tensor


def factored_svd(left: Tensor, right: Tensor) -> SVD:
    """Thin SVD of ``left @ right.T`` from two QRs and the SVD of a small core.

    ``L = Q_l R_l``, ``R = Q_r R_r`` so ``A = Q_l (R_l R_r^T) Q_r^T``; the core's SVD rotates the
    orthonormal bases. Cost ``O((m + n) k^2 + k^3)`` for inner dimension ``k``.
    """
    q_l, r_l = torch.linalg.qr(left)  # (m, k1), (k1, k)
    q_r, r_r = torch.linalg.qr(right)  # (n, k2), (k2, k)
    p, s, wh = torch.linalg.svd(r_l @ r_r.T, full_matrices=False)
    return SVD(q_l @ p, s, wh @ q_r.T)


def numerical_rank(s: Tensor, shape: tuple[int, int], rtol: float | None) -> int:
    """Count singular values above ``rtol * s_max`` (default ``max(m, n) * eps``, as NumPy)."""
    if rtol is None:
        rtol = max(shape) * torch.finfo(s.dtype).eps
    if s.numel() == 0:
        return 0
    return int((s > rtol * s.max()).sum())


class LinearOperator(nn.Module, ABC):
    """A linear map ``R^dim_in -> R^dim_out`` acting on batches of row vectors."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.dim_in = check_int("dim_in", dim_in, low=1)
        self.dim_out = check_int("dim_out", dim_out, low=1)

    @abstractmethod
    def _forward(self, z: Tensor) -> Tensor:
        """``z A^T`` for ``z`` of shape ``(B, dim_in)``; shapes already checked."""

    @abstractmethod
    def matrix(self) -> Tensor:
        """The dense ``(dim_out, dim_in)`` matrix."""

    def factors(self) -> tuple[Tensor, Tensor] | None:
        """``(L, R)`` with ``A = L @ R.T`` when cheaper than dense, else ``None``."""
        return None

    def forward(self, z: Tensor) -> Tensor:
        """Apply ``A`` to a batch: ``(B, dim_in) -> (B, dim_out)``."""
        check_tensor("z", z, (self.dim_in,), check_finite=False)
        return self._forward(z)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim_out, self.dim_in)

    def svd(self) -> SVD:
        """Thin SVD, through the factors when there are any."""
        f = self.factors()
        if f is not None:
            return factored_svd(*f)
        return SVD(*torch.linalg.svd(self.matrix(), full_matrices=False))

    def pinv(self, *, rtol: float | None = None) -> Factored:
        """Moore–Penrose pseudo-inverse ``A^+ = V S^+ U^T``, as a factored operator.

        Singular values at or below ``rtol * s_max`` count as zero (default ``max(m, n) * eps``).
        It is a snapshot of the current weights (differentiable through them).
        """
        u, s, vh = self.svd()
        k = numerical_rank(s, self.shape, rtol)
        return Factored(vh[:k].T / s[:k], u[:, :k])

    def range_projector(self, *, rtol: float | None = None) -> Factored:
        """Orthogonal projector ``U_k U_k^T`` onto ``range(A)`` in ``R^dim_out``."""
        u, s, _ = self.svd()
        k = numerical_rank(s, self.shape, rtol)
        return Factored(u[:, :k], u[:, :k])


class Factored(LinearOperator):
    """A fixed operator ``A = left @ right.T`` (no parameters): pseudo-inverses, projectors.

    >>> import torch
    >>> A = Factored(torch.ones(3, 1), torch.ones(2, 1))
    >>> A(torch.tensor([[1.0, 2.0]]))
    tensor([[3., 3., 3.]])
    """

    def __init__(self, left: Tensor, right: Tensor) -> None:
        if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[1]:
            raise ValueError(
                f"left (m, k) and right (n, k) must share k, got {tuple(left.shape)} and "
                f"{tuple(right.shape)}"
            )
        super().__init__(right.shape[0], left.shape[0])
        self.register_buffer("left", left)
        self.register_buffer("right", right)

    def _forward(self, z: Tensor) -> Tensor:
        return (z @ self.right) @ self.left.T  # (B, k) then (B, m)

    def matrix(self) -> Tensor:
        return self.left @ self.right.T

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.left, self.right


class Composed(LinearOperator):
    """``outer ∘ inner``: the operator of two composed Linearizers, ``A2 A1``.

    Keeps both as sub-modules (weights stay shared and trainable); its factors are the product
    of theirs, so a low-rank inner or outer keeps the composition cheap.
    """

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        if inner.dim_out != outer.dim_in:
            raise ValueError(
                f"cannot compose: inner maps to R^{inner.dim_out} but outer takes R^{outer.dim_in}"
            )
        super().__init__(inner.dim_in, outer.dim_out)
        self.outer = outer
        self.inner = inner

    def _forward(self, z: Tensor) -> Tensor:
        return self.outer(self.inner(z))

    def matrix(self) -> Tensor:
        return self.outer.matrix() @ self.inner.matrix()

    def factors(self) -> tuple[Tensor, Tensor] | None:
        fo, fi = self.outer.factors(), self.inner.factors()
        if fo is not None and fi is not None:  # L2 (R2^T L1) R1^T
            return fo[0] @ (fo[1].T @ fi[0]), fi[1]
        if fi is not None:  # M L1 R1^T
            return self.outer.matrix() @ fi[0], fi[1]
        if fo is not None:  # L2 (M^T R2)^T
            return fo[0], self.inner.matrix().T @ fo[1]
        return None
