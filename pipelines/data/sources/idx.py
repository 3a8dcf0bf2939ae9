"""MNIST-style IDX files (MNIST, Fashion-MNIST, EMNIST): ``*-images-idx3-ubyte`` (or ``.gz``),
each with its ``*-labels-idx1-ubyte`` next to it when there is one.

``data.path`` is one images file or a folder of them (train and t10k, read in name order). The
pixels are read in chunks (sequentially, which is all gzip allows); the labels, one byte per
image, are read whole.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from pipelines.data.sources.base import DiscreteSource
from pipelines.errors import DataError

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # unsigned bytes, 3 dimensions / 1 dimension
IMAGES_NAME = re.compile(r"images[-.]idx3-ubyte(\.gz)?$", re.IGNORECASE)


def is_idx_file(path: Path) -> bool:
    name = path.name.lower()
    return "idx3" in name or "idx1" in name or name.endswith((".idx", ".idx.gz"))


def images_in(folder: Path) -> list[Path]:
    """The IDX images files in ``folder``, sorted by name; of a file kept both plain and
    gzipped (after ``gunzip -k``), the plain one."""
    found = {p.name: p for p in folder.iterdir() if p.is_file() and IMAGES_NAME.search(p.name)}
    return sorted(
        p for name, p in found.items() if not (name.endswith(".gz") and name[:-3] in found)
    )


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read(f: IO[bytes], size: int, path: Path) -> bytes:
    try:
        return f.read(size)
    except (EOFError, OSError, zlib.error) as err:  # a cut or corrupt gzip stream
        raise DataError(f"{path} is truncated or corrupt ({err}); download it again") from None


def labels_for(images: Path) -> Path | None:
    """The labels file next to ``images`` (``images-idx3`` -> ``labels-idx1``, gzipped or not)."""
    name = re.sub(r"images([-.])idx3", r"labels\1idx1", images.name, flags=re.IGNORECASE)
    if name == images.name:
        return None
    plain = name[:-3] if name.lower().endswith(".gz") else name
    for candidate in (name, plain, plain + ".gz"):
        if (images.parent / candidate).is_file():
            return images.parent / candidate
    return None


def _header(path: Path) -> tuple[int, int, int]:
    with _open(path) as f:
        head = _read(f, 16, path)
    if len(head) >= 4 and struct.unpack(">I", head[:4])[0] == LABELS_MAGIC:
        raise DataError(
            f"{path} is an IDX labels file; point data.path at the images file "
            "(...-images-idx3-ubyte) or at its folder"
        )
    if len(head) < 16 or struct.unpack(">I", head[:4])[0] != IMAGES_MAGIC:
        raise DataError(f"{path} is not an MNIST IDX image file (magic number 2051 expected)")
    n, h, w = struct.unpack(">III", head[4:16])
    if not path.name.lower().endswith(".gz") and path.stat().st_size != 16 + n * h * w:
        raise DataError(
            f"{path} is truncated: {path.stat().st_size} bytes for {n} images of {h}x{w} "
            f"({16 + n * h * w} expected); download it again"
        )
    return n, h, w


def _labels(path: Path, images: Path, n: int) -> np.ndarray:
    with _open(path) as f:
        raw = _read(f, 8 + n + 1, path)
    if len(raw) < 8 or struct.unpack(">I", raw[:4])[0] != LABELS_MAGIC:
        raise DataError(f"{path} is not an IDX labels file (magic number 2049 expected)")
    (count,) = struct.unpack(">I", raw[4:8])
    if count != n:
        raise DataError(
            f"{path} has {count} labels but {images} has {n} images; "
            "keep each images file with its own labels file"
        )
    if len(raw) != 8 + n:
        raise DataError(
            f"{path} holds {len(raw) - 8} label bytes for its count of {n}; download it again"
        )
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)


class IdxSource(DiscreteSource):
    """One IDX images file or a folder of them, as (1, H, W) images with labels where a labels
    file is next to the images."""

    def __init__(self, path: Path, seed: int) -> None:
        super().__init__(seed)
        self.files = images_in(path) if path.is_dir() else [path]
        if not self.files:
            raise DataError(f"no IDX images files (*-images-idx3-ubyte[.gz]) in {path}")
        self.name = str(path)
        self.sizes, self.labels, missing = [], [], []
        size: tuple[int, int] | None = None
        for f in self.files:
            n, h, w = _header(f)
            if size is not None and (h, w) != size:
                raise DataError(
                    f"{f} holds {h}x{w} images but {self.files[0]} holds {size[0]}x{size[1]}; "
                    "keep one data set per folder"
                )
            size = (h, w)
            found = labels_for(f)
            self.labels.append(_labels(found, f, n) if found else np.full(n, -1, np.int64))
            if found is None:
                missing.append(f)
            self.sizes.append(n)
        assert size is not None
        self.shape, self.count = (1, *size), sum(self.sizes)
        if missing:
            self.note = (
                f"note: no labels file next to {', '.join(map(str, missing))} "
                "(...-labels-idx1-ubyte[.gz]): unlabelled, so evaluate skips the classifier "
                "Fréchet score"
            )

    def levels(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        per_image = self.shape[1] * self.shape[2]
        for path, n, labels in zip(self.files, self.sizes, self.labels, strict=True):
            with _open(path) as f:
                _read(f, 16, path)
                for i in range(0, n, rows):
                    k = min(rows, n - i)
                    raw = _read(f, k * per_image, path)
                    if len(raw) != k * per_image:
                        raise DataError(
                            f"{path} is truncated: it ends inside image {i + len(raw) // per_image}"
                            f" of {n}; download it again"
                        )
                    yield np.frombuffer(raw, np.uint8).reshape(k, *self.shape), labels[i : i + k]
