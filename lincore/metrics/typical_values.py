"""Whether values lie where they should: inverted data in the shell where ``N(0, I)`` noise
lives, samples inside the data's value range. Both work from per-batch sums, so evaluation at
scale gives the one-batch numbers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lincore.metrics._common import _flat64


def chi2_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of a chi-squared law with ``dof`` degrees of freedom (float64 bisection
    of the regularised incomplete gamma function: exact for every ``dof``, no SciPy)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    k = torch.tensor(dof / 2, dtype=torch.float64)
    lo, hi = 0.0, float(dof + 40 * math.sqrt(2 * dof) + 100)
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(torch.special.gammainc(k, torch.tensor(mid / 2, dtype=torch.float64))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def typicality(noise: Tensor, *, mass: float = 0.99) -> dict[str, float]:
    """Is ``noise`` (rows, e.g. data inverted through a generator) typical of ``N(0, I_D)``?

    ``median_energy`` is the median ``|e|^2 / D`` (about 1 for Gaussian noise in high ``D``,
    ``1 +- sqrt(2/D)`` spread), next to ``median_expected``, its exact value for Gaussian noise
    (``chi2_D`` median over ``D``: 0.69 at ``D = 2``, 0.99 at ``D = 64``); ``inside_shell`` is
    the fraction of rows whose ``|e|^2`` lies in the central ``mass`` interval of the
    chi-squared law, the shell where Gaussian noise lives.
    """
    e = _flat64(noise)
    return typicality_from_energies(e.pow(2).sum(1), e.shape[1], mass=mass)


def typicality_from_energies(energies: Tensor, dim: int, *, mass: float = 0.99) -> dict[str, float]:
    """``typicality`` of rows whose squared norms ``|e|^2`` (one scalar per row, ``(N,)``) were
    computed batch by batch; ``dim`` is ``D``, the rows' size."""
    energy = energies.detach().reshape(-1).to(torch.float64)
    lo, hi = chi2_quantile((1 - mass) / 2, dim), chi2_quantile((1 + mass) / 2, dim)
    inside = ((energy >= lo) & (energy <= hi)).double().mean()
    return {
        "median_energy": float(energy.median() / dim),
        "median_expected": chi2_quantile(0.5, dim) / dim,
        "inside_shell": float(inside),
    }


def outside_range(x: Tensor, low: float, high: float) -> float:
    """Fraction of the values of ``x`` outside ``[low, high]`` (the data's value range)."""
    return outside_count(x, low, high) / x.numel()


def outside_count(x: Tensor, low: float, high: float) -> int:
    """How many values of ``x`` lie outside ``[low, high]`` (summed over batches, divided by
    the total count: ``outside_range`` of them all)."""
    return int(((x < low) | (x > high)).sum())
