"""Pixels as image flows treat them: the logit of dequantised intensities (RealNVP, sec. 4.1).

``y = logit(a + (1 - 2a) x)`` maps a pixel ``x`` in ``[0, 1]`` onto the real line, with an exact
log-determinant, so a flow's density of ``y`` is still a density of the 8-bit data (bits/dim
unchanged in meaning). It stretches the saturated ends, where raw pixels have almost no variance
(MNIST's always-black border), and its inverse lands every sample in ``[-a', 1 + a']`` with
``a' = a / (1 - 2a)`` (0.001 here: under a quarter of an 8-bit grey level) whatever the flow does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lincore._checks import value_checks
from lincore.inn.base import FlowOutput, InvertibleBlock

ALPHA = 1e-3
"""``a``: how far from 0 and 1 the transform keeps pixels. RealNVP used 1e-6 on MNIST (border
logits then spread from -14 to -5.5) and 0.05 on CIFAR (the border collapses to one value); 1e-3
keeps the border's spread (-6.9 to -5.3) comparable with the strokes'."""


class LogitPixels(InvertibleBlock):
    """``x in [0, 1] -> logit(a + (1 - 2a) x)``, per pixel, with ``log|det|`` per sample."""

    def __init__(self, alpha: float = ALPHA) -> None:
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        p = self.alpha + (1 - 2 * self.alpha) * x
        # the inverse's whole range is accepted (its own samples re-encode), nothing beyond
        if value_checks() and bool(((p <= 0) | (p >= 1)).any()):
            raise ValueError(
                f"pixels must lie in [0, 1] for the logit transform, got values in "
                f"[{x.min().item():.3g}, {x.max().item():.3g}]; scale the data to [0, 1] or set "
                "model.pixels: raw"
            )
        y = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1)
        return FlowOutput(y, log_det.sum(1))

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
