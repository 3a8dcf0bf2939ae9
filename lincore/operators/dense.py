"""Dense and low-rank operators: the plain ``A`` and the rank-``r`` ``A = U V^T``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.operators.base import LinearOperator


class Dense(LinearOperator):
    """An unconstrained ``(dim_out, dim_in)`` matrix, initialised with variance ``1 / dim_in``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__(dim_in, dim_out)
        self.weight = nn.Parameter(torch.randn(dim_out, dim_in) / dim_in**0.5)

    def _forward(self, z: Tensor) -> Tensor:
        return z @ self.weight.T

    def matrix(self) -> Tensor:
        return self.weight


class LowRank(LinearOperator):
    """``A = U V^T`` with ``U (dim_out, rank)``, ``V (dim_in, rank)``, applied as ``(z V) U^T``.

    >>> import torch
    >>> A = LowRank(4, 3, rank=2)
    >>> int(torch.linalg.matrix_rank(A.matrix()))
    2
    """

    def __init__(self, dim_in: int, dim_out: int, rank: int) -> None:
        super().__init__(dim_in, dim_out)
        self.rank = check_int("rank", rank, low=1, high=min(dim_in, dim_out))
        self.u = nn.Parameter(torch.randn(dim_out, rank) / rank**0.5)
        self.v = nn.Parameter(torch.randn(dim_in, rank) / dim_in**0.5)

    def _forward(self, z: Tensor) -> Tensor:
        return (z @ self.v) @ self.u.T  # (B, r) then (B, dim_out)

    def matrix(self) -> Tensor:
        return self.u @ self.v.T

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.u, self.v
