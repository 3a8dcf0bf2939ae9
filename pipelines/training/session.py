"""Where the epoch loop runs: a Ray Train worker (the train stage, multi-worker sweep trials) or
a Ray Tune trial process (in-process sweep trials). The loop sees only ``Session``."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from pipelines.training.state import checkpoint_state, save_state


class Session(Protocol):
    """Where the epoch loop runs: a Ray Train worker, or a Ray Tune trial process (sweeps)."""

    world: int
    rank: int
    device: torch.device
    cpu_threads: int | None
    """torch's intra-op threads for this worker (``None``: leave torch's own setting)"""

    def latest_state(self) -> dict[str, Any] | None: ...
    def wrap_model(self, model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
        """The model on this worker's device, in DDP where there are several workers;
        ``find_unused``: some steps leave parameters without a gradient (the warm-up), which
        DDP must then look for instead of waiting on them."""
        ...

    def shard_loader(self, loader: DataLoader) -> DataLoader:
        """The loader of the whole split, sharded for this worker (its batches on the
        device)."""
        ...

    def dataset_shard(self, name: str) -> Any | None:
        """This worker's shard of the run's Ray Data dataset ``name`` (``None``: none)."""
        ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None: ...


def _usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: a container's or taskset's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _assigned_cpus() -> float:
    """The CPUs Ray assigned to this worker or trial (0 outside Ray)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except AssertionError:  # a driver, not a worker: nothing assigned
        return 0.0


def _node_cpus() -> int:
    """The CPUs this node gives Ray (``ray start --num-cpus``), at most the usable cores."""
    import ray

    usable = _usable_cpus()
    try:
        node_id = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
        return max(1, min(usable, int(node["Resources"].get("CPU", usable))))
    except Exception:  # no GCS answer: the cores this process sees
        return usable


def worker_threads(assigned_cpus: float, local_workers: int, node_cpus: int | None = None) -> int:
    """Threads for one Ray Train worker: its share of its node's CPUs among the run's workers on
    that node (``local_workers``, not the global world size: 4 nodes x 8 workers each get 1/8 of
    their node), and never fewer than the CPUs Ray assigned it (``resources_per_worker``; Ray
    Train's default of 1 is a scheduling count, not the worker's real share)."""
    node = _node_cpus() if node_cpus is None else node_cpus
    return max(1, int(assigned_cpus), node // max(local_workers, 1))


class RayTrainSession:
    """Ray Train worker: DDP and sharded loaders through Ray's ``prepare_*``, checkpoints
    reported by rank 0."""

    def __init__(self, *, local_mode: bool = False) -> None:
        import ray.train
        import ray.train.torch

        self.local_mode = local_mode
        self._kept: str | None = None
        ctx = ray.train.get_context()
        self.world, self.rank = ctx.get_world_size(), ctx.get_world_rank()
        self.device = ray.train.torch.get_device()
        self.cpu_threads = worker_threads(_assigned_cpus(), ctx.get_local_world_size())

    def latest_state(self) -> dict[str, Any] | None:
        import ray.train

        return checkpoint_state(ray.train.get_checkpoint())

    def wrap_model(self, model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
        import ray.train.torch

        # a globally unused parameter keeps grad None under DDP, so Adam skips it as it would
        # without DDP (its moments start when the full objective does)
        kwargs = {"find_unused_parameters": True} if find_unused else None
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)

    def shard_loader(self, loader: DataLoader) -> DataLoader:
        """A ``DistributedSampler`` (a fresh global shuffle each epoch) and batches moved to the
        device, by ``ray.train.torch.prepare_data_loader``."""
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader)

    def dataset_shard(self, name: str) -> Any | None:
        """``ray.train.get_dataset_shard``: a barrier across the workers the first time."""
        import ray.train

        try:
            return ray.train.get_dataset_shard(name)
        except (KeyError, AttributeError):  # the run has no such dataset (or none at all)
            return None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        if self.local_mode and state is not None:
            self._report_local(metrics, state)
            return
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if state is not None:
                save_state(state, tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)  # every rank reports

    def _report_local(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        """Ray Train's local mode (``num_workers: 0``) keeps a reported checkpoint as the path
        it was given, uncopied: a temporary folder would be gone when the driver reads
        ``result.checkpoint``. Keep the latest in a folder of its own, removed at exit."""
        import ray.train

        folder = tempfile.mkdtemp(prefix="lzr-local-ckpt-")
        save_state(state, folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        if self._kept is not None:
            shutil.rmtree(self._kept, ignore_errors=True)
        else:
            atexit.register(lambda: self._kept and shutil.rmtree(self._kept, ignore_errors=True))
        self._kept = folder


class TuneSession:
    """``Session`` for a Tune trial process: one worker, Tune checkpoints."""

    world, rank = 1, 0

    def __init__(self, use_gpu: bool) -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        # the trial's own CPUs (concurrent trials share the node); none assigned: torch's default
        assigned = _assigned_cpus()
        self.cpu_threads = max(1, int(assigned)) if assigned else None

    def latest_state(self) -> dict[str, Any] | None:
        from ray import tune

        return checkpoint_state(tune.get_checkpoint())

    def wrap_model(self, model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
        return model.to(self.device)

    def shard_loader(self, loader: DataLoader) -> DataLoader:
        return loader  # one worker: the whole split

    def dataset_shard(self, name: str) -> Any | None:
        return None  # a trial process: no Ray Train datasets; the loop reads into memory

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as tmp:
            save_state(state, tmp)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
