"""The data sets users have, read as streams of chunks (``Source``): the toys and digits
(``builtin``), MNIST IDX files (``idx``), CIFAR-10 binary batches (``cifar``), image folders
(``images``), ``.npz`` arrays (``npz``) and prepared Parquet files (``prepared``), chosen by
``data.name`` and ``data.path`` (``detect``), and the seeded train/val/test split
(``splitting``). Nothing is downloaded from the internet.

``open_source`` is the streaming way in (``prepare``); ``build`` reads a whole data set into
memory (``Dataset``) for the small data of tests and benchmarks.
"""

from __future__ import annotations

import numpy as np

from pipelines.config import DataConfig
from pipelines.data.sources.base import (
    Chunk,
    Dataset,
    Source,
    dequantise,
    noise_block_rows,
)
from pipelines.data.sources.detect import open_source
from pipelines.data.sources.splitting import SPLITS, assignment, split, split_indices

BUILD_CHUNK_ROWS = 4096


def build(cfg: DataConfig) -> Dataset:
    """The whole data set ``cfg`` names, in memory, with the values ``prepare`` writes."""
    with open_source(cfg) as src:
        parts = list(src.chunks(BUILD_CHUNK_ROWS))
        x = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False)
        return Dataset(x, labels, src.name, src.bins)


__all__ = [
    "SPLITS",
    "Chunk",
    "Dataset",
    "Source",
    "assignment",
    "build",
    "dequantise",
    "noise_block_rows",
    "open_source",
    "split",
    "split_indices",
]
