"""Helpers shared by the metric modules: every metric reads its batches the same way."""

from __future__ import annotations

import torch
from torch import Tensor


def _flat64(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _check_pair(name: str, a: Tensor, b: Tensor, *, same_n: bool = False) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{name}: sample shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if same_n and a.shape[0] != b.shape[0]:
        raise ValueError(f"{name}: needs paired batches, got {a.shape[0]} and {b.shape[0]} rows")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 samples on each side")
