"""Timed training with a progress bar, for the commands that train in the driver process."""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from lincore.fit import fit


def fit_for(
    model: torch.nn.Module,
    data: torch.Tensor,
    *,
    seconds: float,
    lr: float,
    batch_size: int,
    label: str,
    seed: int = 0,
) -> tuple[int, float]:
    """``lincore.fit.fit`` for ``seconds`` of wall clock; returns ``(steps, seconds)``."""
    t0 = time.perf_counter()
    with tqdm(desc=label, unit="step", leave=False, mininterval=1.0) as bar:
        step = lambda i, loss: bar.update(1)  # noqa: E731
        losses = fit(
            model, data, seconds=seconds, batch_size=batch_size, lr=lr, seed=seed, on_step=step
        )
    return len(losses), time.perf_counter() - t0
