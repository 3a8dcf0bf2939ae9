"""MeanFlow (Geng et al. 2025): learn the average velocity over an interval, sample in one jump.

Our time runs forward: noise at ``t = 0``, data at ``t = 1``, ``z_s = (1-s) x0 + s x1`` and
``v = x1 - x0`` (as :class:`~lincore.generators.baseline.FlowMatchingBaseline`). The network
``u(z, r, t)`` is the average velocity over ``[r, t]`` (``r <= t``) of the trajectory that is at
``z`` at the START time ``r``, so a jump goes forward: ``z_t = z_r + (t - r) u(z_r, r, t)``, and
one-step sampling is ``x1 = x0 + u(x0, 0, 1)``.

The paper runs time backwards (noise at 1), where the known point sits at the END time of the
interval; mirroring ``s -> 1 - s`` turns its identity ``u = v - (t-r) du/dt`` into ours:
differentiating ``(t - r) u(z_r, r, t) = z_t - z_r`` in ``r`` along the path gives

    ``u(z_r, r, t) = v(z_r, r) + (t - r) d/dr u(z_r, r, t)``,  ``d/dr u = v . dz u + dr u``,

one forward-mode JVP with tangents ``(v, 1, 0)`` for ``(z, r, t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.generators.baseline import mlp
from lincore.operators.time_low_rank import sinusoidal_embedding

MeanVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class MeanVelocityMLP(nn.Module):
    """``u(z, r, t)``: an MLP of ``[z, embed(r), embed(t - r)]`` returning the shape of ``z``.

    Like the paper's ports it sees the time at which ``z`` lives (here the start ``r``) and the
    interval length ``h = t - r``; ``h = 0`` is then plain flow matching's ``v(z, r)``. No
    dropout or normalisation, so ``torch.func.jvp`` through it is the same in train and eval.
    The embedding's top frequency (32 rad) enters the training target through ``du/dr``; a small
    ``embed_dim`` (2 = one frequency) trains faster and steadier on toy data.
    """

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
        self.net = mlp(dim + 2 * embed_dim, dim, hidden=hidden, depth=depth)

    def forward(self, z: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """Average velocity over ``[r, t]`` from ``z`` at time ``r``; ``r, t`` of shape ``(B,)``."""
        emb_r = sinusoidal_embedding(r, self.embed_dim)
        emb_h = sinusoidal_embedding(t - r, self.embed_dim)
        return self.net(torch.cat([z.flatten(1), emb_r, emb_h], 1)).reshape(z.shape)


def path_derivative(
    u_fn: MeanVelocityFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """``(u(z, r, t), d/dr u)`` with ``dz/dr = v`` and ``t`` fixed, in one forward-mode JVP.

    Forward mode gives the directional derivative in the same pass as ``u`` (no double backward)
    and leaves ``u`` differentiable for the loss.
    """
    tangents = (v, torch.ones_like(r), torch.zeros_like(t))
    return torch.func.jvp(u_fn, (z, r, t), tangents)


def mean_flow_target(
    u_fn: MeanVelocityFn, z: Tensor, r: Tensor, t: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """``(u(z, r, t), sg(v + (t - r) d/dr u))``: the prediction and its stop-gradient target.

    At ``t = r`` the target is ``v`` itself (flow matching); the exact average velocity is its
    fixed point when ``v`` is the marginal velocity.
    """
    u, du_dr = path_derivative(u_fn, z, r, t, v)
    h = (t - r).reshape(-1, *([1] * (z.dim() - 1)))
    return u, (v + h * du_dr).detach()


class MeanFlow(nn.Module):
    """MeanFlow's training loss and its few-step sampler, in our forward time convention.

    ``flow_fraction`` of the pairs have ``t = r`` (plain flow matching; the paper's best is 75%).
    Times are logit-normal with the paper's ``p_mean, p_std`` (given in its noise-at-1 time and
    mirrored here, so the default puts more mass near the data) or uniform. The squared error is
    reweighted by ``1 / (err + adaptive_c) ** adaptive_p`` (stop-gradient), as in the paper.
    """

    def __init__(
        self,
        mean_velocity: MeanVelocityMLP,
        *,
        flow_fraction: float = 0.75,
        time_dist: str = "logit_normal",
        p_mean: float = -0.4,
        p_std: float = 1.0,
        adaptive_p: float = 1.0,
        adaptive_c: float = 1e-3,
    ) -> None:
        super().__init__()
        if not 0.0 <= flow_fraction <= 1.0:
            raise ValueError(f"flow_fraction must be in [0, 1], got {flow_fraction}")
        if time_dist not in ("logit_normal", "uniform"):
            raise ValueError(f"time_dist must be 'logit_normal' or 'uniform', got {time_dist!r}")
        if p_std <= 0.0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        if adaptive_p < 0.0 or adaptive_c <= 0.0:
            raise ValueError(
                f"adaptive_p must be >= 0 and adaptive_c > 0, got {adaptive_p}, {adaptive_c}"
            )
        self.mean_velocity = mean_velocity
        self.flow_fraction = flow_fraction
        self.time_dist = time_dist
        self.p_mean, self.p_std = p_mean, p_std
        self.adaptive_p, self.adaptive_c = adaptive_p, adaptive_c

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.mean_velocity.event_shape

    def sample_times(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(r, t)`` of shape ``(n,)`` with ``r <= t``; ``t = r`` for ``flow_fraction`` of them."""
        kw = {"dtype": like.dtype, "device": like.device}
        if self.time_dist == "uniform":
            a, b = torch.rand(n, **kw), torch.rand(n, **kw)
        else:  # mirror of the paper's sigmoid(N(p_mean, p_std)) in its noise-at-1 time
            a = torch.sigmoid(-(self.p_mean + self.p_std * torch.randn(n, **kw)))
            b = torch.sigmoid(-(self.p_mean + self.p_std * torch.randn(n, **kw)))
        r, t = torch.minimum(a, b), torch.maximum(a, b)
        # The paper keeps the time of the known point and collapses the other onto it; ours is r.
        t = torch.where(torch.rand(n, **kw) < self.flow_fraction, r, t)
        return r, t

    def forward(self, x1: Tensor) -> dict[str, Tensor]:
        """``loss`` to minimise, and the unweighted ``mse`` to watch (the loss sits near 1)."""
        x0 = torch.randn_like(x1)
        r, t = self.sample_times(x1.shape[0], x1)
        shape = (-1, *([1] * (x1.dim() - 1)))
        zr = (1 - r.reshape(shape)) * x0 + r.reshape(shape) * x1
        v = x1 - x0
        u, u_tgt = mean_flow_target(self.mean_velocity, zr, r, t, v)
        err = (u - u_tgt).pow(2).flatten(1).sum(1)  # squared l2 per sample, as in the paper
        weight = (err.detach() + self.adaptive_c).pow(-self.adaptive_p)
        return {"loss": (weight * err).mean(), "mse": err.detach().mean()}

    @torch.no_grad()
    def sample(self, x0: Tensor, steps: int = 1) -> Tensor:
        """``steps`` equal jumps ``z <- z + (t' - t) u(z, t, t')`` from ``t = 0`` to ``t = 1``."""
        check_int("steps", steps, low=1)
        z, n = x0, x0.shape[0]
        for i in range(steps):
            r = torch.full((n,), i / steps, dtype=z.dtype, device=z.device)
            t = torch.full((n,), (i + 1) / steps, dtype=z.dtype, device=z.device)
            z = z + (t - r).reshape(-1, *([1] * (z.dim() - 1))) * self.mean_velocity(z, r, t)
        return z
