"""Which source ``data.name`` and ``data.path`` name: a built-in data set, or a file or folder
recognised by its name and, for a folder, by what it holds (IDX files, CIFAR-10 batches, or
else images). A URI (``s3://...``) is copied to a temporary folder first and read from there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lincore.toys import TOYS
from pipelines import storage
from pipelines.config import DataConfig, resolve
from pipelines.data.sources import builtin, cifar, idx
from pipelines.data.sources.base import MemorySource, Source
from pipelines.data.sources.images import ImageFolderSource
from pipelines.data.sources.npz import NpzSource
from pipelines.data.sources.prepared import ParquetSource
from pipelines.errors import DataError

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")
MIN_SAMPLES = 10


def local_source(path: Path, cfg: DataConfig) -> Source:
    """The source of a local file or folder, by its name or contents."""
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; point it at a local file or folder")
    if path.is_dir():
        if idx.images_in(path):
            return idx.IdxSource(path, cfg.seed)
        if cifar.batches_in(path):
            return cifar.CifarSource(path, cfg.seed)
        return ImageFolderSource(path, cfg.seed, image_size=cfg.image_size, channels=cfg.channels)
    name = path.name.lower()
    if name.endswith(".npz"):
        return NpzSource(path, cfg.seed, cfg.layout)
    if name.endswith(".parquet"):
        return ParquetSource(path)
    if idx.is_idx_file(path):
        return idx.IdxSource(path, cfg.seed)
    if name.endswith(".bin"):
        return cifar.CifarSource(path, cfg.seed)
    if name.endswith(ARCHIVES):
        raise DataError(f"data.path {path} is an archive; extract it and point at the result")
    raise DataError(
        f"data.path {path}: unknown format; use .npz, .parquet, MNIST IDX files, CIFAR-10 "
        "binary batches (.bin) or an image folder"
    )


@contextmanager
def open_source(cfg: DataConfig) -> Iterator[Source]:
    """The source ``cfg`` names, checked to hold enough samples, open while the block runs (a
    URI's temporary copy lives that long)."""
    if cfg.name in TOYS:
        yield MemorySource(builtin.toy_dataset(cfg.name, cfg.n_samples, cfg.seed))
        return
    if cfg.name == "digits":
        yield MemorySource(builtin.digits(cfg.seed))
        return
    path = resolve(cfg.path)
    if not isinstance(path, storage.StorageUri):
        yield _checked(local_source(path, cfg))
        return
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; point it at a file or folder")
    with tempfile.TemporaryDirectory(prefix="lzr-data-") as folder:
        local = storage.download(path, Path(folder))
        src = local_source(local, cfg)
        src.name, src.note = str(path), src.note.replace(str(local), str(path))
        yield _checked(src)


def _checked(src: Source) -> Source:
    if src.count < MIN_SAMPLES:
        raise DataError(f"{src.name}: need at least {MIN_SAMPLES} samples, got {src.count}")
    return src
