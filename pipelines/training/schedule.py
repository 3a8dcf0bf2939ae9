"""What changes with the step: the learning rate, and the moving average of the weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from pipelines.config import TrainConfig


def learning_rate(
    cfg: TrainConfig, epoch: int, step: int, steps: int, epochs: int, *, restart: int = 0
) -> float:
    """The step's learning rate: cosine from ``lr`` to 0 over the run, or constant. A function
    of the position alone (no scheduler state), so a resumed run continues the same curve.

    ``restart``: the step where the warm-up ends (``train.warmup``). The warm-up and the full
    objective then each get a cosine of their own, so the full objective, which alone trains
    the operator and the noise network, starts again from ``lr`` instead of near 0."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    at, total = epoch * steps + step, max(epochs * steps, 1)
    if not restart:
        progress = at / total
    elif at < restart:
        progress = at / restart
    else:
        progress = (at - restart) / max(total - restart, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


class EmaWithWarmup:
    """``multi_avg_fn`` for ``AveragedModel``: an EMA whose decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short run's average is not
    dominated by its first, untrained weights (torch's ``get_ema_multi_avg_fn`` has no warm-up).
    ``n`` is counted here, on the host: reading ``AveragedModel.n_averaged`` would sync a GPU
    every step.

    ``update_parameters(ema, model)`` is ``ema.update_parameters(model)`` without its two
    waits for the GPU per call (torch reads ``n_averaged`` on the host and copies it to the
    parameters' device); the training loop uses it."""

    def __init__(self, decay: float, updates: int = 0) -> None:
        self.decay, self.updates = decay, updates
        self.averaged = 0  # update_parameters calls so far (the first one copies); see resume

    def resume(self, ema: AveragedModel) -> None:
        """Continue the counts of a restored ``ema`` (its ``n_averaged`` is a CPU buffer)."""
        self.averaged = int(ema.n_averaged)
        self.updates = max(self.averaged - 1, 0)

    @torch.no_grad()
    def update_parameters(self, ema: AveragedModel, model: torch.nn.Module) -> None:
        """What ``ema.update_parameters(model)`` does for an ``AveragedModel`` built with this
        averager (the first call copies the weights, later ones average them, buffers are
        copied), with the count kept on the host."""
        averaged = [p.detach() for p in ema.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        if self.averaged == 0:
            torch._foreach_copy_(averaged, current)
        else:
            self(averaged, current, None)
        for mine, theirs in zip(ema.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
        self.averaged += 1
        ema.n_averaged += 1  # on the CPU (AveragedModel's default): no device work

    @torch.no_grad()
    def __call__(self, ema: list[torch.Tensor], current: list[torch.Tensor], _: Any) -> None:
        n = self.updates
        torch._foreach_lerp_(ema, current, 1 - min(self.decay, (1 + n) / (10 + n)))
        self.updates += 1
