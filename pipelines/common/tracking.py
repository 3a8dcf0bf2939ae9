"""MLflow set-up: the tracking URI and artifact folder made absolute, checked before heavy work.

Default: SQLite ``mlflow.db`` and ``mlartifacts/`` in the project (``mlflow ui`` shows them);
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` points at a server instead.

The train stage's run lives as long as training does: ``open_train_run`` creates (or, for
``--resume``, reopens) it before Ray Train starts, ``LiveRun`` logs each epoch from rank 0
while it trains, ``end_failed`` records a failure, and ``close_orphaned_train_runs`` marks KILLED
the runs whose driver was killed (the UI would show them live forever).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.common.config import ROOT, MlflowConfig, output_path
from pipelines.common.errors import ServiceError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

    from pipelines.common.one_step_sampler import OneStepSampler

PIP_REQUIREMENTS = ["torch==2.13.0", "mlflow==3.17.2", "numpy", "pyarrow==25.0.1"]

ROLE_TAG = "linearizer.role"  # "train" (the train stage), "parent" (a sweep)
RAY_RUN_TAG = "linearizer.ray_run"  # the Ray Train run name: what --resume NAME finds
DRIVER_TAG = "linearizer.driver"  # "<host> <pid> <process start time>" of the training driver
ERROR_TAG = "linearizer.error"  # why a FAILED or KILLED run stopped, in one line
STEP_METRIC = "train_loss"  # logged every epoch: its history says which epochs are logged
# what the MLflow client reads for a server behind auth; Ray workers on other nodes need them too
CLIENT_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
              "MLFLOW_TRACKING_CLIENT_CERT_PATH")  # fmt: skip


def tracking_uri(cfg: MlflowConfig) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(
            output_path(uri.removeprefix("sqlite:///"), "mlflow.tracking_uri")
        )
    return uri


def artifact_location(cfg: MlflowConfig) -> str:
    if "://" in cfg.artifact_location:
        return cfg.artifact_location
    return output_path(cfg.artifact_location, "mlflow.artifact_location").as_uri()


def check_reachable(uri: str) -> None:
    """Fail fast, naming the URI, if runs could not be recorded there."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                if r.status != 200:
                    raise OSError(f"status {r.status}")
        except OSError as err:
            raise ServiceError(
                f"MLflow tracking server {uri} is unreachable ({err}); start it, fix "
                "mlflow.tracking_uri / MLFLOW_TRACKING_URI, or unset it to use sqlite:///mlflow.db"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ServiceError(f"MLflow database folder {folder} is missing or not writable")


def setup(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_sampler_model(
    checkpoint_path: Path, sampler: OneStepSampler, *, registered_name: str | None = None
) -> str:
    """Log ``checkpoint_path`` as a code-defined pyfunc model; returns its model URI.

    ``sampler``, already built from the same weights, supplies the signature's example.
    """
    import mlflow
    import torch

    noise = torch.randn(2, *sampler.event_shape, generator=torch.Generator().manual_seed(0))
    out = sampler.from_noise(noise)
    noise = noise.reshape(2, -1).numpy()
    signature = mlflow.models.infer_signature(noise, out.reshape(2, -1).numpy())
    root = ROOT
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("mlflow_model.py")),
        artifacts={"checkpoint": str(checkpoint_path)},
        code_paths=[str(root / "lincore"), str(root / "pipelines")],
        signature=signature,
        input_example=noise,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_name,
    )
    return info.model_uri


