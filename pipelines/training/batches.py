"""The epoch loop's batches: ``(xb,)`` float32 tensors of shape ``(b, *shape)`` from the train
split, read one of two ways (``train.loader``).

- ``memory``: each worker reads the whole split (``read_split``) into a torch ``DataLoader``
  that ``session.shard_loader`` shards with a ``DistributedSampler`` (a fresh global shuffle each
  epoch). The worker holds the whole split: its memory grows with the data set.
- ``ray_data``: the driver hands ``ray.data.read_parquet`` of the split to the ``TorchTrainer``
  (``train_dataset``, ``data_config``); each worker streams its own shard
  (``ray.train.get_dataset_shard``, an equal split: ``rows // world`` rows each) through
  ``iter_torch_batches``, shuffled in a local buffer of at most ``SHUFFLE_BUFFER_BYTES``. A
  worker holds a few blocks and that buffer, whatever the data set's size, and reads a split on
  shared storage (``s3://``) the same way. Blocks reach the shards in a fixed order
  (``preserve_order``) and a worker's shuffle seed is ``epoch_seed(seed, rank, epoch)``, so a
  run resumed from a checkpoint retraces the epochs an undisturbed run trains, as with
  ``memory``. Unlike ``memory``, a worker sees the same shard every epoch (reshuffled within).
- ``auto``: ``memory`` for a train split of at most ``AUTO_MEMORY_MAX_BYTES`` (its rows as
  float32, ``split_bytes``), ``ray_data`` above.

``train.num_workers: 0`` (Ray Train's local mode) and the in-process trials of a sweep
(``TuneSession``, ``sweep.workers_per_trial: 0``) always read with ``memory``: there is no
dataset shard there (``choose_loader``).

Every worker trains ``steps`` batches per epoch, the same number on every rank (DDP's allreduce
would hang on a rank with one batch more): ``memory`` pads the sampler's shards to equal size
and drops the last partial batch; ``ray_data`` gets equal shards, drops the last partial batch
and stops after ``(rows // world) // batch`` batches.

Measured (``python -m benchmarks.streaming_memory``; 1 worker on this 2-core CPU machine, which
other work shares: times vary up to 2x between runs):

- the default digits split (1,258 rows of 64 floats: 0.32 MB; the default model, batch 128,
  9 steps; median of epochs 2-4, validation included; two runs each way): an epoch takes
  0.98 / 0.99 s with ``memory``, 0.94 / 1.32 s with ``ray_data``, and the 4-epoch fit 22-26 s
  against 27 s (Ray Data's set-up: the split's coordinator, a streaming execution per epoch).
  Under load (4 on 2 cores) the fastest epochs were 0.75-0.78 s against 1.42-1.55 s.
- digits replicated (tiny model, batch 512, first epoch; a worker's peak private memory,
  ``RssAnon``): 1x: 351 against 352 MiB; 100x (125,800 rows, 32 MB of floats): 497 against
  400 MiB; 300x (97 MB): 660 against 413 MiB, with steady epochs of 38.9 s against 40.6 s.

So ``ray_data`` costs a second or a few per run and little per epoch, and saves nothing below
a few tens of MB (its blocks and shuffle buffer hold as much): ``auto`` keeps ``memory`` up to
``AUTO_MEMORY_MAX_BYTES``, where a ``memory`` worker holds about 150 MiB more than a
``ray_data`` one (interpolated), a gap that grows with the split (3.2 MiB per MB of floats).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader, TensorDataset

from pipelines import storage
from pipelines.data import read_split, split_info
from pipelines.data.levels import fresh_dequantise
from pipelines.data.parquet import stores_levels
from pipelines.errors import LinearizerError

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.training.session import Session

LOADERS = ("memory", "ray_data")
"""The ways a worker reads the train split (``train.loader`` also takes ``auto``)."""

AUTO_MEMORY_MAX_BYTES = 64 * 2**20
"""``auto`` reads a train split of at most this many bytes (``split_bytes``: its rows as
float32) with ``memory``, a larger one with ``ray_data``."""

SHUFFLE_BUFFER_BYTES = 16 * 2**20
"""Rows a ``ray_data`` worker shuffles among (its local shuffle buffer), in bytes of float32
data: 65,536 digits, 341 images of 3x64x64. Enough: ``prepare`` writes a split's rows in a
seeded random order, so a window of the file is already a random sample."""

BLOCK_BYTES = 16 * 2**20
"""Ray Data's largest block of the train split (``target_max_block_size``, 128 MiB by default):
a ``ray_data`` worker holds about a block being batched, one prefetched and the shuffle buffer."""

DATASET = "train"
"""The name of the train split among the ``TorchTrainer``'s datasets."""


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of a worker's epoch (its torch RNG, its Ray Data shuffle): a function of
    ``(seed, rank, epoch)`` alone, so that a resumed run retraces the epochs."""
    return seed + rank + 1_000_003 * epoch


def split_bytes(path: str | Path) -> int:
    """The bytes of a split's rows as the ``memory`` loader holds them (``rows x prod(shape)``
    x 4 for float32, x 1 for ``uint8`` levels; from the Parquet footer alone, a local path or a
    URI). Not the file's size: Parquet
    compresses (100 copies of digits' 32 MB of floats make a 17.5 MB file), while what the
    ``memory`` loader costs a worker follows the decoded rows."""
    info = split_info(path)
    return int(info["rows"]) * math.prod(info["shape"]) * (1 if stores_levels(info) else 4)


def choose_loader(loader: str, train_path: str | Path, num_workers: int) -> str:
    """``memory`` or ``ray_data``: ``train.loader`` resolved for a run of ``num_workers`` Ray
    Train workers (``0``: Ray Train's local mode, no dataset shard: always ``memory``)."""
    if loader not in (*LOADERS, "auto"):
        raise LinearizerError(f"train.loader must be auto, memory or ray_data, got {loader!r}")
    if num_workers == 0:
        return "memory"
    if loader == "auto":
        return "ray_data" if split_bytes(train_path) > AUTO_MEMORY_MAX_BYTES else "memory"
    return loader


def train_dataset(train_path: str | Path) -> Any:
    """The train split as a ``ray.data.Dataset`` of its ``x`` column (driver side).

    Its read tasks ask for no CPU: Ray Train's workers hold the CPUs they reserve for the whole
    run, and with ``num_workers`` equal to the node's CPUs (``check_workers`` allows it) a read
    task that waits for a CPU waits forever (a hang). The read goes through Ray Data's Parquet
    datasource V1, whose one read operator takes ``num_cpus``: V2 (Ray 2.60's default) runs a
    ``ListFiles`` task first whose one CPU is fixed (``plan_list_files_op``), and hangs there."""
    import ray.data

    path: str = os.fspath(train_path)
    fs = None
    if storage.is_uri(path):
        fs, path = storage.filesystem(path)
    context = ray.data.DataContext.get_current()
    saved = context.use_datasource_v2, context.enable_progress_bars
    context.use_datasource_v2 = context.enable_progress_bars = False  # this read only
    try:
        ds = ray.data.read_parquet(path, filesystem=fs, columns=["x"], num_cpus=0)
    finally:
        context.use_datasource_v2, context.enable_progress_bars = saved
    ds.context.target_max_block_size = BLOCK_BYTES  # the dataset's own context, not the driver's
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def data_config() -> Any:
    """Ray Train's ``DataConfig`` for the train split: equal shards, in a fixed order (the
    driver's ingest options with ``preserve_order``), so a resumed run retraces its epochs."""
    import ray.data
    import ray.train

    # the driver's options, as DataConfig.default_ingest_options() copies them (without its
    # deprecation warning for exclude_resources)
    options = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=[DATASET], execution_options=options)


class EpochBatches(Protocol):
    steps: int
    """batches per epoch, the same on every worker"""

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor]]: ...


