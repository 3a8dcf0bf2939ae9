"""The train stage's MLflow run over its life: opened (or reopened by ``--resume``) before the
first epoch, each epoch's metrics, ended FAILED with its reason, marked KILLED when its driver
died."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

ROLE_TAG = "linearizer.role"  # "train" (the train stage), "parent" (a sweep)
RAY_RUN_TAG = "linearizer.ray_run"  # the Ray Train run name: what --resume NAME finds
DRIVER_TAG = "linearizer.driver"  # "<host> <pid> <process start time>" of the training driver
ERROR_TAG = "linearizer.error"  # why a FAILED or KILLED run stopped, in one line
STEP_METRIC = "train_loss"  # logged every epoch: its history says which epochs are logged
# what the MLflow client reads for a server behind auth; Ray workers on other nodes need them too


def is_epoch_metric(key: str) -> bool:
    """The per-epoch numbers worth a curve (``epoch`` and ``num_params`` are not)."""
    return key.startswith(("train_", "val_", "roundtrip")) or key == "epoch_seconds"


def epoch_metrics(row: dict[str, Any], timestamp_ms: int | None = None) -> list[Metric]:
    """One epoch's row of the training history as MLflow metrics at step ``epoch + 1``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    step = int(row["epoch"]) + 1
    return [Metric(k, float(v), now, step) for k, v in row.items() if is_epoch_metric(k)]


def logged_steps(client: MlflowClient, run_id: str) -> set[int]:
    """The epoch steps (``epoch + 1``) the run already has metrics for."""
    return {m.step for m in client.get_metric_history(run_id, STEP_METRIC)}


def mark_killed(runs: Iterable[Run], client: MlflowClient | None = None) -> int:
    """Mark KILLED those of ``runs`` still RUNNING; returns how many. For runs whose driver was
    killed: nothing else would end them, and the UI would show them live forever."""
    from mlflow import MlflowClient

    client, closed = client or MlflowClient(), 0
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed


def driver_id(pid: int | None = None) -> str:
    """``"<host> <pid> <start time>"``: names a process so that a later one can tell whether it
    still runs (the start time tells a reused pid apart)."""
    import psutil

    proc = psutil.Process(pid)
    return f"{socket.gethostname()} {proc.pid} {proc.create_time():.2f}"


def driver_alive(tag: str | None) -> bool | None:
    """Whether the driver named by a ``DRIVER_TAG`` value still runs: ``None`` when this machine
    cannot tell (another host, or no tag)."""
    import psutil

    parts = (tag or "").split()
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(parts[1]))
        return abs(proc.create_time() - float(parts[2])) < 1.0 and proc.is_running()
    except (psutil.Error, ValueError):
        return False


def find_train_run(client: MlflowClient, experiment_id: str, ray_run: str) -> Run | None:
    """The train stage's run for the Ray run ``ray_run`` (the newest, should there be two)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RAY_RUN_TAG}` = '{ray_run}' and tags.`{ROLE_TAG}` = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def close_orphaned_train_runs(
    client: MlflowClient, experiment_id: str, *, keep: str | None = None
) -> int:
    """Mark KILLED the train runs left RUNNING by a driver that no longer runs (on this
    machine; a run whose driver lived elsewhere is left alone: it may still be training);
    ``keep`` (the run ``--resume`` continues) is not touched."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'train' and attributes.status = 'RUNNING'",
    )
    dead = [
        r
        for r in runs
        if r.info.run_id != keep and driver_alive(r.data.tags.get(DRIVER_TAG)) is False
    ]
    for run in dead:
        client.set_tag(run.info.run_id, ERROR_TAG, "its training driver was killed")
    return mark_killed(dead, client)


