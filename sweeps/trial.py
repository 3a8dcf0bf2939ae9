"""One sweep trial: the train stage's loop, inside a Ray Tune trial.

``workers_per_trial >= 1``: the trial drives a Ray Train ``TorchTrainer`` (DDP across workers,
GPUs with ``use_gpu``) and a ``TuneReportCallback`` forwards each epoch's metrics to Tune, so
ASHA can stop it. ``workers_per_trial == 0``: ``fit_epochs`` runs in the trial process itself
with Tune's own checkpoints (Ray Train's local mode refuses to run inside Tune).

Either way each result also carries ``epochs_done`` (``epoch + 1``): the budget ASHA and the
searcher count in. Tune's ``training_iteration`` restarts at 1 when a crashed Ray Train trial is
retried, while the loop resumes at the epoch of its last checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipelines.config import Config, apply_trial
from pipelines.faults import injection as fault_injection
from pipelines.training.driver import loop_config
from pipelines.training.driver import run as run_training
from pipelines.training.loop import fit_epochs
from pipelines.training.session import TuneSession
from pipelines.training.state import checkpoint_state

EPOCHS_DONE = "epochs_done"
"""Result key: epochs trained so far (the loop's ``epoch + 1``), ASHA's time attribute."""


def trial_config(
    base: Config, params: dict[str, Any], storage: Path, *, epochs: int | None = None
) -> Config:
    """The trial's full config: the sampled params, ``max_epochs`` (or ``epochs``), per-trial
    workers, and Ray Train checkpoints under the sweep's own folder."""
    cfg = apply_trial(base, params)
    train = dataclasses.replace(
        cfg.train,
        epochs=epochs or base.sweep.max_epochs,
        num_workers=base.sweep.workers_per_trial,
        storage_path=str(storage / "train_runs"),
    )
    return dataclasses.replace(cfg, train=train)


def logged_params(cfg: Config) -> dict[str, Any]:
    """What a trial's MLflow run records as params: its whole resolved config, the sections the
    train stage logs (``data``, ``model``, ``train``, ``evaluate``, ``mlflow``; the sweep's own
    settings are on the parent run), so that trial and train runs compare key by key."""
    return {k: v for k, v in cfg.to_flat_dict().items() if not k.startswith("sweep.")}


class TrialSession(TuneSession):
    """``TuneSession`` whose reports carry ``EPOCHS_DONE``."""

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        super().report({**metrics, EPOCHS_DONE: int(metrics["epoch"]) + 1}, state)


def report_callback() -> Any:
    """Ray Train's ``TuneReportCallback`` whose reports carry ``EPOCHS_DONE``. Built here so that
    Ray pickles the class by value: the Ray Train controller runs it without importing this
    module (and torch with it)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReportCallback(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if metrics and "epoch" in metrics[0]:
                first = {**metrics[0], EPOCHS_DONE: int(metrics[0]["epoch"]) + 1}
                metrics = [first, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return EpochReportCallback()


def run_trial(
    params: dict[str, Any], *, base: Config, train_path: str, val_path: str, storage: str
) -> None:
    """Ray Tune's trainable. A restored trial resumes: Tune hands back its checkpoint (in
    process) or the Ray Train run of the same name picks up its own (``train-<trial id>``).
    A trial runs in a process of its own: it installs the fault hooks ``LINEARIZER_FAULT`` asks
    for."""
    from ray import tune

    fault_injection.install()
    cfg = trial_config(base, params, Path(storage))
    if cfg.train.num_workers == 0:
        config = loop_config(cfg, Path(train_path), Path(val_path))
        fit_epochs(config, TrialSession(cfg.train.use_gpu))
        return
    run_training(
        cfg,
        Path(train_path),
        Path(val_path),
        run_name=f"train-{tune.get_context().get_trial_id()}",
        callbacks=[report_callback()],
    )


def final_state(result: Any) -> dict[str, Any] | None:
    """The last checkpointed state of a trial's ``ray.tune.Result``, wherever it lives."""
    import ray.train

    ckpt = result.checkpoint  # in-process trials; Ray Train trials report the path instead
    if ckpt is None and (result.metrics or {}).get("checkpoint_path"):
        ckpt = ray.train.Checkpoint(result.metrics["checkpoint_path"])
    return checkpoint_state(ckpt)
