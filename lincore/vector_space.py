"""The vector space an invertible network ``g`` induces on its input set.

``g`` transports the structure of ``R^n`` onto ``X``: ``x ⊕ x' = g^-1(g(x) + g(x'))``,
``a ⊙ x = g^-1(a g(x))``, ``<x, x'>_g = <g(x), g(x')>``. A Linearizer is exactly linear between
such spaces, so these are the operations its properties are stated (and tested) in.
"""

from __future__ import annotations

from torch import Tensor

from lincore.inn.flows import Flow


class VectorSpace:
    """Induced operations on batch-first points of ``X``; every result is a point of ``X``.

    >>> import torch
    >>> from lincore import CouplingFlow
    >>> X = VectorSpace(CouplingFlow(dim=2, depth=2, hidden=8))
    >>> x = torch.randn(3, 2)
    >>> torch.allclose(X.add(x, X.zero(like=x)), x, atol=1e-5)
    True
    """

    def __init__(self, g: Flow) -> None:
        if not isinstance(g, Flow):
            raise TypeError(
                f"g must be a lincore Flow (CouplingFlow, ImageFlow, ...), got {type(g)}"
            )
        self.g = g

    def _coef(self, a: float | Tensor, z: Tensor) -> float | Tensor:
        if isinstance(a, Tensor) and a.dim() > 0:
            if a.shape != (z.shape[0],):
                raise ValueError(
                    f"a must be a number or a ({z.shape[0]},) tensor, got {tuple(a.shape)}"
                )
            return a.to(z).view(-1, *([1] * (z.dim() - 1)))
        return a

    def add(self, x: Tensor, x2: Tensor) -> Tensor:
        """``x ⊕ x2 = g^-1(g(x) + g(x2))``."""
        return self.g.inverse(self.g(x) + self.g(x2))

    def sub(self, x: Tensor, x2: Tensor) -> Tensor:
        """``x ⊖ x2 = g^-1(g(x) - g(x2))``."""
        return self.g.inverse(self.g(x) - self.g(x2))

    def scale(self, a: float | Tensor, x: Tensor) -> Tensor:
        """``a ⊙ x = g^-1(a g(x))``, ``a`` a number or one per sample ``(B,)``."""
        z = self.g(x)
        return self.g.inverse(self._coef(a, z) * z)

    def combine(self, a: float | Tensor, x: Tensor, b: float | Tensor, x2: Tensor) -> Tensor:
        """``a ⊙ x ⊕ b ⊙ x2`` in one round trip (fewer passes, less round-off than nesting)."""
        z, z2 = self.g(x), self.g(x2)
        return self.g.inverse(self._coef(a, z) * z + self._coef(b, z2) * z2)

    def neg(self, x: Tensor) -> Tensor:
        """``⊖x = g^-1(-g(x))``."""
        return self.g.inverse(-self.g(x))

    def zero(self, *, like: Tensor) -> Tensor:
        """``0_X = g^-1(0)``, one per sample of ``like``."""
        return self.g.inverse(like.new_zeros(like.shape[0], *self.g.event_shape))

    def inner(self, x: Tensor, x2: Tensor) -> Tensor:
        """``<x, x2>_g = <g(x), g(x2)>``, shape ``(B,)``."""
        return (self.g(x) * self.g(x2)).flatten(1).sum(1)

    def norm(self, x: Tensor) -> Tensor:
        """``‖x‖_g = ‖g(x)‖``, shape ``(B,)``."""
        return self.g(x).flatten(1).norm(dim=1)

    def from_latent(self, z: Tensor) -> Tensor:
        """The point ``g^-1(z)`` of ``X`` for flat latents ``z (B, dim)``."""
        return self.g.inverse(z.view(z.shape[0], *self.g.event_shape))
