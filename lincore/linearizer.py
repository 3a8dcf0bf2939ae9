"""The Linearizer ``f(x) = g_y^-1(A g_x(x))`` and the linear algebra that carries over to it.

``f`` is exactly linear from ``VectorSpace(g_x)`` to ``VectorSpace(g_y)``; composition,
pseudo-inverse, SVD and projections are those of ``A``, moved through the networks.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lincore.inn.flows import Conditioned, Flow
from lincore.operators.base import SVD, Composed, LinearOperator
from lincore.vector_space import VectorSpace


def same_network(a: Flow, b: Flow) -> bool:
    """True when ``a`` and ``b`` are one bijection: the same module, or one conditional
    network bound to the same condition twice. Composition needs exactly this."""
    if a is b:
        return True
    return (
        isinstance(a, Conditioned)
        and isinstance(b, Conditioned)
        and a.flow is b.flow
        and a.cond == b.cond
    )


@dataclass(frozen=True)
class SingularPoints:
    """The SVD of ``f`` as points: ``f(right[i]) = values[i] ⊙ left[i]``, each set orthonormal
    under the induced inner product."""

    left: Tensor  # (k, *Y)  g_y^-1(u_i)
    values: Tensor  # (k,)
    right: Tensor  # (k, *X)  g_x^-1(v_i)


class Linearizer(nn.Module):
    """``f = g_y^-1 ∘ A ∘ g_x``; ``g_y`` defaults to ``g_x`` (the same module).

    >>> import torch
    >>> from lincore import CouplingFlow, LowRank
    >>> f = Linearizer(CouplingFlow(dim=2, depth=2, hidden=8), LowRank(2, 2, rank=1))
    >>> f(torch.randn(4, 2)).shape
    torch.Size([4, 2])
    """

    def __init__(self, g_x: Flow, A: LinearOperator, g_y: Flow | None = None) -> None:
        super().__init__()
        g_y = g_x if g_y is None else g_y
        for name, g in (("g_x", g_x), ("g_y", g_y)):
            if not isinstance(g, Flow):
                raise TypeError(
                    f"{name} must be a lincore Flow (CouplingFlow, ImageFlow, ...), "
                    f"got {type(g).__name__}"
                )
        if not isinstance(A, LinearOperator):
            raise TypeError(
                f"A must be a lincore LinearOperator (Dense, LowRank, ...), got {type(A).__name__}"
            )
        if A.dim_in != g_x.dim or A.dim_out != g_y.dim:
            raise ValueError(
                f"A maps R^{A.dim_in} -> R^{A.dim_out} but g_x has latent dim {g_x.dim} and g_y "
                f"{g_y.dim}; build A with dim_in={g_x.dim}, dim_out={g_y.dim}"
            )
        self.g_x, self.A, self.g_y = g_x, A, g_y

    @property
    def domain(self) -> VectorSpace:
        return VectorSpace(self.g_x)

    @property
    def codomain(self) -> VectorSpace:
        return VectorSpace(self.g_y)

    def forward(self, x: Tensor) -> Tensor:
        """``f(x) = g_y^-1(A g_x(x))`` for a batch of points of ``X``."""
        z = self.g_x(x).flatten(1)  # (B, n)
        return self.codomain.from_latent(self.A(z))  # (B, m) -> (B, *Y)

    def pinv(self, *, rtol: float | None = None) -> Linearizer:
        """``f^+ = g_x^-1 A^+ g_y``: Moore–Penrose in the induced spaces, least squares in ‖.‖_g."""
        return Linearizer(self.g_y, self.A.pinv(rtol=rtol), self.g_x)

    def compose(self, k: Linearizer) -> Linearizer:
        """``f ∘ k = g_y^-1 (A_f A_k) k.g_x``; only when ``k.g_y`` is ``f.g_x``."""
        if not isinstance(k, Linearizer):
            raise TypeError(f"can only compose with a Linearizer, got {type(k).__name__}")
        if not same_network(k.g_y, self.g_x):
            raise ValueError(
                "cannot compose: the inner Linearizer's g_y is not this Linearizer's g_x, so the "
                "middle networks do not cancel; build both on the same network (module) instead"
            )
        return Linearizer(k.g_x, Composed(self.A, k.A), self.g_y)

    def __matmul__(self, k: Linearizer) -> Linearizer:
        return self.compose(k)

    def svd(self) -> SVD:
        """Thin SVD ``(U, S, Vh)`` of ``A``; ``singular_points`` gives them as points of X, Y."""
        return self.A.svd()

    def singular_points(self) -> SingularPoints:
        """Singular vectors of ``f`` as points: ``g_y^-1(u_i)`` in Y and ``g_x^-1(v_i)`` in X."""
        u, s, vh = self.svd()
        return SingularPoints(self.codomain.from_latent(u.T), s, self.domain.from_latent(vh))

    def range_projector(self, *, rtol: float | None = None) -> Linearizer:
        """``P = g_y^-1 Π g_y`` with ``Π`` the orthogonal projector onto ``range(A)``."""
        return Linearizer(self.g_y, self.A.range_projector(rtol=rtol), self.g_y)

    def project(self, y: Tensor) -> Tensor:
        """The point of ``range(f)`` closest to ``y`` under ``‖.‖_g``."""
        return self.range_projector()(y)
