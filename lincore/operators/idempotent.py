"""Rank-``r`` projectors that are idempotent for every value of their weights."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.operators.base import LinearOperator


class Idempotent(LinearOperator):
    """``A^2 = A`` by construction, so ``g^-1 A g`` is a projector for any trained ``g``.

    - ``kind="orthogonal"``: ``A = Q Q^T``, ``Q`` the orthonormal factor of ``W (dim, rank)``.
    - ``kind="oblique"``: ``A = U (V^T U)^-1 V^T`` (range ``U``, kernel ``V^perp``); starts at
      ``V = U`` (orthogonal) and stays exact while ``V^T U`` is invertible.

    No penalty and no straight-through trick: idempotency holds to float round-off.

    >>> import torch
    >>> P = Idempotent(5, rank=2).double()
    >>> M = P.matrix()
    >>> bool(torch.allclose(M @ M, M, atol=1e-12))
    True
    """

    def __init__(
        self, dim: int, rank: int, *, kind: Literal["orthogonal", "oblique"] = "orthogonal"
    ) -> None:
        super().__init__(dim, dim)
        if isinstance(rank, int) and not isinstance(rank, bool) and rank == dim:
            raise ValueError(
                f"rank must be in 1..{dim - 1} (dim - 1), got {rank}: a rank-{dim} projector is "
                "the identity; use a smaller rank"
            )
        self.rank = check_int("rank", rank, low=1, high=dim - 1)
        if kind not in ("orthogonal", "oblique"):
            raise ValueError(f"kind must be 'orthogonal' or 'oblique', got {kind!r}")
        self.kind = kind
        self.u = nn.Parameter(torch.randn(dim, rank) / dim**0.5)
        self.v = nn.Parameter(self.u.detach().clone()) if kind == "oblique" else None

    def factors(self) -> tuple[Tensor, Tensor]:
        if self.v is None:
            q, _ = torch.linalg.qr(self.u)  # (dim, r), orthonormal columns
            return q, q
        # U (V^T U)^-1 by a solve, never an explicit inverse
        left = torch.linalg.solve(self.v.T @ self.u, self.u, left=False)
        return left, self.v

    def _forward(self, z: Tensor) -> Tensor:
        left, right = self.factors()
        return (z @ right) @ left.T

    def matrix(self) -> Tensor:
        left, right = self.factors()
        return left @ right.T
