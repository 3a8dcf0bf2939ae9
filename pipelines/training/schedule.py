"""What changes with the step: the learning rate, and the moving average of the weights."""

from __future__ import annotations

import math
from typing import Any

import torch

from pipelines.common.config import TrainConfig


def learning_rate(cfg: TrainConfig, epoch: int, step: int, steps: int, epochs: int) -> float:
    """The step's learning rate: cosine from ``lr`` to 0 over the run, or constant. A function
    of the position alone (no scheduler state), so a resumed run continues the same curve."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (epoch * steps + step) / max(epochs * steps, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


class EmaWithWarmup:
    """``multi_avg_fn`` for ``AveragedModel``: an EMA whose decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short run's average is not
    dominated by its first, untrained weights (torch's ``get_ema_multi_avg_fn`` has no warm-up).
    ``n`` is counted here, on the host: reading ``AveragedModel.n_averaged`` would sync a GPU
    every step."""

    def __init__(self, decay: float, updates: int = 0) -> None:
        self.decay, self.updates = decay, updates

    @torch.no_grad()
    def __call__(self, ema: list[torch.Tensor], current: list[torch.Tensor], _: Any) -> None:
        n = self.updates
        torch._foreach_lerp_(ema, current, 1 - min(self.decay, (1 + n) / (10 + n)))
        self.updates += 1
