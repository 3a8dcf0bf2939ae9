"""How far a generator's samples are from held-out data, with no downloaded weights: MMD with a
multi-scale RBF kernel, sliced Wasserstein, energy distance, and the Fréchet distance in
features of a classifier trained here. Inputs are ``(N, ...)`` batches, flattened.

At scale no ``N x N`` matrix is held: MMD and energy distance sum their kernels ``block`` rows
at a time (peak memory ``O(block^2 + N D)``), and the Fréchet distance takes
``RunningMoments`` accumulated batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lincore.metrics._common import _check_pair, _flat64
from lincore.metrics.running import RunningMoments

BANDWIDTH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
BLOCK = 1024
"""Rows per block of the kernel sums (``mmd``, ``energy_distance``): ``BLOCK^2`` distances at
a time."""


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


NEAR = 1e-6
"""``distances`` recomputes the pairs with ``|a - b|^2 < NEAR (|a|^2 + |b|^2)`` exactly."""


def distances(a: Tensor, b: Tensor) -> Tensor:
    """``|a_i - b_j|`` between the rows of two float64 matrices, as ``torch.cdist`` computes
    them (from ``|a|^2 + |b|^2 - 2 a.b``, a matrix product, for large blocks), except for the
    pairs that formula cannot resolve: its round-off, of order ``eps (|a|^2 + |b|^2)``, puts a
    duplicate pair at about ``sqrt(eps) |a|`` instead of 0, and which pairs it hits depends on
    the block sizes. Those (``|a - b|^2 < NEAR (|a|^2 + |b|^2)``: duplicates and near ones, few)
    are recomputed from their differences, ``len(a)`` pairs at a time: the result is the same
    whatever the blocks, and 0 for equal rows."""
    d = torch.cdist(a, b)
    scale = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None]
    near = (d.pow(2) < NEAR * scale).nonzero()
    for k in range(0, len(near), max(len(a), 1)):
        i, j = near[k : k + len(a)].unbind(1)
        d[i, j] = (a[i] - b[j]).norm(dim=1)
    return d


def pair_mean(
    x: Tensor, y: Tensor, fn: Callable[[Tensor], Tensor], *, block: int = BLOCK
) -> Tensor:
    """``mean_ij fn(D)_ij`` over the distances ``D_ij = |x_i - y_j|`` (``distances``, float64),
    summed ``block x block`` at a time: a 0-dim float64 tensor on ``x``'s device, and never an
    ``(N, M)`` matrix in memory. ``fn`` maps a block of distances elementwise. ``y``'s blocks
    are moved to ``x``'s device."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], block):
        a = _flat64(x[i : i + block])
        for j in range(0, y.shape[0], block):
            total = total + fn(distances(a, _flat64(y[j : j + block]).to(a.device))).sum()
    return total / (x.shape[0] * y.shape[0])


def mmd(
    x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None, *, block: int = BLOCK
) -> float:
    """Maximum mean discrepancy with a sum of RBF kernels ``exp(-|a-b|^2 / (2 h^2))``.

    The biased (V-statistic) estimate, so identical sets give exactly 0; the square root of
    ``MMD^2`` is returned. ``bandwidths`` default to ``median_bandwidths(y)``. The kernel sums
    run ``block`` rows at a time in float64 (``mmd2``'s value, without its ``N x M`` matrices).
    """
    _check_pair("mmd", x, y)
    hs = list(bandwidths) if bandwidths is not None else median_bandwidths(y)

    def kernel(d: Tensor) -> Tensor:
        d2 = d.pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs)

    def k(p: Tensor, q: Tensor) -> Tensor:
        return pair_mean(p, q, kernel, block=block)

    return math.sqrt(max(float(k(x, x) + k(y, y) - 2 * k(x, y)), 0.0))


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, projections: int = 256, seed: int = 0, block: int = BLOCK
) -> float:
    """Sliced 2-Wasserstein distance: the root mean ``W_2^2`` of 1-D projections.

    Directions are uniform on the sphere, drawn on the CPU from ``seed`` (the same for every
    model compared, on any device). Unequal sample counts are matched by quantile
    interpolation. Rows are projected ``block`` at a time (float64 copies of one block only).
    """
    _check_pair("sliced_wasserstein", x, y)
    gen = torch.Generator().manual_seed(seed)
    dim = math.prod(x.shape[1:])
    theta = torch.randn(dim, projections, generator=gen, dtype=torch.float64).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)

    def projected(v: Tensor) -> Tensor:
        parts = [
            _flat64(v[i : i + block]).to(theta.device) @ theta for i in range(0, len(v), block)
        ]
        return torch.cat(parts).sort(0).values

    pa, pb = projected(x), projected(y)
    if len(pa) != len(pb):
        q = torch.linspace(0, 1, max(len(pa), len(pb)), dtype=torch.float64, device=pa.device)
        pa, pb = torch.quantile(pa, q, dim=0), torch.quantile(pb, q, dim=0)
    return math.sqrt(float((pa - pb).pow(2).mean()))


def energy_distance(x: Tensor, y: Tensor, *, block: int = BLOCK) -> float:
    """``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic: 0 for identical sets, >= 0 always), the
    distance sums taken ``block`` rows at a time in float64 (no ``N x M`` matrix)."""
    _check_pair("energy_distance", x, y)

    def e(p: Tensor, q: Tensor) -> Tensor:
        return pair_mean(p, q, lambda d: d, block=block)

    return float(2 * e(x, y) - e(x, x) - e(y, y))


def _sqrtm_psd(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _moments(name: str, f: Tensor | RunningMoments) -> tuple[Tensor, Tensor]:
    """``(mean, covariance)`` of feature rows or of their running moments."""
    if isinstance(f, RunningMoments):
        if f.count < 2:
            raise ValueError(f"{name}: needs at least 2 samples on each side")
        return f.mean, f.cov
    a = _flat64(f)
    return a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1)


def frechet_distance(fx: Tensor | RunningMoments, fy: Tensor | RunningMoments) -> float:
    """``|mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x^1/2 C_y C_x^1/2)^1/2)`` of two feature sets.

    The 2-Wasserstein distance (squared) between Gaussians fitted to the features, as in FID,
    computed with symmetric square roots so that it is real and >= 0. Either side may be
    feature rows or their ``RunningMoments`` (accumulated batch by batch).
    """
    if isinstance(fx, Tensor) and isinstance(fy, Tensor):
        _check_pair("frechet_distance", fx, fy)
    mu_a, ca = _moments("frechet_distance", fx)
    mu_b, cb = _moments("frechet_distance", fy)
    if ca.shape != cb.shape:
        raise ValueError(f"frechet_distance: {len(ca)} features vs {len(cb)}")
    mu_b, cb = mu_b.to(mu_a.device), cb.to(ca.device)
    mu = mu_a - mu_b
    root_a = _sqrtm_psd(ca)
    cross = _sqrtm_psd(root_a @ cb @ root_a)
    return float(mu.pow(2).sum() + torch.trace(ca + cb - 2 * cross))
