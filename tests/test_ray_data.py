"""The train split through Ray Data (``train.loader: ray_data``): every worker streams its own
shard (never the whole split: no ``read_split`` of it), every row is seen once per epoch across
the workers, every worker trains the same number of steps (or DDP's allreduce hangs), a resumed
run retraces an undisturbed one, a worker group holding every CPU does not starve Ray Data's
read tasks, and the model trains about as well as with ``memory``. ``auto`` and the in-process
paths choose ``memory``."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import in_process_ray

from pipelines.config import parse
from pipelines.errors import LinearizerError
from pipelines.training import batches
from pipelines.training.driver import loop_config
from pipelines.training.loop import fit_epochs

MODEL = {"rank": 2, "depth": 2, "hidden": 16, "operator_hidden": 16}


def moons_cfg(**train: Any) -> Any:
    return parse({"model": MODEL, "train": {"batch_size": 64, **train}, "evaluate": {"steps": 10}})


# --- choosing the loader ----------------------------------------------------------------------


def test_auto_reads_a_small_split_into_memory_and_a_large_one_through_ray_data(moons, monkeypatch):
    train = moons / "train.parquet"
    assert batches.choose_loader("auto", train, 2) == "memory"  # a few KB
    monkeypatch.setattr(batches, "AUTO_MEMORY_MAX_BYTES", batches.split_bytes(train) - 1)
    assert batches.choose_loader("auto", train, 2) == "ray_data"
    assert batches.choose_loader("memory", train, 2) == "memory"
    # num_workers 0 (Ray Train's local mode, a sweep's in-process trial): no dataset shard
    assert batches.choose_loader("ray_data", train, 0) == "memory"
    assert batches.choose_loader("auto", train, 0) == "memory"
    cfg = moons_cfg(loader="ray_data", num_workers=0)
    assert loop_config(cfg, train, moons / "val.parquet")["loader"] == "memory"
    with pytest.raises(LinearizerError, match=r"train\.loader"):
        batches.choose_loader("disk", train, 1)


def test_ray_data_without_a_dataset_shard_is_a_clear_error(moons):
    config = loop_config(
        moons_cfg(loader="ray_data", epochs=1), moons / "train.parquet", moons / "val.parquet"
    )
    with pytest.raises(LinearizerError, match="no dataset shard"):
        fit_epochs(config, FakeSession())


# --- a worker's batches, without Ray ---------------------------------------------------------


def test_rows_to_tensor_decodes_the_fixed_size_list_column():
    x = np.arange(3 * 4, dtype=np.float32).reshape(3, 1, 2, 2)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), 4)
    table = pa.table({"x": column}).slice(1, 2)  # a slice, as Ray hands batches
    out = batches._arrow_collate()((1, 2, 2))(table)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 2, 2)
    assert torch.equal(out, torch.from_numpy(x[1:]))


class FakeShard:
    """A ``DataIterator`` stand-in over a whole split: ``iter_torch_batches`` shuffles it with
    the seed it is given and collates Arrow slices with the loop's ``collate_fn``, as Ray does;
    it records each call's arguments."""

    def __init__(self, path: Path, rows: int | None = None, extra_batches: int = 0) -> None:
        self.table = pq.read_table(path, columns=["x"])
        if rows is not None:
            self.table = self.table.slice(0, rows)
        self.extra, self.calls = extra_batches, []

    def iter_torch_batches(self, **kw: Any) -> Any:
        self.calls.append(kw)
        n, b = self.table.num_rows, kw["batch_size"]
        table = self.table.take(np.random.default_rng(kw["local_shuffle_seed"]).permutation(n))
        stop = n - b + 1 if kw["drop_last"] else n
        for i in range(0, stop, b):
            yield kw["collate_fn"](table.slice(i, b))
        for _ in range(self.extra):  # a shard longer than it should be
            yield kw["collate_fn"](table.slice(0, b))


