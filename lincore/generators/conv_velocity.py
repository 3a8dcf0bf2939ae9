"""Convolutional velocity networks for the image baselines: flow matching and MeanFlow get a
network built for images, as a user comparing on MNIST would pick, not the vector MLP.

A two-resolution U-Net: conv3x3 at full size, a stride-2 conv, two conv3x3 at half size, an
upsampling back with a skip connection, conv3x3 out; the time embedding is added as a
per-channel bias at each resolution. Small enough to train on CPU, wide enough to match a
Linearizer's parameter count through ``hidden``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.operators.time_low_rank import sinusoidal_embedding


class ConvVelocity(nn.Module):
    """``v(x, t)`` on ``(C, H, W)`` images; with ``times=2``, ``u(z, r, t)`` for MeanFlow (it
    embeds the start ``r`` and the interval ``t - r``, as ``MeanVelocityMLP`` does)."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        *,
        hidden: int = 64,
        times: int = 1,
        embed_dim: int = 32,
    ) -> None:
        super().__init__()
        if len(event_shape) != 3:
            raise ValueError(f"ConvVelocity needs (C, H, W) samples, got {tuple(event_shape)}")
        self.event_shape = tuple(event_shape)
        self.times = check_int("times", times, low=1, high=2)
        self.embed_dim = check_int("embed_dim", embed_dim, low=2)
        h, c = check_int("hidden", hidden, low=1), event_shape[0]
        self.embed = nn.Sequential(nn.Linear(times * embed_dim, h), nn.SiLU(), nn.Linear(h, 3 * h))
        self.inp = nn.Conv2d(c, h, 3, padding=1)
        self.down = nn.Conv2d(h, h, 3, stride=2, padding=1)
        self.mid1 = nn.Conv2d(h, h, 3, padding=1)
        self.mid2 = nn.Conv2d(h, h, 3, padding=1)
        self.dec = nn.Conv2d(2 * h, h, 3, padding=1)
        self.out = nn.Conv2d(h, c, 3, padding=1)

    def _embedding(self, times: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
        emb = torch.cat([sinusoidal_embedding(t, self.embed_dim) for t in times], 1)
        return tuple(e[:, :, None, None] for e in self.embed(emb).chunk(3, dim=1))  # type: ignore[return-value]

    def _net(self, x: Tensor, times: tuple[Tensor, ...]) -> Tensor:
        e0, e1, e2 = self._embedding(times)
        h0 = F.silu(self.inp(x) + e0)
        h1 = F.silu(self.down(h0))
        h1 = F.silu(self.mid2(F.silu(self.mid1(h1) + e1)))
        up = F.interpolate(h1, size=h0.shape[2:], mode="nearest")
        return self.out(F.silu(self.dec(torch.cat([up, h0], 1)) + e2))

    def forward(self, x: Tensor, t: Tensor, u: Tensor | None = None) -> Tensor:
        """``v(x, t)``, or for ``times=2`` the mean velocity ``u(x, r=t, t=u)``."""
        if self.times == 1:
            return self._net(x, (t,))
        if u is None:
            raise ValueError("a two-time network needs (z, r, t)")
        return self._net(x, (t, u - t))
