"""Metrics that judge generators, with no downloaded weights.

Fidelity of the collapse (PSNR, max error), sample quality against held-out data (MMD with a
multi-scale RBF kernel, sliced Wasserstein, energy distance, Fréchet distance in features of a
classifier trained here), and invertibility of ``g``. Inputs are ``(N, ...)`` batches, flattened.

Evaluation at scale holds no ``N x N`` matrix: MMD and energy distance sum their kernels
``block`` rows at a time (peak memory ``O(block^2 + N D)``), the Fréchet distance takes
``RunningMoments`` accumulated batch by batch, and ``RunningError`` and
``typicality_from_energies`` turn per-batch errors and noise energies into the same numbers
the one-batch functions give.
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
BLOCK = 1024
"""Rows per block of the kernel sums (``mmd``, ``energy_distance``): ``BLOCK^2`` distances at
a time."""


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
    return psnr_from_mse(float((_flat64(a) - _flat64(b)).pow(2).mean()), data_range=data_range)


def psnr_from_mse(mse: float, *, data_range: float = 1.0) -> float:
    """``psnr`` of a mean squared error (``RunningError.mse``, accumulated batch by batch)."""
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def max_error(a: Tensor, b: Tensor) -> float:
    """Largest absolute elementwise difference between paired batches."""
    return float((_flat64(a) - _flat64(b)).abs().max())


class RunningError:
    """Squared-error sum and largest absolute error of paired batches, ``update`` by ``update``:
    ``psnr`` and ``max_error`` of the whole (concatenated) batches, one batch in memory."""

    def __init__(self) -> None:
        self.count = 0
        self._sse: Tensor | None = None  # float64 sums on the batches' device: no host sync
        self._max: Tensor | None = None

    def update(self, a: Tensor, b: Tensor) -> RunningError:
        d = _flat64(a) - _flat64(b)
        sse, top = d.pow(2).sum(), d.abs().max()
        self._sse = sse if self._sse is None else self._sse + sse
        self._max = top if self._max is None else torch.maximum(self._max, top)
        self.count += d.numel()
        return self

    @property
    def mse(self) -> float:
        if self._sse is None:
            raise ValueError("RunningError: no batch seen")
        return float(self._sse) / self.count

    @property
    def max(self) -> float:
        if self._max is None:
            raise ValueError("RunningError: no batch seen")
        return float(self._max)

    def psnr(self, *, data_range: float = 1.0) -> float:
        return psnr_from_mse(self.mse, data_range=data_range)


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


class RunningMoments:
    """Mean and (unbiased, ``torch.cov``'s) covariance of feature rows seen batch by batch.

    Float64, merged with Chan et al.'s pairwise update (each batch's centred scatter plus the
    shift of its mean), so a large offset does not cancel as in raw ``sum x x^T`` sums; memory
    ``O(F^2)`` whatever the row count. ``frechet_distance`` takes it in place of the rows.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: Tensor | None = None
        self._scatter: Tensor | None = None  # sum of (x - mean)(x - mean)^T

    def update(self, features: Tensor) -> RunningMoments:
        x = _flat64(features)
        k = x.shape[0]
        if k == 0:
            return self
        mean = x.mean(0)
        centred = x - mean
        scatter = centred.T @ centred
        if self._mean is None or self._scatter is None:
            self._mean, self._scatter = mean, scatter
        else:
            if mean.shape != self._mean.shape:
                raise ValueError(f"RunningMoments: {x.shape[1]} features after {len(self._mean)}")
            total = self.count + k
            delta = mean.to(self._mean.device) - self._mean
            self._mean = self._mean + delta * (k / total)
            shift = torch.outer(delta, delta) * (self.count * k / total)
            self._scatter = self._scatter + scatter.to(self._scatter.device) + shift
        self.count += k
        return self

    @property
    def mean(self) -> Tensor:
        if self._mean is None:
            raise ValueError("RunningMoments: no rows seen")
        return self._mean

    @property
    def cov(self) -> Tensor:
        if self._scatter is None or self.count < 2:
            raise ValueError("RunningMoments: the covariance needs at least 2 rows")
        return self._scatter / (self.count - 1)


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
