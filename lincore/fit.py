"""A plain single-process training loop, for benchmarks, demos and tests.

The pipeline trains through Ray Train (DDP, checkpoints); this is the same objective with none of
that, so that ``lincore`` stays usable on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lincore._checks import check_int


def fit(
    model: nn.Module,
    data: Tensor,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Adam on ``model(batch)["loss"]`` for ``steps`` steps or ``seconds`` of wall clock.

    Batches are drawn with replacement from ``data`` with a seeded generator; returns the losses.
    Stops with a ``FloatingPointError`` naming the step if the loss stops being finite.
    """
    if (steps is None) == (seconds is None):
        raise ValueError("give exactly one of steps= or seconds=")
    if steps is not None:
        check_int("steps", steps, low=1)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    while (steps is not None and step < steps) or (
        seconds is not None and time.perf_counter() - start < seconds
    ):
        batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
        loss = model(batch)["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {step}; lower the learning rate ({lr})"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        step += 1
    return losses
