"""Data sets in, Parquet out: the one data contract of the pipeline.

A prepared split is a Parquet file with one row per sample: ``x``, a fixed-size list of float32
(the flattened sample), and ``label`` (int64, -1 when unlabelled); the schema metadata carries
``shape``, ``value_range``, ``source``, ``seed`` and ``bins`` (grey levels of dequantised discrete
data; 0 for continuous data). Nothing is downloaded from the internet: toys are generated,
digits ship inside scikit-learn, everything else comes from a local path or from a URI
(``s3://``, ``gs://``, ``file://``) on the user's own storage, read through ``pyarrow.fs``.
Prepared splits may live at a URI too (``write_split``/``read_split``).
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lincore.toys import TOYS, toy
from pipelines.common import storage
from pipelines.common.config import DataConfig, resolve
from pipelines.common.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (N, *shape) float32
    labels: np.ndarray  # (N,) int64, -1 when unlabelled
    source: str
    bins: int = 0
    """grey levels of the discrete data before uniform dequantisation (0: continuous data), so
    that bits/dim is stated per bin like published MNIST/CIFAR figures"""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    levels = d.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), 17 grey levels 0..16
    # uniform dequantisation: a density on [0, 1]^64 (raw digits have constant pixels)
    u = np.random.default_rng(seed).random(levels.shape, dtype=np.float32)
    return Dataset(
        (levels + u) / 17.0, d.target.astype(np.int64), "sklearn.datasets.load_digits", bins=17
    )


def _npz(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as f:
        keys = list(f.keys())
        if not keys:
            raise DataError(f"{path} holds no arrays; save the samples as x=... (and y=...)")
        x = f["x"] if "x" in f else f[keys[0]]
        y = f["y"] if "y" in f else np.full(len(x), -1)
    return Dataset(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64), str(path))


def _idx(path: Path) -> Dataset:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 16 or struct.unpack(">I", raw[:4])[0] != 2051:
        raise DataError(f"{path} is not an MNIST IDX image file (magic number 2051 expected)")
    n, h, w = struct.unpack(">III", raw[4:16])
    if len(raw) != 16 + n * h * w:
        raise DataError(f"{path} is truncated: {len(raw)} bytes for {n} images of {h}x{w}")
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, h, w).astype(np.float32) / 255.0
    return Dataset(x, np.full(n, -1, dtype=np.int64), str(path))


def _image_folder(path: Path, size: int) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
    images = []
    for p in tqdm(files, desc="reading images", unit="img"):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size:
                    im = im.resize((size, size))
                images.append(np.asarray(im, dtype=np.float32) / 255.0)
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"cannot read image {p}: {err}") from None
    if len({a.shape for a in images}) != 1:
        raise DataError(f"images under {path} differ in size; set data.image_size to resize them")
    x = np.stack(images).transpose(0, 3, 1, 2)
    return Dataset(x, np.full(len(x), -1, dtype=np.int64), str(path))


def _from_path(cfg: DataConfig) -> Dataset:
    path = resolve(cfg.path)
    if isinstance(path, storage.StorageUri):
        if not path.exists():
            raise DataError(f"data.path {path} does not exist; point it at a file or folder")
        with tempfile.TemporaryDirectory(prefix="lzr-data-") as folder:
            local = storage.download(path, Path(folder))  # then read as any local data set
            ds = _from_local_path(local, cfg)
            return Dataset(ds.x, ds.labels, str(path), ds.bins)
    return _from_local_path(path, cfg)


def _from_local_path(path: Path, cfg: DataConfig) -> Dataset:
    if not path.exists():
        raise DataError(f"data.path {path} does not exist; point it at a local file or folder")
    if path.is_dir():
        return _image_folder(path, cfg.image_size)
    name = path.name.lower()
    if name.endswith(".npz"):
        return _npz(path)
    if name.endswith(".parquet"):
        from pipelines.common.data.parquet import read_split

        x, y, _ = read_split(path)
        return Dataset(x, y, str(path))
    if "idx3" in name or name.endswith((".idx", ".idx.gz")):
        return _idx(path)
    raise DataError(
        f"data.path {path}: unknown format; "
        "use .npz, .parquet, an MNIST IDX file or an image folder"
    )


def build(cfg: DataConfig) -> Dataset:
    """The samples named by ``data.name`` (validated in ``pipelines.common.config``)."""
    if cfg.name in TOYS:
        x = toy(cfg.name, cfg.n_samples, seed=cfg.seed).numpy().astype(np.float32)
        return Dataset(x, np.full(len(x), -1, dtype=np.int64), f"lincore.toys.{cfg.name}")
    if cfg.name == "digits":
        return _digits(cfg.seed)
    ds = _from_path(cfg)
    if ds.x.ndim < 2 or len(ds.x) < 10:
        raise DataError(f"{ds.source}: need at least 10 samples, got shape {ds.x.shape}")
    if not np.isfinite(ds.x).all():
        raise DataError(f"{ds.source} contains NaN or inf; clean the data first")
    return ds


def split(ds: Dataset, cfg: DataConfig) -> dict[str, Dataset]:
    """A seeded shuffle into train/val/test."""
    n = len(ds.x)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val, n_test = max(1, round(cfg.val_fraction * n)), max(1, round(cfg.test_fraction * n))
    parts = {
        "train": perm[n_val + n_test :],
        "val": perm[:n_val],
        "test": perm[n_val : n_val + n_test],
    }
    return {k: Dataset(ds.x[i], ds.labels[i], ds.source, ds.bins) for k, i in parts.items()}
