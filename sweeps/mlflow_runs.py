"""A sweep's MLflow runs: the parent run, one child run per trial attempt, and the clean-up of
children an interrupted driver left RUNNING."""

from __future__ import annotations

from typing import Any

from pipelines.common import tracking

PARENT_TAG, ROLE_TAG = "linearizer.sweep", tracking.ROLE_TAG


def attempt_logger() -> type:
    """``MLflowLoggerCallback`` with one child run per *attempt*: when Tune retries a crashed
    trial (``FailureConfig``), the crashed attempt's run ends FAILED and the retry logs into a
    new run, instead of one run silently spanning both."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class AttemptLogger(MLflowLoggerCallback):
        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            run_id = self._trial_runs.pop(trial, None)
            if run_id is not None:
                self.mlflow_util.end_run(run_id=run_id, status="FAILED")

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            if trial not in self._trial_runs:  # a retried attempt: its own run
                self.log_trial_start(trial)
            super().log_trial_result(iteration, trial, result)

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
    """``trial_name -> run`` for the parent's children (the newest run when a resumed trial
    has two)."""
    runs = all_child_runs(experiment_id, parent_id)
    return {r.data.tags.get("trial_name", r.info.run_id): r for r in runs}


def close_orphans(experiment_id: str, parent_id: str) -> int:
    """Children left RUNNING by a killed driver are marked KILLED (the UI would show them live).
    All of them: a trial that was running when its driver died has a newer run after the
    resume, and the older one would hide behind it in ``child_runs``."""
    return tracking.mark_killed(all_child_runs(experiment_id, parent_id))
