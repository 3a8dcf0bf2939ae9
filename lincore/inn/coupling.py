"""Affine coupling with a soft-bounded log-scale: exact inverse, stable at depth.

``y1 = x1``, ``y2 = x2 * exp(c * tanh(s(x1) / c)) + t(x1)``. The soft clamp bounds each log-scale
by ``c`` without the zero gradient of a hard clamp; the conditioner's last layer starts at zero so
a fresh block is the identity (the Glow idiom), and the inverse recomputes ``(s, t)`` from the
untouched half.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lincore.inn.base import FlowOutput, InvertibleBlock


class MLPConditioner(nn.Module):
    """``(x1, cond) -> (s, t)`` for vectors: a 2-hidden-layer MLP, zero-initialised output."""

    def __init__(
        self, in_features: int, out_features: int, hidden: int, cond_features: int
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features + cond_features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_features),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: Tensor, cond: Tensor | None) -> Tensor:
        if cond is not None:  # cond: (B, 1)
            h = torch.cat([h, cond], dim=1)
        return self.net(h)


class ConvConditioner(nn.Module):
    """``(x1, cond) -> (s, t)`` for images: conv3x3 - conv1x1 - conv3x3, zero-initialised output."""

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int, cond_channels: int
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + cond_channels, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: Tensor, cond: Tensor | None) -> Tensor:
        if cond is not None:  # cond: (B, 1) -> a constant (B, 1, H, W) channel
            h = torch.cat([h, cond[:, :, None, None].expand(-1, -1, *h.shape[2:])], dim=1)
        return self.net(h)


class AffineCoupling(InvertibleBlock):
    """Transform the second ``channels - channels // 2`` channels given the first ones.

    Args:
        channels: size of dim 1 (features of a vector or channels of an image), at least 2.
        conditioner: maps ``(x1, cond)`` to ``2 * (channels - channels // 2)`` channels.
        clamp: bound ``c`` on every log-scale, so one block scales by at most ``e^c``.
    """

    def __init__(self, channels: int, conditioner: nn.Module, *, clamp: float = 2.0) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(
                f"coupling needs >= 2 channels, got {channels}; "
                "add a Squeeze first (1x8x8 -> 4x4x4)"
            )
        if clamp <= 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        self.split = channels // 2
        self.conditioner = conditioner
        self.clamp = float(clamp)

    def _scale_shift(self, x1: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        # under autocast the conditioner runs in bf16/fp16; the scale, the shift and so the
        # log-determinant sum are in the flow's own dtype, consistent with the map applied
        s, t = self.conditioner(x1, cond).to(x1.dtype).chunk(2, dim=1)
        return self.clamp * torch.tanh(s / self.clamp), t

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        log_s, t = self._scale_shift(x1, cond)
        y = torch.cat([x1, x2 * torch.exp(log_s) + t], dim=1)
        return FlowOutput(y, log_s.flatten(1).sum(1))

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        z1, z2 = z[:, : self.split], z[:, self.split :]
        log_s, t = self._scale_shift(z1, cond)
        return torch.cat([z1, (z2 - t) * torch.exp(-log_s)], dim=1)


COUPLINGS = ("affine", "spline")
"""The coupling kinds every flow can be built with (``model.coupling``)."""


def coupling_block(
    kind: str,
    channels: int,
    conditioner: type[nn.Module],
    hidden: int,
    *,
    conditional: bool,
    clamp: float,
) -> InvertibleBlock:
    """One coupling of ``kind`` on ``channels``, with a fresh ``conditioner`` sized for it."""
    from lincore.inn.spline import SPLINE_BINS, SplineCoupling

    half, rest = channels // 2, channels - channels // 2
    if kind == "affine":
        net = conditioner(half, 2 * rest, hidden, int(conditional))
        return AffineCoupling(channels, net, clamp=clamp)
    if kind == "spline":
        per = SplineCoupling.params_per_value(SPLINE_BINS)
        net = conditioner(half, per * rest, hidden, int(conditional))
        return SplineCoupling(channels, net, bins=SPLINE_BINS)
    raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}; got {kind!r}")
