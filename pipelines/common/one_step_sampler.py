"""``OneStepSampler``: a trained generator with its sampler collapsed, ready to draw samples.

This is the object the MLflow model loads back into, and what ``linearizer sample`` uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lincore.generators import OneStepFlowMatching
from lincore.sampling import CollapsedSampler, Method
from pipelines.common import checkpoints as checkpoint


class OneStepSampler:
    """``x = g^-1(B g(e; 0); 1)`` with ``B`` the collapsed ``steps``-step sampler."""

    def __init__(
        self, model: OneStepFlowMatching, steps: int = 100, method: Method = "euler"
    ) -> None:
        self.model = model.eval()
        self.steps, self.method = steps, method
        self.collapsed: CollapsedSampler = model.collapse(steps, method)

    @classmethod
    def from_checkpoint(cls, path: str | Path, steps: int = 100) -> OneStepSampler:
        model, _ = checkpoint.load(path)
        return cls(model, steps)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.model.event_shape

    def from_noise(self, noise: Tensor) -> Tensor:
        return self.model.sample_one_step(noise.to(torch.float32), self.collapsed)

    def sample(self, n: int, *, seed: int = 0) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return self.from_noise(torch.randn(n, *self.event_shape, generator=gen))
