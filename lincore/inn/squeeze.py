"""Space-to-depth: ``(C, H, W) -> (4C, H/2, W/2)``, so that single-channel images can be coupled."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lincore.inn.base import FlowOutput, InvertibleBlock


class Squeeze(InvertibleBlock):
    """Exact pixel (un)shuffle by a factor of 2; log-det 0."""

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        if x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(
                f"Squeeze needs (B, C, H, W) input with even H and W, got {tuple(x.shape)}; "
                "pad or resize the image to an even size"
            )
        return FlowOutput(F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0]))

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return F.pixel_shuffle(z, 2)
