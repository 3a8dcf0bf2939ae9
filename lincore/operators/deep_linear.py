"""Deep-linear operator ``A = W_L ... W_1``: rank emerges from training (implicit low-rank bias)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.operators.base import LinearOperator


class DeepLinear(LinearOperator):
    """A product of ``depth`` matrices of width ``hidden`` (default ``max(dim_in, dim_out)``).

    The factors for SVD/pseudo-inverse are ``(W_L ... W_2, W_1^T)``, so a narrow ``hidden`` keeps
    them as cheap as a low-rank operator.
    """

    def __init__(self, dim_in: int, dim_out: int, depth: int, *, hidden: int | None = None) -> None:
        super().__init__(dim_in, dim_out)
        self.depth = check_int("depth", depth, low=1)
        width = check_int("hidden", hidden if hidden is not None else max(dim_in, dim_out), low=1)
        dims = [dim_in] + [width] * (depth - 1) + [dim_out]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5) for d_in, d_out in pairwise(dims)
        )

    def _forward(self, z: Tensor) -> Tensor:
        for w in self.weights:
            z = z @ w.T
        return z

    def _product(self, weights: list[Tensor]) -> Tensor:
        out = weights[0]
        for w in weights[1:]:
            out = w @ out
        return out

    def matrix(self) -> Tensor:
        return self._product(list(self.weights))

    def factors(self) -> tuple[Tensor, Tensor] | None:
        if self.depth == 1:
            return None
        return self._product(list(self.weights)[1:]), self.weights[0].T