def client_env() -> dict[str, str]:
    """The MLflow client settings of this process (credentials included) that Ray workers on
    other nodes need to log to the same server: the ones set among ``CLIENT_ENV``."""
    return {k: os.environ[k] for k in CLIENT_ENV if k in os.environ}


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

    A new one gets ``params``, ``dataset`` (an ``mlflow.data`` dataset, context "training") and
    the Ray run name as a tag. ``previous`` (``find_train_run``, for ``--resume``) is reopened
    instead (the status it had is returned) and gets the params it lacks; a param whose value
    changed keeps its first value (MLflow params are immutable) and is named in a tag. Refuses
    to reopen a run whose driver still trains on this machine.
    """
    from mlflow.entities import DatasetInput, InputTag, Param, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from pipelines.common.errors import ConfigError

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
            print(f"warning: resuming {ray_run} with other values of {', '.join(changed)}; its "
                  "MLflow params keep the first ones", file=sys.stderr)  # fmt: skip
        values = {k: v for k, v in values.items() if k not in old.data.params}
    else:
        run = client.create_run(
            experiment_id, run_name=ray_run, tags={ROLE_TAG: "train", RAY_RUN_TAG: ray_run}
        )
        run_id, status = run.info.run_id, None
        if dataset is not None:
            context = InputTag(MLFLOW_DATASET_CONTEXT, "training")
            client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), [context])])
    items = sorted(values.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id, status


def end_failed(client: MlflowClient, run_id: str, err: BaseException) -> None:
    """End the run FAILED (KILLED for Ctrl-C) with the error's first line as ``ERROR_TAG``; never
    raises (the error being handled is the one to report)."""
    from pipelines.common.errors import LinearizerError

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
    missing = [m for row in history if int(row["epoch"]) + 1 not in logged
               for m in epoch_metrics(row)]  # fmt: skip
    for i in range(0, len(missing), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=missing[i : i + 1000])
    return len(missing)


class LiveRun:
    """Rank 0's line to the train stage's MLflow run while Ray Train trains: each epoch's
    metrics as the epoch ends and, every ``image_every`` epochs, a sample grid (and, for images,
    an interpolation strip) under ``training/``.

    Steps the run already has are skipped: a resumed run (or a restarted worker group) retrains
    the epochs after its last checkpoint, which may have been logged before the interruption.
    Logging is best effort: a tracking hiccup is reported and training goes on.
    """

    def __init__(self, spec: dict[str, Any], image_every: int) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(spec["tracking_uri"])
        self.run_id: str = spec["run_id"]
        self.grid, self.image_every = int(spec.get("grid", 64)), image_every
        try:
            self.logged_through = max(logged_steps(self.client, self.run_id), default=0)
        except Exception as err:  # unreadable now: log every epoch rather than stop training
            self._warn(f"cannot read the run's metric history ({err})")
            self.logged_through = 0

    @staticmethod
    def _warn(problem: str) -> None:
        print(f"warning: MLflow: {problem}; training goes on", file=sys.stderr, flush=True)

    @classmethod
    def from_config(cls, config: dict[str, Any], image_every: int) -> LiveRun | None:
        """The live run named by ``config["mlflow"]``; ``None`` without one (sweep trials, whose
        child runs Tune's MLflow callback keeps)."""
        spec = config.get("mlflow")
        return cls(spec, image_every) if spec else None

    def epoch_end(
        self, metrics: dict[str, Any], sampler: OneStepSampler, reference: torch.Tensor
    ) -> None:
        """Log the epoch that just ended (``metrics["epoch"]``, 0-based) at step epoch + 1."""
        step = int(metrics["epoch"]) + 1
        if step <= self.logged_through:
            return
        try:
            self.client.log_batch(self.run_id, metrics=epoch_metrics(metrics))
            if self.image_every and step % self.image_every == 0:
                self.log_images(step, sampler, reference)
        except Exception as err:  # train.py logs the epochs missing at the end
            self._warn(f"logging epoch {step} failed ({err})")
        self.logged_through = step

    def log_images(self, step: int, sampler: OneStepSampler, reference: torch.Tensor) -> None:
        """A fixed-seed sample grid from ``sampler`` (the collapse the validation metrics
        already built) and, for images, four interpolation strips between reference pairs."""
        import matplotlib.pyplot as plt
        import torch

        from pipelines.common import figures

        ref = reference.detach().cpu()
        image = len(sampler.event_shape) > 1
        scatter = tuple(sampler.event_shape) == (2,)  # 2-D points: a cloud, not a grid
        pairs = min(4, len(ref) // 2)
        figs = {}
        try:
            with torch.no_grad():
                x: np.ndarray = sampler.sample(1000 if scatter else self.grid, seed=0).numpy()
                figs[f"training/samples_epoch_{step:04d}.png"] = figures.samples(
                    x, reference=ref.numpy(), title=f"one-step samples, epoch {step}"
                )
                if image and pairs:
                    alphas = torch.linspace(0, 1, 9)
                    a, b = ref[:pairs], ref[pairs : 2 * pairs]
                    path = sampler.model.interpolate(a, b, alphas, sampler.collapsed)
                    figs[f"training/interpolation_epoch_{step:04d}.png"] = figures.interpolation(
                        path.numpy(), title=f"interpolation through the noise, epoch {step}"
                    )
            for name, fig in figs.items():
                self.client.log_figure(self.run_id, fig, name)
        finally:
            for fig in figs.values():
                plt.close(fig)