class Dequantiser:
    """8-bit splits (``uint8`` levels) to float32 batches with fresh noise per batch, from a
    generator seeded per epoch (``epoch_seed``): new noise every epoch, the same for a seed, so a
    resumed run retraces it. Float32 splits pass through."""

    def __init__(self, bins: int, *, seed: int, rank: int, device: torch.device) -> None:
        self.bins, self.seed, self.rank, self.device = bins, seed, rank, device

    def epoch(self, epoch: int) -> torch.Generator | None:
        if not self.bins:
            return None
        gen = torch.Generator(device=self.device)
        return gen.manual_seed(epoch_seed(self.seed, self.rank, epoch))

    def __call__(self, xb: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return xb if gen is None else fresh_dequantise(xb, self.bins, gen)


def dequantiser(info: dict[str, Any], config: dict[str, Any], session: Session) -> Dequantiser:
    bins = int(info["bins"]) if stores_levels(info) else 0
    seed = int(config["train"]["seed"])
    return Dequantiser(bins, seed=seed, rank=session.rank, device=session.device)


class MemoryBatches:
    """The whole split in this worker, through a (prepared) ``DataLoader``; an 8-bit split is
    held as its ``uint8`` levels (4x less memory) and dequantised batch by batch."""

    def __init__(self, loader: Any, dequantise: Dequantiser) -> None:
        self.loader, self.steps, self.dequantise = loader, len(loader), dequantise

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor]]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new global shuffle
            sampler.set_epoch(epoch)
        gen = self.dequantise.epoch(epoch)
        for (xb,) in self.loader:
            yield (self.dequantise(xb.to(self.dequantise.device), gen),)


