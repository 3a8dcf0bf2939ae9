"""A globally projective generator: ``f = g^-1 P g`` with ``P`` an exact rank-``r`` projector.

``P = L R^T`` is idempotent for every value of its weights (``lincore.operators.Idempotent``),
and ``g`` is the same bijection on both sides, so ``f(f(x)) = f(x)`` for *every* input, before
and after training, to float round-off: ``f`` is a projector onto the learned set
``S = g^-1(range P)``, an ``r``-dimensional manifold.

Training asks two things:

- **data are fixed points**: ``|f(x) - x|^2`` on data, i.e. ``g(x)`` lies in ``range P``;
- **noise lands like data**: every output is ``g^-1(L c)`` with ``c = R^T g(x)`` its ``r``
  subspace coordinates, so if the data are fixed points and the coordinates of projected noise
  have the distribution of the data's, ``f(noise)`` has exactly the data's distribution (both
  are pushed through the same map ``c -> g^-1(L c)``). The distribution term is therefore an
  MMD between the two coordinate sets: ``r``-dimensional (where a kernel two-sample statistic
  is reliable), with bandwidths from the data coordinates (scale-free, so shrinking ``g`` does
  not game it), plus the gap in their means and covariances (a bounded kernel gives no
  gradient to far outliers; the moments do).

What it promises: idempotency, exactly, for any input. What it does not: that an input other
than the noise it was trained on lands anywhere in particular on ``S`` (it lands on ``S``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.inn import CouplingFlow, Flow, ImageFlow
from lincore.inn.flows import Reshaped
from lincore.linearizer import Linearizer
from lincore.metrics import BANDWIDTH_SCALES, median_bandwidths, mmd2
from lincore.operators import Idempotent


class ProjectiveGenerator(nn.Module):
    """``f = g^-1 P g``; ``f(noise)`` samples, ``f(x)`` projects any input onto the learned set.

    >>> import torch
    >>> p = ProjectiveGenerator.build((2,), rank=1, depth=2, hidden=8).double()
    >>> x = torch.randn(5, 2, dtype=torch.float64)
    >>> bool((p.project(p.project(x)) - p.project(x)).abs().max() < 1e-9)
    True
    """

    def __init__(
        self,
        g: Flow,
        rank: int,
        *,
        kind: Literal["orthogonal", "oblique"] = "orthogonal",
        w_reconstruction: float = 1.0,
        w_distribution: float = 0.3,
    ) -> None:
        super().__init__()
        if not isinstance(g, Flow):
            raise TypeError(f"g must be a lincore Flow, got {type(g).__name__}")
        dim = g.dim
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= dim - 1:
            raise ValueError(
                f"rank must be an integer in 1..{dim - 1} (the latent dimension {dim} minus "
                f"one), got {rank!r}: rank {dim} would make f the identity, rank 0 a constant"
            )
        self.g = g
        self.P = Idempotent(dim, rank, kind=kind)
        self.f = Linearizer(g, self.P)  # the same g on both sides: f o f = g^-1 P^2 g = f
        self.rank = rank
        self.w_reconstruction, self.w_distribution = w_reconstruction, w_distribution

    @classmethod
    def build(
        cls,
        event_shape: tuple[int, ...],
        rank: int,
        *,
        depth: int = 4,
        hidden: int = 64,
        flow: Literal["coupling", "image"] = "coupling",
        kind: Literal["orthogonal", "oblique"] = "orthogonal",
        seed: int = 0,
        **weights: float,
    ) -> ProjectiveGenerator:
        """The standard model: a coupling flow on vectors (or flattened images), or an image
        flow on ``(C, H, W)``."""
        torch.manual_seed(seed)
        dim = math.prod(event_shape)
        if flow == "image":
            if len(event_shape) != 3:
                raise ValueError(f"flow='image' needs (C, H, W) samples, got {event_shape}")
            g: Flow = ImageFlow(*event_shape, depth=depth, hidden=hidden, seed=seed)
        elif flow == "coupling":
            g = CouplingFlow(dim=dim, depth=depth, hidden=hidden, seed=seed)
            if len(event_shape) > 1:
                g = Reshaped(g, event_shape)
        else:
            raise ValueError(f"flow must be 'coupling' or 'image', got {flow!r}")
        return cls(g, rank, kind=kind, **weights)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.g.event_shape

    def initialize_from(self, x: Tensor) -> None:
        """Data-dependent initialisation (ActNorm of image flows); a no-op otherwise."""
        init = getattr(self.g, "initialize_from", None)
        if init is not None:
            init(x)

    def project(self, x: Tensor) -> Tensor:
        """``f(x)``: the point of the learned set that ``x`` projects to."""
        return self.f(x)

    def coordinates(self, x: Tensor) -> Tensor:
        """``c = R^T g(x)``, ``(B, r)``: where on the learned set ``f(x)`` lies."""
        _, right = self.P.factors()
        return self.g(x).flatten(1) @ right

    def noise(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Standard Gaussian inputs in data space, the noise ``f`` is trained to project."""
        check_int("n", n, low=1)
        p = next(self.parameters())
        return torch.randn(n, *self.event_shape, generator=generator).to(p)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``f(noise)``: one application of the projector to Gaussian noise."""
        return self.f(self.noise(n, generator=generator))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """The loss terms on a data batch (noise of the same size drawn inside), and ``loss``."""
        z = self.g(x).flatten(1)
        left, right = self.P.factors()
        c_data = z @ right
        fx = self.g.inverse((c_data @ left.T).view(-1, *self.event_shape))
        c_noise = self.coordinates(torch.randn_like(x))
        hs = median_bandwidths(c_data, BANDWIDTH_SCALES)
        terms = {
            "reconstruction": (fx - x).pow(2).flatten(1).sum(1).mean() / x[0].numel(),
            "distribution": mmd2(c_noise, c_data, hs),
        }
        terms["loss"] = (
            self.w_reconstruction * terms["reconstruction"]
            + self.w_distribution * terms["distribution"]
        )
        return terms

    def loss(self, x: Tensor) -> Tensor:
        return self(x)["loss"]

    @torch.no_grad()
    def idempotency_error(self, x: Tensor) -> float:
        """``max |f(f(x)) - f(x)| / max(1, max |f(x)|)``: float round-off for any ``x``, by
        construction (relative, since ``g^-1`` of a far-out input can be large)."""
        fx = self.f(x)
        return float((self.f(fx) - fx).abs().max() / fx.abs().max().clamp_min(1.0))
