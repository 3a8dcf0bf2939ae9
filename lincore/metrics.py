"""Metrics that judge generators, with no downloaded weights.

Fidelity of the collapse (PSNR, max error), sample quality against held-out data (MMD with a
multi-scale RBF kernel, sliced Wasserstein, energy distance, Fréchet distance in features of a
classifier trained here), and invertibility of ``g``. Inputs are ``(N, ...)`` batches, flattened.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lincore.inn import Flow

BANDWIDTH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _flat64(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _check_pair(name: str, a: Tensor, b: Tensor, *, same_n: bool = False) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{name}: sample shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if same_n and a.shape[0] != b.shape[0]:
        raise ValueError(f"{name}: needs paired batches, got {a.shape[0]} and {b.shape[0]} rows")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 samples on each side")


def psnr(a: Tensor, b: Tensor, *, data_range: float = 1.0) -> float:
    """``10 log10(range^2 / MSE)`` between paired batches; ``inf`` when they are identical."""
    mse = float((_flat64(a) - _flat64(b)).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def max_error(a: Tensor, b: Tensor) -> float:
    """Largest absolute elementwise difference between paired batches."""
    return float((_flat64(a) - _flat64(b)).abs().max())


def median_bandwidths(reference: Tensor, scales: Sequence[float] = BANDWIDTH_SCALES) -> list[float]:
    """RBF bandwidths ``scale * median pairwise distance`` of the reference set.

    Fixing them from the held-out data (not the samples) makes MMD comparable across models.
    """
    x = _flat64(reference)[:1000]
    d = torch.cdist(x, x)
    med = float(d[torch.triu_indices(len(x), len(x), 1).unbind()].median())
    return [s * med for s in scales]


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """Differentiable ``MMD^2`` (biased V-statistic, sum of RBF kernels) in ``x``'s dtype: a
    training signal that two sample sets share a distribution."""
    a, b = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)

    def k(p: Tensor, q: Tensor) -> Tensor:
        d2 = torch.cdist(p, q).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths).mean()

    return k(a, a) + k(b, b) - 2 * k(a, b)


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None) -> float:
    """Maximum mean discrepancy with a sum of RBF kernels ``exp(-|a-b|^2 / (2 h^2))``.

    The biased (V-statistic) estimate, so identical sets give exactly 0; the square root of
    ``MMD^2`` is returned. ``bandwidths`` default to ``median_bandwidths(y)``.
    """
    _check_pair("mmd", x, y)
    hs = list(bandwidths) if bandwidths is not None else median_bandwidths(y)
    return math.sqrt(max(float(mmd2(_flat64(x), _flat64(y), hs)), 0.0))


def sliced_wasserstein(x: Tensor, y: Tensor, *, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance: the root mean ``W_2^2`` of 1-D projections.

    Directions are uniform on the sphere, drawn from ``seed`` (the same for every model compared).
    Unequal sample counts are matched by quantile interpolation.
    """
    _check_pair("sliced_wasserstein", x, y)
    a, b = _flat64(x), _flat64(y)
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    if len(pa) != len(pb):
        q = torch.linspace(0, 1, max(len(pa), len(pb)), dtype=torch.float64)
        pa, pb = torch.quantile(pa, q, dim=0), torch.quantile(pb, q, dim=0)
    return math.sqrt(float((pa - pb).pow(2).mean()))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic: 0 for identical sets, >= 0 always)."""
    _check_pair("energy_distance", x, y)
    a, b = _flat64(x), _flat64(y)
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def _sqrtm_psd(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(fx: Tensor, fy: Tensor) -> float:
    """``|mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x^1/2 C_y C_x^1/2)^1/2)`` of two feature sets.

    The 2-Wasserstein distance (squared) between Gaussians fitted to the features, as in FID,
    computed with symmetric square roots so that it is real and >= 0.
    """
    _check_pair("frechet_distance", fx, fy)
    a, b = _flat64(fx), _flat64(fy)
    mu = a.mean(0) - b.mean(0)
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(ca)
    cross = _sqrtm_psd(root_a @ cb @ root_a)
    return float(mu.pow(2).sum() + torch.trace(ca + cb - 2 * cross))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def roundtrip_error(g: Flow, x: Tensor, *, cond: float | None = None) -> float:
    """``max |g^-1(g(x)) - x|``: how far ``g`` is from an exact bijection at this precision."""
    return max_error(g.inverse(g(x, cond=cond), cond=cond), x)


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
    dim = e.shape[1]
    energy = e.pow(2).sum(1)
    lo, hi = chi2_quantile((1 - mass) / 2, dim), chi2_quantile((1 + mass) / 2, dim)
    inside = ((energy >= lo) & (energy <= hi)).double().mean()
    return {
        "median_energy": float(energy.median() / dim),
        "median_expected": chi2_quantile(0.5, dim) / dim,
        "inside_shell": float(inside),
    }


def outside_range(x: Tensor, low: float, high: float) -> float:
    """Fraction of the values of ``x`` outside ``[low, high]`` (the data's value range)."""
    return float(((x < low) | (x > high)).double().mean())