def _arrow_collate() -> Any:
    from ray.data.collate_fn import ArrowBatchCollateFn

    class RowsToTensor(ArrowBatchCollateFn):
        """An Arrow batch's fixed-size-list column ``x`` as one ``(b, *shape)`` float32
        tensor (``iter_torch_batches`` alone gives such a column as an object array)."""

        def __init__(self, shape: tuple[int, ...]) -> None:
            self.shape = shape

        def __call__(self, batch: pa.Table) -> torch.Tensor:
            column = batch.column("x").combine_chunks()
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return torch.tensor(flat.reshape(batch.num_rows, *self.shape))  # a writable copy

    return RowsToTensor


class RayDataBatches:
    """This worker's shard of a Ray Data split, streamed batch by batch."""

    def __init__(
        self,
        shard: Any,
        shape: tuple[int, ...],
        *,
        rows: int,
        world: int,
        rank: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        dequantise: Dequantiser | None = None,
    ) -> None:
        shard_rows = rows // world  # an equal split drops the rest
        if shard_rows == 0:
            raise LinearizerError(
                f"the train split has {rows} rows, fewer than the {world} workers"
            )
        self.shard, self.rank, self.seed, self.device = shard, rank, seed, device
        self.dequantise = dequantise or Dequantiser(0, seed=seed, rank=rank, device=device)
        self.batch = min(batch_size, shard_rows)
        self.steps = shard_rows // self.batch
        row_bytes = 4 * max(1, math.prod(shape))
        self.buffer = max(self.batch, min(shard_rows, SHUFFLE_BUFFER_BYTES // row_bytes))
        self.collate = _arrow_collate()(tuple(shape))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor]]:
        stream = iter(
            self.shard.iter_torch_batches(
                batch_size=self.batch,
                collate_fn=self.collate,
                drop_last=True,
                local_shuffle_buffer_size=self.buffer,
                local_shuffle_seed=epoch_seed(self.seed, self.rank, epoch),
                device=self.device,
                pin_memory=self.device.type == "cuda",
            )
        )
        gen = self.dequantise.epoch(epoch)
        try:
            for step in range(self.steps):
                xb = next(stream, None)
                if xb is None:
                    raise LinearizerError(
                        f"worker {self.rank}'s shard of the train split ended after {step} of "
                        f"{self.steps} batches in epoch {epoch}"
                    )
                yield (self.dequantise(xb, gen),)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:  # ends this shard's epoch now, not when collected
                close()


def open_batches(config: dict[str, Any], session: Session, batch_size: int) -> EpochBatches:
    """The worker's batches of ``batch_size`` rows for ``config["loader"]`` (resolved by the
    driver, ``choose_loader``; absent: ``memory``)."""
    device = session.device
    if config.get("loader", "memory") == "ray_data":
        get_shard = getattr(session, "dataset_shard", None)
        shard = get_shard(DATASET) if get_shard is not None else None
        if shard is None:
            raise LinearizerError(
                "train.loader is ray_data but this worker has no dataset shard: start the run "
                "with pipelines.training.driver.run (it passes the train split to Ray Train)"
            )
        info = split_info(config["train_path"])
        return RayDataBatches(
            shard,
            tuple(info["shape"]),
            rows=int(info["rows"]),
            world=max(session.world, 1),
            rank=session.rank,
            batch_size=batch_size,
            seed=int(config["train"]["seed"]),
            device=device,
            dequantise=dequantiser(info, config, session),
        )
    x, _, info = read_split(config["train_path"], levels=True)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x)),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(x) > batch_size,
        pin_memory=device.type == "cuda",  # batches copied to the GPU without a host wait
    )
    return MemoryBatches(session.shard_loader(loader), dequantiser(info, config, session))
