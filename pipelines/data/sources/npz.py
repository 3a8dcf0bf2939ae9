"""A NumPy ``.npz`` file: samples ``x`` (or its first array) and labels ``y`` (optional).

``x`` is read row by row from inside the archive (an ``.npy`` member has a small header, then
the rows in order), so a large array never sits in memory whole. Image arrays are made
channel-first: (N, H, W) gets one channel, (N, H, W, C) is transposed when ``data.layout`` is
nhwc or (auto) looks channels-last. uint8 arrays are 8-bit levels, dequantised like images;
every other type is continuous data, taken as it is.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from pipelines.data.sources.base import Chunk, Source, dequantise, unlabelled
from pipelines.errors import DataError

CHANNELS = (1, 3, 4)
"""channel counts of images: what ``layout: auto`` looks for on the last axis"""


def _header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def channels_last(shape: tuple[int, ...], layout: str) -> bool:
    """Whether (N, a, b, c) images are (N, H, W, C): said so, or (auto) ``c`` is a channel
    count and ``a`` is not."""
    if layout == "auto":
        return len(shape) == 4 and shape[3] in CHANNELS and shape[1] not in CHANNELS
    return layout == "nhwc"


class NpzSource(Source):
    """The arrays of one ``.npz`` file."""

    def __init__(self, path: Path, seed: int, layout: str = "auto") -> None:
        self.name, self.path, self.seed = str(path), path, seed
        try:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith(".npy")]
                if not names:
                    raise DataError(
                        f"{path} holds no arrays; save the samples as x=... (and y=...)"
                    )
                self.member = "x.npy" if "x.npy" in names else names[0]
                with z.open(self.member) as f:
                    raw, self.fortran, self.dtype = _header(f)
            labels = None
            if "y.npy" in names and self.member != "y.npy":
                with np.load(path, allow_pickle=False) as arrays:
                    labels = np.asarray(arrays["y"])
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise DataError(f"{path} is not a readable .npz file ({err})") from None
        key = self.member[:-4]
        if self.dtype.hasobject or self.dtype.kind not in "biuf":
            raise DataError(f"{path}: array {key!r} holds {self.dtype}; save numbers")
        if len(raw) < 2 or raw[0] < 10:
            raise DataError(
                f"{path}: array {key!r} has shape {raw}; need at least 10 samples, as (N, D) "
                "vectors or (N, C, H, W) images"
            )
        self.raw_shape, self.count = tuple(raw), raw[0]
        self.nhwc = channels_last(self.raw_shape, layout)
        if layout == "nhwc" and len(raw) != 4:
            raise DataError(
                f"{path}: data.layout is nhwc but {key!r} has shape {raw}; nhwc needs "
                "(N, H, W, C) images"
            )
        if len(raw) == 3:
            self.shape = (1, *raw[1:])
        elif self.nhwc:
            self.shape = (raw[3], raw[1], raw[2])
        else:
            self.shape = tuple(raw[1:])
        self.bins = 256 if self.dtype == np.uint8 else 0
        self.labels = unlabelled(self.count) if labels is None else labels.astype(np.int64)
        if self.labels.shape != (self.count,):
            raise DataError(
                f"{path}: y has shape {self.labels.shape} for {self.count} samples in "
                f"{key!r}; save one label per sample"
            )
        if labels is None:
            self.note = (
                f"note: {path} has no y: unlabelled, so evaluate skips the classifier Fréchet score"
            )

    def _rows(self, rows: int) -> Iterator[np.ndarray]:
        """The raw rows of ``x``, ``rows`` at a time, in its own type and shape."""
        if self.fortran:  # column-major: rows are not contiguous, read it whole
            with np.load(self.path, allow_pickle=False) as arrays:
                x = arrays[self.member[:-4]]
            for i in range(0, self.count, rows):
                yield x[i : i + rows]
            return
        row_bytes = self.dtype.itemsize * int(np.prod(self.raw_shape[1:], dtype=np.int64))
        with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
            _header(f)
            for i in range(0, self.count, rows):
                k = min(rows, self.count - i)
                try:
                    raw = f.read(k * row_bytes)
                except (zipfile.BadZipFile, OSError, EOFError) as err:
                    raise DataError(f"{self.path} is corrupt ({err})") from None
                if len(raw) != k * row_bytes:
                    raise DataError(f"{self.path} is truncated inside sample {i}")
                yield np.frombuffer(raw, self.dtype).reshape(k, *self.raw_shape[1:])

    def chunks(self, rows: int) -> Iterator[Chunk]:
        start = 0
        for part in self._rows(rows):
            part = part.reshape(len(part), *self.shape) if len(self.raw_shape) == 3 else part
            part = part.transpose(0, 3, 1, 2) if self.nhwc else part
            if self.bins:
                x = dequantise(np.ascontiguousarray(part), start, self.bins, self.seed)
            else:
                x = np.ascontiguousarray(part, dtype=np.float32)
                if not np.isfinite(x).all():
                    raise DataError(f"{self.path} contains NaN or inf; clean the data first")
            yield x, self.labels[start : start + len(part)]
            start += len(part)
