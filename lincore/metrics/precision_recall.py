"""k-NN precision and recall (Kynkäänniemi et al. 2019): do samples look real, do they cover it.

Each set's manifold is the union of balls around its points, each of radius the distance to its
``k``-th nearest neighbour in the same set. Precision is the share of generated points inside
the real manifold; recall the share of real points inside the generated one. Two numbers where
one distance mixes both failures: blurry means fall outside (low precision), a generator stuck
on a few modes covers little (low recall).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lincore.metrics._common import _check_pair, _flat64
from lincore.metrics.sample_distances import distances


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row of ``x`` to its ``k``-th nearest other row."""
    if not 1 <= k < len(x):
        raise ValueError(f"k must be in 1..{len(x) - 1} for {len(x)} points, got {k}")
    d = distances(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 1st is the point itself, at 0


def coverage_share(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Share of ``points`` within ``radii[j]`` of some ``centres[j]``."""
    inside = (distances(points, centres) <= radii[None, :]).any(dim=1)
    return inside.double().mean().item()


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> dict[str, float]:
    """``{"precision", "recall"}`` of ``fake`` against ``real``, in the space the rows live in
    (pixels, flattened). Both sets should have the same size, as in the paper."""
    _check_pair("precision_recall", real, fake)
    real, fake = _flat64(real), _flat64(fake)
    with torch.no_grad():
        return {
            "precision": coverage_share(fake, real, knn_radii(real, k)),
            "recall": coverage_share(real, fake, knn_radii(fake, k)),
        }
