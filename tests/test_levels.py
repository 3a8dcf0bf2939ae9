"""8-bit data stored as its ``uint8`` levels (issue 23): the prepared file holds levels, every
reader sees them dequantised with noise fixed by the row, and training sees fresh noise per
batch that differs between epochs and is the same for a seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.data import iter_rows, read_head, read_split, write_split
from pipelines.data.levels import dequantise
from pipelines.training.batches import open_batches

SHAPE = (1, 6, 6)


@dataclass
class Part:
    x: np.ndarray
    labels: np.ndarray
    source: str
    bins: int


def levels(n: int = 300) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, *SHAPE)).astype(np.uint8)


def write(path, bins: int = 256, n: int = 300):
    lv = levels(n)
    x = dequantise(lv, 0, 256, seed=5) if bins else lv.astype(np.float32) / 255
    write_split(path, Part(x, np.arange(n) % 3, "test", bins), seed=3)
    return lv


def test_eight_bit_splits_hold_levels_and_are_four_times_smaller(tmp_path):
    lv = write(tmp_path / "levels.parquet")
    write(tmp_path / "floats.parquet", bins=0)
    stored = pq.read_table(tmp_path / "levels.parquet")
    assert stored.schema.field("x").type.value_type == pa.uint8()
    held = np.asarray(stored.column("x").to_pylist(), dtype=np.uint8).reshape(lv.shape)
    np.testing.assert_array_equal(held, lv)  # floor(x * 256) of the dequantised values
    back, _, meta = read_split(tmp_path / "levels.parquet", levels=True)
    assert back.dtype == np.uint8 and meta["storage"] == "levels"
    np.testing.assert_array_equal(back, lv)
    floats = pq.read_table(tmp_path / "floats.parquet")
    assert floats.schema.field("x").type.value_type == pa.float32()
    assert stored.nbytes * 3.5 < floats.nbytes


def test_readers_dequantise_with_noise_fixed_by_the_row(tmp_path):
    lv = write(tmp_path / "levels.parquet")
    x, _, _ = read_split(tmp_path / "levels.parquet")
    assert x.dtype == np.float32
    assert (np.floor(x * 256) == lv).all(), "every value stays in its level's bin"
    assert len(np.unique(x - lv / 256)) > 1000, "noise, not a constant offset"
    again, _, _ = read_split(tmp_path / "levels.parquet")
    np.testing.assert_array_equal(x, again)
    for rows in (7, 100):  # the same values whatever the batch: evaluation is reproducible
        streamed = np.concatenate([b for b, _ in iter_rows(tmp_path / "levels.parquet", rows)])
        np.testing.assert_array_equal(streamed, x)
    head, _, _ = read_head(tmp_path / "levels.parquet", 50)
    np.testing.assert_array_equal(head, x[:50])


class OneWorker:
    world, rank, device = 1, 0, torch.device("cpu")

    def shard_loader(self, loader):
        return loader


def epoch_batches(path, seed: int, epoch: int) -> torch.Tensor:
    torch.manual_seed(0)  # the DataLoader's shuffle: the same order in every call
    config = {"train_path": str(path), "train": {"seed": seed}}
    batches = open_batches(config, OneWorker(), 64)
    return torch.cat([xb for (xb,) in batches.epoch(epoch)])


def test_training_noise_is_fresh_each_epoch_and_reproducible_for_a_seed(tmp_path):
    write(tmp_path / "levels.parquet")
    first, second = (epoch_batches(tmp_path / "levels.parquet", 0, e) for e in (0, 1))
    assert first.dtype == torch.float32 and first.shape[1:] == SHAPE
    assert float(first.min()) >= 0 and float(first.max()) < 1
    # same images (the same shuffle here), same levels, new noise
    torch.testing.assert_close(torch.floor(first * 256), torch.floor(second * 256))
    assert not torch.equal(first, second)
    torch.testing.assert_close(epoch_batches(tmp_path / "levels.parquet", 0, 1), second)
    assert not torch.equal(epoch_batches(tmp_path / "levels.parquet", 1, 1), second)
    fixed, _, _ = read_split(tmp_path / "levels.parquet")
    assert not np.isin(first.numpy(), fixed).all(), "training noise is not the evaluation noise"


def test_float_splits_are_read_as_they_were_written(tmp_path):
    write(tmp_path / "floats.parquet", bins=0)
    x, _, meta = read_split(tmp_path / "floats.parquet", levels=True)
    assert x.dtype == np.float32 and "storage" not in meta
    np.testing.assert_array_equal(x, levels().astype(np.float32) / 255)
    batches = epoch_batches(tmp_path / "floats.parquet", 0, 0)
    assert np.isin(batches.numpy(), x).all()
