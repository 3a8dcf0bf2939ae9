"""The data sources users have on disk (MNIST IDX, CIFAR-10 batches, image folders, .npz),
streamed by ``prepare`` into the Parquet splits: labels kept, 8-bit levels dequantised over 256
bins, the same split as in memory, the same bytes for the same seed, memory bounded by a chunk.
Every file is written here, small."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines import data
from pipelines.config import DataConfig
from pipelines.data import parquet, preparing
from pipelines.data.sources import dequantise, noise_block_rows
from pipelines.data.sources.images import file_order
from pipelines.stages import prepare

RNG = np.random.default_rng(7)


def write_idx(
    folder: Path, prefix: str, levels: np.ndarray, labels: np.ndarray | None, *, gz: bool = False
) -> Path:
    """``{prefix}-images-idx3-ubyte`` (and its labels file when given), gzipped or not."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = levels.shape
    images = np.array([2051, n, h, w], dtype=">u4").tobytes() + levels.astype(np.uint8).tobytes()
    files = {f"{prefix}-images-idx3-ubyte": images}
    if labels is not None:
        head = np.array([2049, len(labels)], dtype=">u4").tobytes()
        files[f"{prefix}-labels-idx1-ubyte"] = head + labels.astype(np.uint8).tobytes()
    for name, raw in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder / (f"{prefix}-images-idx3-ubyte" + (".gz" if gz else ""))