class FakeSession:
    """``Session`` without Ray (one worker), with a dataset shard when given one."""

    world, rank, device = 1, 0, torch.device("cpu")

    def __init__(
        self, shard: Any = None, state: dict[str, Any] | None = None, stop_after: int = -1
    ) -> None:
        self.shard, self.state, self.reports, self.stop_after = shard, state, [], stop_after

    def latest_state(self) -> dict[str, Any] | None:
        return self.state

    def wrap_model(self, model: Any, *, find_unused: bool = False) -> Any:
        return model

    def shard_loader(self, loader: Any) -> Any:
        return loader

    def dataset_shard(self, name: str) -> Any:
        return self.shard if name == batches.DATASET else None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        self.state = copy.deepcopy(state)
        if metrics["epoch"] == self.stop_after:
            raise Interrupted  # a run stopped once this epoch's checkpoint is saved


class Interrupted(RuntimeError):
    pass


def test_every_rank_trains_the_same_steps_whatever_its_shard_holds(moons):
    """101 rows on 2 workers, 16 rows a batch: equal shards of 50 rows, 3 steps each; a shard
    with batches to spare is cut at 3, one that runs short is an error, never a hang."""
    train = moons / "train.parquet"
    for rank in (0, 1):
        b = batches.RayDataBatches(
            FakeShard(train, rows=50, extra_batches=2),
            (2,),
            rows=101,
            world=2,
            rank=rank,
            batch_size=16,
            seed=7,
            device=torch.device("cpu"),
        )
        assert b.steps == 3
        got = [xb for (xb,) in b.epoch(4)]
        assert len(got) == 3 and all(xb.shape == (16, 2) for xb in got)
        call = b.shard.calls[-1]
        assert call["drop_last"] and call["local_shuffle_seed"] == batches.epoch_seed(7, rank, 4)
        assert call["local_shuffle_buffer_size"] >= 16
    short = batches.RayDataBatches(
        FakeShard(train, rows=40),
        (2,),
        rows=101,
        world=2,
        rank=0,
        batch_size=16,
        seed=7,
        device=torch.device("cpu"),
    )
    with pytest.raises(LinearizerError, match="ended after 2 of 3 batches"):
        list(short.epoch(0))
    with pytest.raises(LinearizerError, match="fewer than the 4 workers"):
        batches.RayDataBatches(
            FakeShard(train),
            (2,),
            rows=3,
            world=4,
            rank=0,
            batch_size=16,
            seed=0,
            device=torch.device("cpu"),
        )


def test_the_loop_streams_its_shard_and_a_resumed_run_retraces_an_undisturbed_one(
    moons, monkeypatch
):
    """The loop on the ray_data path: never ``read_split`` of a split (heads only), the shard's
    steps in the learning-rate schedule, and each epoch's shuffle seeded by (seed, rank, epoch),
    so 2 epochs in two sessions end bit for bit where 2 straight do."""

    def no_read_split(path: Any) -> None:
        raise AssertionError(f"read_split({path}) on the ray_data path")

    monkeypatch.setattr(batches, "read_split", no_read_split)
    train, val = moons / "train.parquet", moons / "val.parquet"
    config = loop_config(moons_cfg(loader="ray_data", epochs=2), train, val)
    assert config["loader"] == "ray_data"
    straight = FakeSession(FakeShard(train))
    fit_epochs(config, straight)
    assert [r["epoch"] for r in straight.reports] == [0, 1]
    assert all(math.isfinite(r["train_loss"]) for r in straight.reports)
    assert [c["local_shuffle_seed"] for c in straight.shard.calls] == [0, 1_000_003]
    assert all(c["batch_size"] == 64 for c in straight.shard.calls)
    assert straight.reports[0]["peak_rss_mib"] > 0
    first = FakeSession(FakeShard(train), stop_after=0)
    with pytest.raises(Interrupted):
        fit_epochs(config, first)
    resumed = FakeSession(FakeShard(train), first.state)
    fit_epochs(config, resumed)
    assert [r["epoch"] for r in resumed.reports] == [1]
    assert resumed.reports[0]["train_loss"] == straight.reports[1]["train_loss"]
    for name, w in straight.state["model"].items():
        assert torch.equal(w, resumed.state["model"][name]), name


# --- through Ray Train (a local 2-CPU Ray) ---------------------------------------------------


