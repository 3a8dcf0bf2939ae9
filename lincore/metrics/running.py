"""Accumulators fed batch by batch, so that evaluation at scale holds one batch in memory and
still gives the numbers of the one-batch metrics."""

from __future__ import annotations

import torch
from torch import Tensor

from lincore.metrics._common import _flat64
from lincore.metrics.fidelity import psnr_from_mse


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
