"""The standard flow-matching baseline: an MLP velocity field, sampled with Euler steps.

Rectified flow with independent coupling, ``x_t = (1-t) x0 + t x1`` and target velocity
``x1 - x0``, as in torchcfm's ``ConditionalFlowMatcher(sigma=0)``; short enough to own.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.inn import Flow, InvertibleBlock
from lincore.operators.time_low_rank import sinusoidal_embedding


def mlp(inputs: int, outputs: int, *, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` hidden SiLU layers of width ``hidden``: the velocity networks of the baselines."""
    check_int("depth", depth, low=1)
    layers: list[nn.Module] = [nn.Linear(inputs, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    layers.append(nn.Linear(hidden, outputs))
    return nn.Sequential(*layers)


class VelocityMLP(nn.Module):
    """``v(x, t)``: an MLP of ``[x, embed(t)]`` with ``depth`` hidden layers of ``hidden``."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        *,
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 32,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.embed_dim = check_int("embed_dim", embed_dim, low=2)
        dim = math.prod(self.event_shape)
        self.net = mlp(dim + embed_dim, dim, hidden=hidden, depth=depth)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1), sinusoidal_embedding(t, self.embed_dim)], 1)
        return self.net(h).reshape(x.shape)


class FlowMatchingBaseline(nn.Module):
    """Rectified-flow training loss and an Euler sampler over the whole ``[0, 1]``."""

    def __init__(self, velocity: VelocityMLP) -> None:
        super().__init__()
        self.velocity = velocity

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.velocity.event_shape

    def forward(self, x1: Tensor) -> dict[str, Tensor]:
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], dtype=x1.dtype, device=x1.device)
        tb = t.reshape(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - tb) * x0 + tb * x1
        loss = (self.velocity(xt, t) - (x1 - x0)).pow(2).mean()
        return {"loss": loss}

    @torch.no_grad()
    def sample(self, x0: Tensor, steps: int) -> Tensor:
        """``steps`` Euler steps from ``t = 0`` to ``t = 1`` (1 step is a single jump)."""
        check_int("steps", steps, low=1)
        x, dt = x0, 1.0 / steps
        for i in range(steps):
            t = torch.full((x.shape[0],), i * dt, dtype=x.dtype, device=x.device)
            x = x + dt * self.velocity(x, t)
        return x


class MaximumLikelihoodFlow(nn.Module):
    """The same kind of invertible ``g`` trained as a plain normalizing flow: ``g(x) ~ N(0, I)``.

    The reference for the one-step generator's likelihood (which is also a normalizing flow, of
    ``g(.; 0)``, ``B`` and ``g(.; 1)``): trained for the same budget, it says how much density
    the flow-matching objective gives up.
    """

    def __init__(self, g: Flow, *, pixels: InvertibleBlock | None = None) -> None:
        super().__init__()
        if g.conditional:
            raise ValueError("MaximumLikelihoodFlow needs an unconditional g (conditional=False)")
        self.g = g
        self.pixels = pixels
        """the same fixed data edge as the Linearizer's (``LogitPixels``), or none"""

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.g.event_shape

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x) = log N(g(x); 0, I) + log|det J_g(x)|`` in nats, per sample."""
        edge = x.new_zeros(x.shape[0])
        if self.pixels is not None:
            step = self.pixels.forward_and_log_det(x)
            x, edge = step.out, step.log_det
        out = self.g.forward_and_log_det(x)
        z = out.out.flatten(1)
        return -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi)) + out.log_det + edge

    def forward(self, x1: Tensor) -> dict[str, Tensor]:
        return {"loss": -self.log_prob(x1).mean() / self.g.dim}

    @torch.no_grad()
    def sample(self, x0: Tensor) -> Tensor:
        x = self.g.inverse(x0)
        return x if self.pixels is None else self.pixels.inverse(x)

    @torch.no_grad()
    def invert(self, x1: Tensor) -> Tensor:
        return self.g(x1 if self.pixels is None else self.pixels(x1))
