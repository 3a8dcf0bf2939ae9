"""A folder of image files (PNG, JPEG...): CelebA's ``img_align_celeba``, or one sub-folder per
class (``cats/``, ``dogs/``: labels 0..K-1 in the sub-folders' name order).

The files are listed first (then put in a seeded random order) and the first image fixes the
shape; the rest are decoded a chunk at a time (in a few threads: Pillow decodes without the
GIL), so memory holds one chunk. Grey stays grey (1 channel) and colour is RGB (alpha dropped)
unless ``data.channels`` converts every image; ``data.image_size`` centre-crops each image to a
square, then resizes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipelines.data.sources.base import DiscreteSource
from pipelines.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""Pillow modes of one grey channel (with alpha or more bits); every other mode is colour"""
DEEP_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
"""16-bit grey: scaled to 8 bits"""


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder``, in path order; hidden files and folders (``.ipynb_checkpoints``,
    macOS ``._*`` files) skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def file_order(n: int, seed: int) -> np.ndarray:
    """The order the folder's ``n`` files (sorted by path) are read in: seeded, random."""
    return np.random.default_rng(seed).permutation(n)


def class_labels(folder: Path, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Labels from the first-level sub-folders when every image is in one and there are at least
    two of them; otherwise all -1 (unlabelled) and no class names."""
    tops = [p.relative_to(folder).parts for p in files]
    classes = sorted({parts[0] for parts in tops if len(parts) > 1})
    if len(classes) < 2 or any(len(parts) == 1 for parts in tops):
        return np.full(len(files), -1, dtype=np.int64), []
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[parts[0]] for parts in tops], dtype=np.int64), classes


def _channels(mode: str) -> int:
    return 1 if mode in GREY_MODES else 3


def _pixels(path: Path, channels: int, size: int) -> tuple[np.ndarray, int]:
    """``(levels (C, H, W) uint8, the file's own channel count)``: converted to ``channels``
    (0: the file's own), centre-cropped and resized to ``size`` (0: as it is)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # as a viewer shows it (phone photos)
            own = _channels(im.mode)
            if own == 1:
                if im.mode in DEEP_GREY:
                    deep = np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8
                    im = Image.fromarray(deep.astype(np.uint8))
                else:
                    im = im.convert("L")
                im = im.convert("RGB") if channels == 3 else im
            else:
                im = im.convert("L" if channels == 1 else "RGB")
            if size:
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side))
                if side != size:
                    im = im.resize((size, size), Image.Resampling.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {path} ({err}); remove or replace it") from None
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)), own


class ImageFolderSource(DiscreteSource):
    """The images under a folder, as (C, H, W) levels of 8 bits."""

    def __init__(self, path: Path, seed: int, *, image_size: int = 0, channels: int = 0) -> None:
        super().__init__(seed)
        self.name, self.image_size, self.channels = str(path), image_size, channels
        self.files = image_files(path)
        if not self.files:
            raise DataError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}; data.path takes "
                "an image folder, MNIST IDX files, CIFAR-10 binary batches, .npz or .parquet"
            )
        self.labels, self.classes = class_labels(path, self.files)
        # a seeded shuffle of the file order: sorted paths group the images by class, and each
        # split keeps its rows in source order while readers take a split's first rows
        # (validation batches, evaluation's fixed sample count), which must mix the classes
        order = file_order(len(self.files), seed)
        self.files = [self.files[i] for i in order]
        self.labels = self.labels[order]
        first, self.own = _pixels(self.files[0], channels, image_size)
        self.shape, self.count = first.shape, len(self.files)
        if not self.classes:
            self.note = (
                f"note: the images under {path} are not in class sub-folders: unlabelled, so "
                "evaluate skips the classifier Fréchet score"
            )

    def _check(self, path: Path, levels: np.ndarray, own: int) -> None:
        """Every image like the first, or a message naming the first one that differs."""
        first = self.files[0]
        if not self.channels and own != self.own:
            raise DataError(
                f"{path} has {own} channel(s) but {first} has {self.own}; set data.channels "
                "to 1 (grey) or 3 (RGB) to convert every image"
            )
        if levels.shape != self.shape:
            h, w = levels.shape[1:]
            raise DataError(
                f"{path} is {w}x{h} but {first} is {self.shape[2]}x{self.shape[1]}; set "
                "data.image_size to centre-crop and resize every image to one size"
            )

    def levels(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="lzr-images") as pool:
            for i in range(0, self.count, rows):
                files = self.files[i : i + rows]
                out = np.empty((len(files), *self.shape), dtype=np.uint8)
                read = pool.map(lambda p: _pixels(p, self.channels, self.image_size), files)
                for j, (path, (levels, own)) in enumerate(zip(files, read, strict=True)):
                    self._check(path, levels, own)
                    out[j] = levels
                yield out, self.labels[i : i + len(files)]