def write_cifar(path: Path, levels: np.ndarray, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = np.concatenate([labels[:, None], levels.reshape(len(levels), -1)], axis=1)
    path.write_bytes(records.astype(np.uint8).tobytes())
    return path


def run_prepare(tmp: Path, name: str = "o", **data_keys: object) -> Path:
    """``prepare`` on ``data_keys`` (``data.name: path`` unless given) into ``tmp/name``."""
    params = tmp / f"params-{name}.yaml"
    params.write_text(yaml.safe_dump({"data": {"name": "path", **data_keys}}))
    prepare.main(["--params", str(params), "--out", str(tmp / name)])
    return tmp / name


def split_rows(out: Path, cfg: DataConfig, n: int, levels: np.ndarray, labels: np.ndarray):
    """Each split's rows against the source's: prepare keeps source order within a split."""
    for name, idx in data.split_indices(n, cfg).items():
        x, y, meta = data.read_split(out / f"{name}.parquet")
        order = np.sort(idx)
        yield name, x, y, meta, levels[order], labels[order]


def levels_of(x: np.ndarray) -> np.ndarray:
    return np.floor(x * 256).astype(np.int64)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_an_idx_pair_keeps_its_labels_and_levels(tmp_path, gz):
    levels = RNG.integers(0, 256, (40, 28, 28))
    labels = RNG.integers(0, 10, 40)
    images = write_idx(tmp_path / "mnist", "train", levels, labels, gz=gz)
    out = run_prepare(tmp_path, path=str(images))
    rows = 0
    for _, x, y, meta, want, want_labels in split_rows(out, DataConfig(), 40, levels, labels):
        assert x.shape[1:] == (1, 28, 28) and meta["bins"] == "256"
        assert x.min() > 0 and x.max() < 1, "dequantised into (0, 1)"
        assert np.array_equal(levels_of(x)[:, 0], want), "each value stays in its grey level"
        assert np.array_equal(y, want_labels)
        rows += len(x)
    assert rows == 40
    stats = json.loads((out / "stats.json").read_text())
    assert stats["source"] == str(images) and stats["shape"] == [1, 28, 28]


def test_an_idx_folder_reads_every_images_file_in_name_order(tmp_path):
    folder = tmp_path / "fashion"
    train, t10k = RNG.integers(0, 256, (30, 6, 6)), RNG.integers(0, 256, (12, 6, 6))
    write_idx(folder, "train", train, np.full(30, 1))
    write_idx(folder, "train", train, np.full(30, 1), gz=True)  # `gunzip -k` leaves both
    write_idx(folder, "t10k", t10k, np.full(12, 2), gz=True)
    ds = data.build(DataConfig(name="path", path=str(folder)))
    assert ds.shape == (1, 6, 6) and ds.bins == 256 and ds.source == str(folder)
    assert np.array_equal(ds.labels, [2] * 12 + [1] * 30), "t10k, then train; no copy read twice"
    assert np.array_equal(levels_of(ds.x)[:, 0], np.concatenate([t10k, train]))


def test_cifar_batches_a_folder_or_one_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    levels = RNG.integers(0, 256, (25, 3, 32, 32))
    labels = RNG.integers(0, 10, 25)
    write_cifar(folder / "data_batch_1.bin", levels[:10], labels[:10])
    write_cifar(folder / "data_batch_2.bin", levels[10:20], labels[10:20])
    write_cifar(folder / "test_batch.bin", levels[20:], labels[20:])
    (folder / "batches.meta.txt").write_text("airplane\n")
    out = run_prepare(tmp_path, path=str(folder))
    for _, x, y, meta, want, want_labels in split_rows(out, DataConfig(), 25, levels, labels):
        assert x.shape[1:] == (3, 32, 32) and meta["bins"] == "256"
        assert np.array_equal(levels_of(x), want) and np.array_equal(y, want_labels)
    one = data.build(DataConfig(name="path", path=str(folder / "data_batch_2.bin")))
    assert np.array_equal(one.labels, labels[10:20])
    assert np.array_equal(levels_of(one.x), levels[10:20])


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_a_folder_of_grey_images_stays_one_channel(tmp_path):
    levels = RNG.integers(0, 256, (12, 9, 7)).astype(np.uint8)
    for i, a in enumerate(levels):
        _save(tmp_path / "grey" / f"{i:02d}.png", Image.fromarray(a))
    (tmp_path / "grey" / "README.md").write_text("not an image")
    out = run_prepare(tmp_path, path=str(tmp_path / "grey"))
    labels = np.full(12, -1)
    read = levels[file_order(12, DataConfig().seed)]  # files are read in a seeded random order
    for _, x, y, meta, want, _ in split_rows(out, DataConfig(), 12, read, labels):
        assert x.shape[1:] == (1, 9, 7) and meta["bins"] == "256"
        assert np.array_equal(levels_of(x)[:, 0], want) and (y == -1).all()


def test_class_sub_folders_give_labels_in_name_order(tmp_path):
    root = tmp_path / "pets"
    colours = {"dogs": (0, 0, 250), "cats": (250, 0, 0), "owls": (0, 250, 0)}
    for name, colour in colours.items():
        for i in range(4):
            _save(root / name / f"{i}.jpg", Image.new("RGB", (8, 8), colour))
    ds = data.build(DataConfig(name="path", path=str(root)))
    assert ds.shape == (3, 8, 8)
    assert np.bincount(ds.labels).tolist() == [4, 4, 4]
    assert not np.array_equal(ds.labels, np.sort(ds.labels)), "read in a mixed order"
    colour_of = np.argmax(ds.x.mean(axis=(2, 3)), axis=1)  # 0 red, 1 green, 2 blue
    assert np.array_equal(colour_of, np.array([0, 2, 1])[ds.labels]), "cats, dogs, owls"


def test_image_size_centre_crops_then_resizes(tmp_path):
    """CelebA's 178x218: the centre 178x178 square is kept, the margins above and below go."""
    a = np.zeros((218, 178, 3), dtype=np.uint8)
    a[:, :] = (200, 0, 0)  # margins: red
    a[20:198, :] = (0, 200, 0)  # the centre square: green
    for i in range(10):
        _save(tmp_path / "celeba" / f"{i:06d}.jpg", Image.fromarray(a).convert("RGB"))
        _save(tmp_path / "celeba_png" / f"{i:06d}.png", Image.fromarray(a))
    ds = data.build(DataConfig(name="path", path=str(tmp_path / "celeba_png"), image_size=64))
    assert ds.shape == (3, 64, 64)
    assert (levels_of(ds.x) == np.array([0, 200, 0])[None, :, None, None]).all()
    jpg = data.build(DataConfig(name="path", path=str(tmp_path / "celeba"), image_size=32))
    mean = jpg.x.mean(axis=(0, 2, 3))
    assert jpg.shape == (3, 32, 32) and mean[1] > 0.7 and mean[0] < 0.05


def test_image_modes_and_data_channels(tmp_path):
    grey = RNG.integers(0, 256, (6, 5)).astype(np.uint8)
    deep = grey.astype(np.uint16) * 256 + 255  # 16-bit grey: scaled to its top 8 bits
    _save(tmp_path / "la" / "a.png", Image.fromarray(grey).convert("LA"))
    _save(tmp_path / "la" / "b.png", Image.fromarray(deep))
    for i in range(8):
        _save(tmp_path / "la" / f"c{i}.png", Image.fromarray(grey))
    ds = data.build(DataConfig(name="path", path=str(tmp_path / "la")))
    assert ds.shape == (1, 6, 5) and (levels_of(ds.x)[:, 0] == grey).all()
    rgb = data.build(DataConfig(name="path", path=str(tmp_path / "la"), channels=3))
    assert rgb.shape == (3, 6, 5) and (levels_of(rgb.x) == grey).all()
    for i in range(10):
        _save(tmp_path / "rgba" / f"{i}.png", Image.new("RGBA", (4, 4), (10, 20, 30, 0)))
    ds = data.build(DataConfig(name="path", path=str(tmp_path / "rgba")))
    assert ds.shape == (3, 4, 4), "alpha dropped"
    assert (levels_of(ds.x) == np.array([10, 20, 30])[None, :, None, None]).all()
    one = data.build(DataConfig(name="path", path=str(tmp_path / "rgba"), channels=1))
    assert one.shape == (1, 4, 4)


def test_npz_layouts(tmp_path):
    nhwc = RNG.integers(0, 256, (12, 8, 6, 3)).astype(np.uint8)
    np.savez(tmp_path / "hwc.npz", x=nhwc, y=np.arange(12))
    ds = data.build(DataConfig(name="path", path=str(tmp_path / "hwc.npz")))
    assert ds.shape == (3, 8, 6) and ds.bins == 256 and np.array_equal(ds.labels, range(12))
    assert np.array_equal(levels_of(ds.x), nhwc.transpose(0, 3, 1, 2))
    # (N, 3, 8, 3): auto cannot tell, so channels-first; data.layout says otherwise
    square = RNG.integers(0, 256, (12, 3, 8, 3)).astype(np.uint8)
    np.savez_compressed(tmp_path / "ambiguous.npz", square)
    path = str(tmp_path / "ambiguous.npz")
    assert data.build(DataConfig(name="path", path=path)).shape == (3, 8, 3)
    hwc = data.build(DataConfig(name="path", path=path, layout="nhwc"))
    assert hwc.shape == (3, 3, 8) and np.array_equal(levels_of(hwc.x), square.transpose(0, 3, 1, 2))
    nchw = RNG.integers(0, 256, (12, 1, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "chw.npz", x=nchw)
    assert data.build(DataConfig(name="path", path=str(tmp_path / "chw.npz"))).shape == (1, 8, 3)
    x = RNG.random((20, 5, 4))  # float: continuous, as it is; (N, H, W): one channel
    np.savez(tmp_path / "hw.npz", x=x)
    ds = data.build(DataConfig(name="path", path=str(tmp_path / "hw.npz")))
    assert ds.shape == (1, 5, 4) and ds.bins == 0
    assert np.array_equal(ds.x[:, 0], x.astype(np.float32)) and (ds.labels == -1).all()
    fortran = np.asfortranarray(RNG.random((15, 3)))
    np.savez(tmp_path / "f.npz", x=fortran)
    ds = data.build(DataConfig(name="path", path=str(tmp_path / "f.npz")))
    assert np.array_equal(ds.x, fortran.astype(np.float32))


def test_streamed_digits_are_the_in_memory_split(tmp_path):
    """The default data set: prepare's rows are ``split(build(cfg))``'s (in source order)."""
    cfg = DataConfig(name="digits", seed=3)
    params = tmp_path / "digits.yaml"
    params.write_text(yaml.safe_dump({"data": {"name": "digits", "seed": 3}}))
    prepare.main(["--params", str(params), "--out", str(tmp_path / "d")])
    ds = data.build(cfg)
    for name, part in data.split(ds, cfg).items():
        x, y, meta = data.read_split(tmp_path / "d" / f"{name}.parquet")
        order = np.argsort(data.split_indices(len(ds.x), cfg)[name])
        assert np.array_equal(x, part.x[order]) and np.array_equal(y, part.labels[order])
        assert meta["bins"] == "17" and meta["source"] == "sklearn.datasets.load_digits"
    stats = json.loads((tmp_path / "d" / "stats.json").read_text())
    assert set(stats) == {"source", "shape", "rows", "mean", "std"}
    assert stats["rows"] == {"train": 1258, "val": 180, "test": 359}
    assert stats["mean"] == pytest.approx(float(ds.x.mean()), rel=1e-5)
    assert stats["std"] == pytest.approx(float(ds.x.std()), rel=1e-5)


def test_the_same_seed_gives_the_same_bytes_whatever_the_chunk(tmp_path, monkeypatch):
    levels = RNG.integers(0, 256, (50, 10, 10))
    images = write_idx(tmp_path / "m", "train", levels, RNG.integers(0, 10, 50), gz=True)
    a = run_prepare(tmp_path, "a", path=str(images), seed=5)
    monkeypatch.setattr(preparing, "CHUNK_BYTES", 7 * 400)  # 7 images a chunk
    b = run_prepare(tmp_path, "b", path=str(images), seed=5)
    c = run_prepare(tmp_path, "c", path=str(images), seed=6)
    for split in data.SPLITS:
        raw = (a / f"{split}.parquet").read_bytes()
        assert raw == (b / f"{split}.parquet").read_bytes()
        assert raw != (c / f"{split}.parquet").read_bytes()


def test_dequantisation_noise_does_not_depend_on_the_chunks():
    levels = RNG.integers(0, 256, (300, 2, 500)).astype(np.uint8)
    assert noise_block_rows(1000) == 262
    whole = dequantise(levels, 0, 256, seed=1)
    cuts = [0, 1, 100, 262, 263, 300]
    parts = [dequantise(levels[a:b], a, 256, seed=1) for a, b in itertools.pairwise(cuts)]
    assert np.array_equal(whole, np.concatenate(parts))
    assert (np.floor(whole * 256) == levels).all() and whole.max() < 1
    top = dequantise(np.full((4, 3), 255, np.uint8), 0, 256, seed=0)
    assert top.max() < 1


def test_prepare_streams_an_image_folder_in_bounded_chunks(tmp_path, monkeypatch):
    for i in range(30):
        a = np.full((6, 6, 3), i * 8, dtype=np.uint8)
        _save(tmp_path / "imgs" / f"{i:02d}.png", Image.fromarray(a))
    cfg = DataConfig(name="path", path=str(tmp_path / "imgs"))
    with data.open_source(cfg) as src:
        assert (src.count, src.shape, src.bins) == (30, (3, 6, 6), 256)
        sizes = [len(x) for x, _ in src.chunks(4)]
    assert sizes == [4] * 7 + [2]
    appended = []
    append = parquet.SplitWriter.append

    def spy(self, x, labels):
        appended.append(len(x))
        append(self, x, labels)

    monkeypatch.setattr(parquet.SplitWriter, "append", spy)
    monkeypatch.setattr(preparing, "CHUNK_BYTES", 5 * 4 * 3 * 6 * 6)  # 5 images a chunk
    assert preparing.chunk_rows((3, 6, 6)) == 5
    out = run_prepare(tmp_path, path=str(tmp_path / "imgs"))
    assert len(appended) >= 6 and max(appended) <= 5 and sum(appended) == 30
    rows = sum(len(data.read_split(out / f"{s}.parquet")[0]) for s in data.SPLITS)
    assert rows == 30
