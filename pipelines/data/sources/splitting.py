"""The seeded train/val/test assignment, one for in-memory data and for streams alike: the
same seed and size give the same samples in each split, however the data are read."""

from __future__ import annotations

import numpy as np

from pipelines.config import DataConfig
from pipelines.data.sources.base import Dataset

SPLITS = ("train", "val", "test")


def split_indices(n: int, cfg: DataConfig) -> dict[str, np.ndarray]:
    """The sample indices of each split, in the order of a seeded permutation of ``0..n-1``:
    ``val`` takes ``max(1, round(val_fraction * n))`` of them, ``test`` likewise, ``train``
    the rest."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val, n_test = max(1, round(cfg.val_fraction * n)), max(1, round(cfg.test_fraction * n))
    return {
        "train": perm[n_val + n_test :],
        "val": perm[:n_val],
        "test": perm[n_val : n_val + n_test],
    }


def assignment(n: int, cfg: DataConfig) -> np.ndarray:
    """``(n,)`` int8: each sample's split, as its position in ``SPLITS``, for a stream that
    sends every sample where it belongs as it goes by."""
    which = np.empty(n, dtype=np.int8)
    parts = split_indices(n, cfg)
    for k, name in enumerate(SPLITS):
        which[parts[name]] = k
    return which


def split(ds: Dataset, cfg: DataConfig) -> dict[str, Dataset]:
    """A seeded shuffle of data in memory into train/val/test (rows in permutation order)."""
    return {
        k: Dataset(ds.x[i], ds.labels[i], ds.source, ds.bins)
        for k, i in split_indices(len(ds.x), cfg).items()
    }
