"""Streaming a source into the prepared splits: every sample is assigned to a split first (a
seeded permutation, the one ``data.split`` uses), then the source is read a chunk at a time and
each chunk's rows go to their split's writer, so memory holds one chunk whatever the data set's
size; the moments of every value are merged chunk by chunk on the way."""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines import storage
from pipelines.config import DataConfig
from pipelines.data.parquet import SplitWriter, split_meta
from pipelines.data.sources import SPLITS, Source, assignment, noise_block_rows
from pipelines.errors import DataError

CHUNK_BYTES = 32 * 2**20
"""float32 bytes of one chunk read from the source: the stage's unit of memory"""


def chunk_rows(shape: tuple[int, ...]) -> int:
    """Samples per chunk: about ``CHUNK_BYTES``, a whole number of dequantisation-noise blocks
    where one fits (so no noise is drawn twice)."""
    dim = math.prod(shape)
    rows, block = max(1, CHUNK_BYTES // (4 * max(dim, 1))), noise_block_rows(dim)
    return rows - rows % block if rows >= block else rows


class Moments:
    """Mean and standard deviation of every value seen, merged chunk by chunk (Chan et al.'s
    pairwise update, in float64: no sum of squares that loses the variance)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        k = x.size
        if not k:
            return
        mean = float(x.mean(dtype=np.float64))
        m2 = float(np.square(x - np.float32(mean), dtype=np.float64).sum())
        total = self.n + k
        delta = mean - self.mean
        self.mean += delta * k / total
        self.m2 += m2 + delta * delta * self.n * k / total
        self.n = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0


def write_splits(
    src: Source, out: Path | storage.StorageUri, cfg: DataConfig
) -> tuple[dict[str, int], Moments]:
    """Stream ``src`` into ``out/{train,val,test}.parquet``: ``(rows per split, moments)``."""
    which = assignment(src.count, cfg)
    meta = split_meta(src.name, cfg.seed, src.bins)
    moments, start = Moments(), 0
    with ExitStack() as stack:
        writers = [
            stack.enter_context(SplitWriter(out / f"{name}.parquet", src.shape, meta))
            for name in SPLITS
        ]
        unit = "img" if len(src.shape) == 3 else "row"
        bar = stack.enter_context(tqdm(total=src.count, desc="preparing", unit=unit))
        for x, labels in src.chunks(chunk_rows(src.shape)):
            part = which[start : start + len(x)]
            if len(part) != len(x):
                raise DataError(f"{src.name}: more than the {src.count} samples it announced")
            for k, writer in enumerate(writers):
                keep = part == k
                if keep.any():
                    writer.append(x[keep], labels[keep])
            moments.add(x)
            start += len(x)
            bar.update(len(x))
        if start != src.count:
            raise DataError(f"{src.name}: read {start} samples of the {src.count} announced")
    counts = np.bincount(which, minlength=len(SPLITS))
    return {name: int(c) for name, c in zip(SPLITS, counts, strict=True)}, moments
