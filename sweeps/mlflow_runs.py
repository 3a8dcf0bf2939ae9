"""A sweep's MLflow runs: the parent run, one child run per trial attempt, and the clean-up of
children an interrupted driver left RUNNING.

Each child run carries what the train stage's run carries, so that the two compare column by
column in the UI: the trial's whole resolved config as params (not only the searched keys), the
prepared data as its dataset input (digest: the DVC md5 of the folder), and per-epoch metrics
at step ``epoch + 1``. It is tagged with its Tune trial id (``TRIAL_TAG``), which is how
``sweeps.results`` finds it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.config import Config
from pipelines.tracking.dataset import describe

PARENT_TAG, ROLE_TAG = "linearizer.sweep", tracking.ROLE_TAG
TRIAL_TAG = "linearizer.trial_id"
EXTRA_METRICS = ("num_params",)
"""Logged besides the per-epoch curves the train stage's run has (``tracking.is_epoch_metric``);
Tune's bookkeeping (``training_iteration``, ``time_total_s``, ...) is left out."""


def data_params(data_dir: Path | str) -> dict[str, str]:
    """The data params the train stage's run logs besides its config (``data.shape``,
    ``data.source``), read from the prepared folder's Parquet metadata."""
    profile = describe(data_dir)[1]
    return {
        "data.shape": str(tuple(profile["shape"] or ())),
        "data.source": str(profile["source"]),
    }


def attempt_logger(cfg: Config, sweep_dir: Path, data_dir: Path | str) -> type:
    """``MLflowLoggerCallback`` with one child run per *attempt*: when Tune retries a crashed
    trial (``FailureConfig``), the crashed attempt's run ends FAILED and the retry logs into a
    new run, instead of one run silently spanning both. Each new run gets ``TRIAL_TAG``, the
    trial's resolved config (``trial.logged_params``) and the dataset input of ``data_dir``."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from sweeps import trial as trial_mod

    dataset = tracking.dataset_input(data_dir, name=cfg.data.name)
    extra = data_params(data_dir)

    class AttemptLogger(MLflowLoggerCallback):
        def log_trial_start(self, trial: Any) -> None:
            new = trial not in self._trial_runs
            super().log_trial_start(trial)  # the run, and the searched params
            if not new:
                return
            run_id = self._trial_runs[trial]
            client = MlflowClient(self.tracking_uri)
            tcfg = trial_mod.trial_config(cfg, dict(trial.config), sweep_dir)
            params = {**trial_mod.logged_params(tcfg), **extra}
            items = sorted((k, str(v)) for k, v in params.items() if k not in trial.config)
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
            client.log_batch(run_id, tags=[RunTag(TRIAL_TAG, str(trial.trial_id))])
            client.log_inputs(run_id, [dataset])

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            run_id = self._trial_runs.pop(trial, None)
            if run_id is not None:
                self.mlflow_util.end_run(run_id=run_id, status="FAILED")

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            if trial not in self._trial_runs:  # a retried attempt: its own run
                self.log_trial_start(trial)
            # one batch per epoch: the train stage's metrics at its step (epoch + 1)
            step = result.get(trial_mod.EPOCHS_DONE) or result.get("training_iteration") or 0
            now = int(time.time() * 1000)
            metrics = [
                Metric(k, float(v), now, int(step))
                for k, v in result.items()
                if (tracking.is_epoch_metric(k) or k in EXTRA_METRICS)
                and isinstance(v, int | float)
                and not isinstance(v, bool)
                and math.isfinite(v)
            ]
            MlflowClient(self.tracking_uri).log_batch(self._trial_runs[trial], metrics=metrics)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if trial in self._trial_runs:
                super().log_trial_end(trial, failed)

    return AttemptLogger


def find_parent(experiment_id: str, name: str) -> str | None:
    import mlflow

    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'parent'",
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def all_child_runs(experiment_id: str, parent_id: str) -> list[Any]:
    """Every run of the parent's children, oldest first (a resumed trial has one per attempt)."""
    import mlflow

    return mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


def child_runs(experiment_id: str, parent_id: str) -> dict[str, Any]:
    """``trial id -> run`` for the parent's children, by ``TRIAL_TAG`` (the newest run when a
    resumed trial has two); a run without the tag goes by its ``trial_name``."""
    runs = all_child_runs(experiment_id, parent_id)
    return {
        r.data.tags.get(TRIAL_TAG) or r.data.tags.get("trial_name", r.info.run_id): r for r in runs
    }


def close_orphans(experiment_id: str, parent_id: str) -> int:
    """Children left RUNNING by a killed driver are marked KILLED (the UI would show them live).
    All of them: a trial that was running when its driver died has a newer run after the
    resume, and the older one would hide behind it in ``child_runs``."""
    return tracking.mark_killed(all_child_runs(experiment_id, parent_id))


def log_final(run_id: str, row: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Log a scored model's ``keys`` of ``row`` to its run at step 0, in one batch."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    final = [Metric(k, float(row[k]), now, 0) for k in keys if k in row]
    MlflowClient().log_batch(run_id, metrics=final)
