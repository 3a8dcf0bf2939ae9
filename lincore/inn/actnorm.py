"""ActNorm: per-channel affine map with a data-dependent initialisation that survives reloads.

The ``initialized`` flag is a buffer, so it travels in the ``state_dict``; initialisation is an
explicit ``initialize_from(batch)`` (run it before wrapping in DDP, which then broadcasts it), and
using the layer before that is an error rather than a silent pass-through.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lincore._checks import value_checks
from lincore.inn.base import FlowOutput, InvertibleBlock


class ActNorm(InvertibleBlock):
    """``y = (x + b) * exp(s)`` per channel (dim 1), for ``(B, C)`` and ``(B, C, H, W)`` input."""

    def __init__(self, channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize_from(self, x: Tensor) -> None:
        """Set ``b, s`` so that this batch leaves the layer with zero mean and unit variance."""
        dims = [d for d in range(x.dim()) if d != 1]
        self.bias.copy_(-x.mean(dim=dims))
        self.log_scale.copy_(-torch.log(x.std(dim=dims) + self.eps))
        self.initialized.fill_(True)

    def _require_init(self) -> None:
        # reading the flag waits for the GPU: skipped inside lincore's ``unchecked()`` (training)
        if value_checks() and not bool(self.initialized):
            raise RuntimeError(
                "ActNorm is not initialised: call flow.initialize_from(batch) on a data batch "
                "once before use (and before wrapping the model in DDP)"
            )

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        self._require_init()
        y = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        pixels = x[0, 0].numel()  # H * W for images, 1 for vectors
        return FlowOutput(y, (self.log_scale.sum() * pixels).expand(x.shape[0]))

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        self._require_init()
        return z * torch.exp(-self._view(self.log_scale, z)) - self._view(self.bias, z)
