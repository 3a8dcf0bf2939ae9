"""How exactly one batch reproduces its pair: the collapse against the multi-step sampler
(PSNR, max error) and ``g`` against an exact bijection (round trip)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lincore.inn import Flow
from lincore.metrics._common import _flat64


def psnr(a: Tensor, b: Tensor, *, data_range: float = 1.0) -> float:
    """``10 log10(range^2 / MSE)`` between paired batches; ``inf`` when they are identical."""
    return psnr_from_mse(float((_flat64(a) - _flat64(b)).pow(2).mean()), data_range=data_range)


def psnr_from_mse(mse: float, *, data_range: float = 1.0) -> float:
    """``psnr`` of a mean squared error (``RunningError.mse``, accumulated batch by batch)."""
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def max_error(a: Tensor, b: Tensor) -> float:
    """Largest absolute elementwise difference between paired batches."""
    return float((_flat64(a) - _flat64(b)).abs().max())


@torch.no_grad()
def roundtrip_error(g: Flow, x: Tensor, *, cond: float | None = None) -> float:
    """``max |g^-1(g(x)) - x|``: how far ``g`` is from an exact bijection at this precision."""
    return max_error(g.inverse(g(x, cond=cond), cond=cond), x)