@pytest.fixture
def local_ray(monkeypatch):
    """A local 2-CPU Ray in this process, in a temp folder of its own; shut down afterwards."""
    with in_process_ray(monkeypatch, __name__, num_cpus=2):
        yield


def recording_worker(folder: str) -> Any:
    """``train_loop_per_worker`` that saves, per rank and epoch, the rows it trained on, and
    notes any ``read_split`` call (there should be none on the ray_data path)."""

    def per_worker(config: dict[str, Any]) -> None:
        import ray.train

        from pipelines import data
        from pipelines.data import parquet
        from pipelines.training import batches, loop

        out = Path(folder)
        rank = ray.train.get_context().get_world_rank()
        real = parquet.read_split

        def noted_read_split(path: Any) -> Any:
            with open(out / f"read_split-rank{rank}.txt", "a") as f:
                f.write(f"{path}\n")
            return real(path)

        for module in (batches, data, parquet):
            module.read_split = noted_read_split
        streamed = batches.RayDataBatches.epoch

        def recorded(self: Any, epoch: int) -> Any:
            seen = []
            for (xb,) in streamed(self, epoch):
                seen.append(xb.detach().cpu().numpy().copy())
                yield (xb,)
            np.save(out / f"rows-rank{rank}-epoch{epoch}.npy", np.concatenate(seen))

        batches.RayDataBatches.epoch = recorded
        loop.train_loop_per_worker(config)

    return per_worker


def as_rows(x: np.ndarray) -> list[tuple[float, ...]]:
    return sorted(map(tuple, x.reshape(len(x), -1).tolist()))


@pytest.mark.slow
def test_two_workers_holding_every_cpu_each_stream_their_half_once_per_epoch(
    moons, tmp_path, local_ray
):
    """2 workers on a 2-CPU Ray (Ray Train holds both CPUs: the read tasks must still run), 1
    epoch through ``driver.run``: each worker trained the same number of steps, on rows of its
    own shard only, together every row of the split exactly once, and read no split whole."""
    from pipelines.data import read_split
    from pipelines.training.driver import run

    train, val = moons / "train.parquet", moons / "val.parquet"
    x, _, _ = read_split(train)
    assert len(x) == 420  # 2 shards of 210 rows: 7 batches of 30 rows each
    cfg = moons_cfg(
        loader="ray_data", epochs=1, batch_size=60, num_workers=2, storage_path=str(tmp_path)
    )
    records = tmp_path / "records"
    records.mkdir()
    result = run(cfg, train, val, run_name="ray-data-2", train_fn=recording_worker(str(records)))
    assert math.isfinite(result.metrics["train_loss"]) and result.metrics["epoch"] == 0
    assert not list(records.glob("read_split-*")), "a worker read a split whole"
    seen = [np.load(records / f"rows-rank{r}-epoch0.npy") for r in (0, 1)]
    assert [len(s) for s in seen] == [210, 210]  # the same 7 steps on each rank
    assert as_rows(np.concatenate(seen)) == as_rows(x)  # every row once, none twice
    assert not set(as_rows(seen[0])) & set(as_rows(seen[1]))


@pytest.mark.slow
def test_one_worker_trains_as_well_from_ray_data_as_from_memory(moons, tmp_path, local_ray):
    """1 worker on a 2-CPU Ray (a read task may take the spare CPU), 1 epoch each way: the
    validation metrics agree closely (not exactly: the shuffles differ)."""
    from pipelines.training.driver import run

    train, val = moons / "train.parquet", moons / "val.parquet"
    metrics = {}
    for loader in ("memory", "ray_data"):
        cfg = moons_cfg(loader=loader, epochs=1, num_workers=1, storage_path=str(tmp_path))
        metrics[loader] = run(cfg, train, val, run_name=f"ray-data-1-{loader}").metrics
    mem, rd = metrics["memory"], metrics["ray_data"]
    assert mem["train_loss"] != rd["train_loss"]  # other batches
    assert rd["val_loss"] == pytest.approx(mem["val_loss"], rel=0.15)
    assert rd["val_mmd"] == pytest.approx(mem["val_mmd"], rel=0.5, abs=0.02)
