"""The data sets that need no file: the 2-D toys (generated) and scikit-learn's 8x8 digits
(shipped inside the package). Both are small and held in memory."""

from __future__ import annotations

import numpy as np

from lincore.toys import toy
from pipelines.data.sources.base import Dataset, unlabelled


def toy_dataset(name: str, n: int, seed: int) -> Dataset:
    x = toy(name, n, seed=seed).numpy().astype(np.float32)
    return Dataset(x, unlabelled(len(x)), f"lincore.toys.{name}")


def digits(seed: int) -> Dataset:
    """1,797 8x8 digits, dequantised over their 17 grey levels with one draw for the whole set
    (the values every earlier prepared digits split has)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    levels = d.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), 17 grey levels 0..16
    # uniform dequantisation: a density on [0, 1]^64 (raw digits have constant pixels)
    u = np.random.default_rng(seed).random(levels.shape, dtype=np.float32)
    return Dataset(
        (levels + u) / 17.0, d.target.astype(np.int64), "sklearn.datasets.load_digits", bins=17
    )