def open_train_run(
    client: MlflowClient,
    experiment_id: str,
    ray_run: str,
    params: dict[str, Any],
    *,
    previous: Run | None = None,
    dataset: Any = None,
) -> tuple[str, str | None]:
    """The train stage's run, RUNNING from before the first epoch: ``(run_id, status before)``.

    A new one gets ``params``, ``dataset`` (a ``DatasetInput``: ``tracking.dataset_input``) and
    the Ray run name as a tag. ``previous`` (``find_train_run``, for ``--resume``) is reopened
    instead (the status it had is returned) and gets the params it lacks; a param whose value
    changed keeps its first value (MLflow params are immutable) and is named in a tag. Refuses
    to reopen a run whose driver still trains on this machine.
    """
    from mlflow.entities import Param, RunTag

    from pipelines.errors import ConfigError

    old = previous
    tags = {DRIVER_TAG: driver_id()}
    values = {k: str(v) for k, v in params.items()}
    if old is not None:
        if old.info.status == "RUNNING" and driver_alive(old.data.tags.get(DRIVER_TAG)):
            raise ConfigError(
                f"run {ray_run} is still training (driver {old.data.tags[DRIVER_TAG]}); stop it "
                "before resuming it"
            )
        run_id, status = old.info.run_id, old.info.status
        client.update_run(run_id, status="RUNNING")
        changed = sorted(k for k, v in values.items() if old.data.params.get(k, v) != v)
        if changed:
            tags["linearizer.params_changed_on_resume"] = ", ".join(changed)[:5000]
            print(
                f"warning: resuming {ray_run} with other values of {', '.join(changed)}; its "
                "MLflow params keep the first ones",
                file=sys.stderr,
            )
        values = {k: v for k, v in values.items() if k not in old.data.params}
    else:
        run = client.create_run(
            experiment_id, run_name=ray_run, tags={ROLE_TAG: "train", RAY_RUN_TAG: ray_run}
        )
        run_id, status = run.info.run_id, None
        if dataset is not None:
            client.log_inputs(run_id, [dataset])
    items = sorted(values.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id, status


def end_failed(client: MlflowClient, run_id: str, err: BaseException) -> None:
    """End the run FAILED (KILLED for Ctrl-C) with the error's first line as ``ERROR_TAG``; never
    raises (the error being handled is the one to report)."""
    from pipelines.errors import LinearizerError

    lines = str(err).strip().splitlines()
    reason = lines[0] if lines else repr(err)
    if not isinstance(err, LinearizerError):  # a user-facing error already says what it is
        reason = f"{type(err).__name__}: {reason}"
    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    try:
        client.set_tag(run_id, ERROR_TAG, reason[:5000])
        client.set_terminated(run_id, status)
    except Exception as log_err:  # the tracking store itself may be what failed
        print(f"warning: could not mark MLflow run {run_id} {status}: {log_err}", file=sys.stderr)


@contextlib.contextmanager
def failed_on_error(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Any error inside ends the run FAILED (``end_failed``) and goes on up."""
    try:
        yield
    except BaseException as err:
        end_failed(client, run_id, err)
        raise


def log_missing_epochs(client: MlflowClient, run_id: str, history: list[dict[str, Any]]) -> int:
    """Log the epochs of ``history`` the run lacks (a tracking hiccup during training, or epochs
    trained before the run was tracked live), and only those: no step is logged twice."""
    logged = logged_steps(client, run_id)
    missing = [
        m for row in history if int(row["epoch"]) + 1 not in logged for m in epoch_metrics(row)
    ]
    for i in range(0, len(missing), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=missing[i : i + 1000])
    return len(missing)


def start_train_run(
    client: MlflowClient,
    experiment_id: str,
    ray_run: str,
    params: dict[str, Any],
    *,
    resume: bool,
    dataset: Any = None,
) -> tuple[str, str | None]:
    """The train stage's run before its first epoch: the one of ``ray_run`` reopened when
    resuming (``find_train_run``), else a new one; train runs an earlier killed driver left
    RUNNING are marked KILLED first. ``(run_id, status before)``, as ``open_train_run``."""
    resumed = find_train_run(client, experiment_id, ray_run) if resume else None
    closed = close_orphaned_train_runs(
        client, experiment_id, keep=resumed.info.run_id if resumed else None
    )
    if closed:
        print(f"marked {closed} train run(s) left RUNNING by a killed driver as KILLED")
    return open_train_run(client, experiment_id, ray_run, params, previous=resumed, dataset=dataset)
