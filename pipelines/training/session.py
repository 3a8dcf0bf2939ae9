"""Where the epoch loop runs: a Ray Train worker (the train stage, multi-worker sweep trials) or
a Ray Tune trial process (in-process sweep trials). The loop sees only ``Session``."""

from __future__ import annotations

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

    def latest_state(self) -> dict[str, Any] | None: ...
    def prepare(self, loader: DataLoader, model: torch.nn.Module) -> tuple[Any, Any]: ...
    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None: ...


class RayTrainSession:
    """Ray Train worker: DDP through ``prepare_*``, checkpoints reported by rank 0."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world, self.rank = ctx.get_world_size(), ctx.get_world_rank()
        self.device = ray.train.torch.get_device()

    def latest_state(self) -> dict[str, Any] | None:
        import ray.train

        return checkpoint_state(ray.train.get_checkpoint())

    def prepare(self, loader: DataLoader, model: torch.nn.Module) -> tuple[Any, Any]:
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader), ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if state is not None:
                save_state(state, tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)  # every rank reports


class TuneSession:
    """``Session`` for a Tune trial process: one worker, Tune checkpoints."""

    world, rank = 1, 0

    def __init__(self, use_gpu: bool) -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def latest_state(self) -> dict[str, Any] | None:
        from ray import tune

        return checkpoint_state(tune.get_checkpoint())

    def prepare(self, loader: DataLoader, model: torch.nn.Module) -> tuple[Any, Any]:
        return loader, model.to(self.device)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as tmp:
            save_state(state, tmp)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
