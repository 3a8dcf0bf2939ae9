"""MLflow tracking: the tracking URI and artifact folder made absolute, checked before heavy work.

Default: SQLite ``mlflow.db`` and ``mlartifacts/`` in the project (``mlflow ui`` shows them);
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` points at a server instead.

The train stage's run lives as long as training does: ``open_train_run`` creates (or, for
``--resume``, reopens) it before Ray Train starts, ``LiveRun`` logs each epoch from rank 0
while it trains, ``end_failed`` records a failure, and ``close_orphaned_train_runs`` marks KILLED
the runs whose driver was killed (the UI would show them live forever).

``server``: where runs go; ``runs``: the train run's life; ``live_run``: per-epoch logging from
rank 0; ``sampler_model``: the pyfunc model; ``dataset``: the prepared data as a run's dataset
input (digest: its DVC md5).
"""

from pipelines.tracking.dataset import dataset_input, log_dataset
from pipelines.tracking.live_run import LiveRun
from pipelines.tracking.runs import (
    DRIVER_TAG,
    ERROR_TAG,
    RAY_RUN_TAG,
    ROLE_TAG,
    STEP_METRIC,
    close_orphaned_train_runs,
    driver_alive,
    driver_id,
    end_failed,
    epoch_metrics,
    failed_on_error,
    find_train_run,
    is_epoch_metric,
    log_missing_epochs,
    logged_steps,
    mark_killed,
    open_train_run,
    start_train_run,
)
from pipelines.tracking.sampler_model import log_sampler_model, serving_requirements
from pipelines.tracking.server import (
    MLFLOW_ENV,
    artifact_location,
    check_reachable,
    setup,
    tracking_uri,
)

__all__ = [
    "DRIVER_TAG",
    "ERROR_TAG",
    "MLFLOW_ENV",
    "RAY_RUN_TAG",
    "ROLE_TAG",
    "STEP_METRIC",
    "LiveRun",
    "artifact_location",
    "check_reachable",
    "close_orphaned_train_runs",
    "dataset_input",
    "driver_alive",
    "driver_id",
    "end_failed",
    "epoch_metrics",
    "failed_on_error",
    "find_train_run",
    "is_epoch_metric",
    "log_dataset",
    "log_missing_epochs",
    "log_sampler_model",
    "logged_steps",
    "mark_killed",
    "open_train_run",
    "serving_requirements",
    "setup",
    "start_train_run",
    "tracking_uri",
]
