"""One sweep trial: the train stage's loop, inside a Ray Tune trial.

``workers_per_trial >= 1``: the trial drives a Ray Train ``TorchTrainer`` (DDP across workers,
GPUs with ``use_gpu``) and ``TuneReportCallback`` forwards each epoch's metrics to Tune, so ASHA
can stop it. ``workers_per_trial == 0``: ``fit_epochs`` runs in the trial process itself with
Tune's own checkpoints (Ray Train's local mode refuses to run inside Tune).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipelines import train_loop
from pipelines.config import Config, apply_trial


class TuneSession:
    """``train_loop.Session`` for a Tune trial process: one worker, Tune checkpoints."""

    world, rank = 1, 0

    def __init__(self, use_gpu: bool) -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def latest_state(self) -> dict[str, Any] | None:
        from ray import tune

        return train_loop.checkpoint_state(tune.get_checkpoint())

    def prepare(self, loader: DataLoader, model: torch.nn.Module) -> tuple[Any, Any]:
        return loader, model.to(self.device)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as tmp:
            train_loop.save_state(state, tmp)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_config(base: Config, params: dict[str, Any], storage: Path) -> Config:
    """The trial's full config: the sampled params, ``max_epochs``, per-trial workers, and
    Ray Train checkpoints under the sweep's own folder."""
    cfg = apply_trial(base, params)
    train = dataclasses.replace(
        cfg.train,
        epochs=base.sweep.max_epochs,
        num_workers=base.sweep.workers_per_trial,
        storage_path=str(storage / "train_runs"),
    )
    return dataclasses.replace(cfg, train=train)


def run_trial(
    params: dict[str, Any], *, base: Config, train_path: str, val_path: str, storage: str
) -> None:
    """Ray Tune's trainable. A restored trial resumes: Tune hands back its checkpoint (in
    process) or the Ray Train run of the same name picks up its own (``train-<trial id>``)."""
    from ray import tune

    cfg = trial_config(base, params, Path(storage))
    if cfg.train.num_workers == 0:
        config = train_loop.loop_config(cfg, Path(train_path), Path(val_path))
        train_loop.fit_epochs(config, TuneSession(cfg.train.use_gpu))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    train_loop.run(
        cfg,
        Path(train_path),
        Path(val_path),
        run_name=f"train-{tune.get_context().get_trial_id()}",
        callbacks=[TuneReportCallback()],
    )


def final_state(result: Any) -> dict[str, Any] | None:
    """The last checkpointed state of a trial's ``ray.tune.Result``, wherever it lives."""
    import ray.train

    ckpt = result.checkpoint  # in-process trials; Ray Train trials report the path instead
    if ckpt is None and (result.metrics or {}).get("checkpoint_path"):
        ckpt = ray.train.Checkpoint(result.metrics["checkpoint_path"])
    return train_loop.checkpoint_state(ckpt)
