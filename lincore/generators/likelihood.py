"""Likelihoods in the units papers report: bits per dimension, per bin for quantised data."""

from __future__ import annotations

import math

from torch import Tensor


def bits_per_dim(log_prob: Tensor, dim: int, *, bins: int | None = None) -> float:
    """Mean negative log-likelihood in bits per dimension.

    With ``bins`` (e.g. 256 for 8-bit images scaled to ``[0, 1]``) the density is converted to
    the usual per-bin scale, ``-log p + D log(bins)``; without it this is the continuous NLL (it
    can be negative for concentrated 2-D toys).
    """
    nll = -log_prob.mean().item()
    if bins is not None:
        nll += dim * math.log(bins)
    return nll / (dim * math.log(2))
