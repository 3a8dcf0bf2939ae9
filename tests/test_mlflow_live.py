"""MLflow follows a training run live (issue 19): the run exists from the first epoch, each
epoch's metrics arrive as it ends, pictures every ``train.image_every`` epochs, no step twice after
a resume, and a run that fails or whose driver was killed says so. The killed-then-resumed driver
is in ``test_faults.py`` (one MLflow run, continuous history)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh_mlflow_db
from test_faults import FakeSession, moons_config
from test_pipeline_e2e import BIN, clean_env, copy_project

from pipelines import tracking
from pipelines.config import parse
from pipelines.errors import ConfigError
from pipelines.training.loop import fit_epochs

TINY = """\
data: {name: moons, n_samples: 600}
model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}
evaluate: {steps: 10, grid: 16}
"""


@pytest.fixture
def store(tmp_path) -> tuple[Any, str, str]:
    """``(client, tracking URI, experiment id)`` of an empty SQLite store in ``tmp_path``."""
    from mlflow import MlflowClient

    uri = fresh_mlflow_db(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("live", artifact_location=(tmp_path / "art").as_uri())
    return client, uri, exp


def steps(client: Any, run_id: str, key: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def artifacts(client: Any, run_id: str, folder: str = "training") -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, folder))


class WatchingSession(FakeSession):
    """Reads the MLflow run at each report, i.e. while the loop is still training; ``die_at``
    makes the report of that epoch fail (a driver killed after the epoch was logged but before
    its checkpoint was kept)."""

    def __init__(self, client: Any, run_id: str, state: Any = None, die_at: int = -1) -> None:
        super().__init__(state)
        self.client, self.run_id, self.die_at, self.seen = client, run_id, die_at, []

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.seen.append(steps(self.client, self.run_id))
        if metrics["epoch"] == self.die_at:
            raise RuntimeError("driver killed")
        super().report(metrics, state)


def test_each_epoch_reaches_mlflow_as_it_ends_with_pictures_every_n_epochs(moons, store):
    client, uri, exp = store
    run_id = client.create_run(exp).info.run_id
    config = moons_config(moons, 4, image_every=2)
    config["mlflow"] = {"tracking_uri": uri, "run_id": run_id, "grid": 16}
    session = WatchingSession(client, run_id)
    fit_epochs(config, session)
    assert session.seen == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]  # logged before each report
    assert set(client.get_run(run_id).data.metrics) >= {
        "train_loss",
        "val_loss",
        "val_mmd",
        "val_inversion_energy",
        "roundtrip_error",
        "epoch_seconds",
    }
    assert artifacts(client, run_id) == [
        "training/samples_epoch_0002.png",
        "training/samples_epoch_0004.png",
    ]


def test_image_data_get_a_grid_and_an_interpolation_strip_at_their_epochs(store):
    import torch

    from lincore.generators import OneStepFlowMatching
    from pipelines.config import ModelConfig
    from pipelines.model.sampler import OneStepSampler

    client, uri, exp = store
    run_id = client.create_run(exp).info.run_id
    model = OneStepFlowMatching.build(
        (1, 4, 4), ModelConfig(rank=2, depth=1, hidden=8, operator_hidden=8)
    )
    sampler = OneStepSampler(model, steps=5)
    reference = torch.rand(8, 1, 4, 4)
    live = tracking.LiveRun({"tracking_uri": uri, "run_id": run_id, "grid": 9}, image_every=3)
    for epoch in range(3):
        live.epoch_end({"epoch": epoch, "train_loss": 1.0 / (epoch + 1)}, sampler, reference)
    assert steps(client, run_id) == [1, 2, 3]
    assert artifacts(client, run_id) == [
        "training/interpolation_epoch_0003.png",
        "training/samples_epoch_0003.png",
    ]


def test_a_sweep_trial_loop_without_a_run_logs_nothing(moons):
    assert tracking.LiveRun.from_config(moons_config(moons, 1), image_every=1) is None


def test_a_resumed_loop_logs_no_step_twice(moons, store):
    """Killed after logging epoch 2 but before its checkpoint: the resumed loop retrains epoch 2
    (from the epoch-1 checkpoint) and logs only what the run lacks."""
    client, uri, exp = store
    run_id = client.create_run(exp).info.run_id
    config = moons_config(moons, 4, image_every=0)
    config["mlflow"] = {"tracking_uri": uri, "run_id": run_id}
    first = WatchingSession(client, run_id, die_at=1)
    with pytest.raises(RuntimeError, match="driver killed"):
        fit_epochs(config, first)
    assert first.state["epoch"] == 0 and steps(client, run_id) == [1, 2]
    before = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    resumed = WatchingSession(client, run_id, state=first.state)
    fit_epochs(config, resumed)
    assert [r["epoch"] for r in resumed.reports] == [1, 2, 3]  # epoch 2 (index 1) retrained
    for key in ("train_loss", "val_loss", "val_mmd", "roundtrip_error"):
        assert steps(client, run_id, key) == [1, 2, 3, 4], key
    history = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert history[2] == before[2]  # the first attempt's value, and the retrace matches it
    assert artifacts(client, run_id) == []  # image_every: 0 is off


def test_a_failure_ends_the_run_failed_with_its_one_line_reason(store):
    client, _, exp = store
    run_id = client.create_run(exp).info.run_id
    with pytest.raises(ValueError), tracking.failed_on_error(client, run_id):
        raise ValueError("the loss is nan at epoch 3\n  traceback detail")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[tracking.ERROR_TAG] == "ValueError: the loss is nan at epoch 3"


def test_runs_left_running_by_a_dead_driver_are_marked_killed_and_live_ones_kept(store):
    client, _, exp = store
    sleeper = subprocess.Popen(["sleep", "60"])
    dead = tracking.driver_id(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    drivers = {
        "dead": dead,
        "alive": tracking.driver_id(),
        "elsewhere": "another-host 123 1700000000.00",
        "resumed": dead,
    }
    runs = {}
    for name, driver in drivers.items():
        run_id, _ = tracking.open_train_run(client, exp, name, {"train.epochs": 3})
        client.set_tag(run_id, tracking.DRIVER_TAG, driver)
        runs[name] = run_id
    assert tracking.close_orphaned_train_runs(client, exp, keep=runs["resumed"]) == 1
    status = {n: client.get_run(r).info.status for n, r in runs.items()}
    assert status == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "elsewhere": "RUNNING",
        "resumed": "RUNNING",
    }
    assert "killed" in client.get_run(runs["dead"]).data.tags[tracking.ERROR_TAG]
    # --resume reopens its own run (by the Ray run name), with its params kept ...
    previous = tracking.find_train_run(client, exp, "dead")
    run_id, was = tracking.open_train_run(
        client, exp, "dead", {"train.epochs": 5, "train.lr": 0.1}, previous=previous
    )
    reopened = client.get_run(run_id)
    assert run_id == runs["dead"] and was == "KILLED" and reopened.info.status == "RUNNING"
    assert reopened.data.params == {"train.epochs": "3", "train.lr": "0.1"}
    assert reopened.data.tags["linearizer.params_changed_on_resume"] == "train.epochs"
    # ... but not one whose driver still trains on this machine
    with pytest.raises(ConfigError, match="still training"):
        tracking.open_train_run(
            client, exp, "alive", {}, previous=tracking.find_train_run(client, exp, "alive")
        )


def test_image_every_is_checked_and_not_tunable():
    assert parse({}).train.image_every == 5
    with pytest.raises(ConfigError, match=r"train.image_every must be >= 0, got -1"):
        parse({"train": {"image_every": -1}})
    with pytest.raises(ConfigError, match="not a tunable key"):
        parse({"sweep": {"space": {"train.image_every": {"choice": [1, 2]}}}})


def make_project(tmp_path: Path, moons: Path, train: str) -> Path:
    """A copy of the project with ``train: {<train>}`` and the prepared ``moons`` (the same
    data ``prepare`` would write for TINY, without a stage run)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    (proj / "params.yaml").write_text(TINY + f"train: {{{train}}}\n")
    prepared = proj / "data" / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)  # a checkout's own, if it has one
    shutil.copytree(moons, prepared)
    return proj


def train_runs(proj: Path) -> tuple[Any, list[Any]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("linearizer")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], "tags.`linearizer.role` = 'train'")


@pytest.mark.slow
def test_the_run_shows_metrics_and_pictures_while_training_goes_on(tmp_path, moons):
    """Polls MLflow from outside while `python -m pipelines.stages.train` trains, then SIGKILLs the
    driver: its run stays RUNNING until the check every start of the stage makes (below, and
    end to end in the next test) marks it KILLED."""
    proj = make_project(tmp_path, moons, "epochs: 200, batch_size: 64, image_every: 2")
    log = tmp_path / "train.log"
    proc = subprocess.Popen(
        [str(BIN / "python"), "-u", "-m", "pipelines.stages.train"],
        cwd=proj,
        env=clean_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline, seen = time.time() + 150, None
    try:
        while seen is None:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
            client, runs = train_runs(proj)
            for run in runs:
                if run.info.status == "RUNNING" and len(steps(client, run.info.run_id)) >= 2:
                    if "training/samples_epoch_0002.png" in artifacts(client, run.info.run_id):
                        seen = run
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "epoch 200/200" not in log.read_text()  # seen while training was still going on
    assert seen.data.params["train.image_every"] == "2" and seen.data.params["model.rank"] == "2"
    name = seen.data.tags[tracking.RAY_RUN_TAG]
    assert name in log.read_text() and seen.info.run_name == name
    inputs = client.get_run(seen.info.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["moons"]  # data.name, digest: the DVC md5
    logged = steps(client, seen.info.run_id)
    assert logged == list(range(1, len(logged) + 1))  # every epoch, in order, as it ended
    images = artifacts(client, seen.info.run_id)
    assert images and all(int(p[-8:-4]) % 2 == 0 for p in images)  # every 2nd epoch only
    assert client.get_run(seen.info.run_id).info.status == "RUNNING"  # the killed driver's
    assert tracking.close_orphaned_train_runs(client, seen.info.experiment_id) == 1
    killed = client.get_run(seen.info.run_id)
    assert killed.info.status == "KILLED" and "killed" in killed.data.tags[tracking.ERROR_TAG]


@pytest.mark.slow
def test_a_run_with_nan_ends_failed_after_one_attempt_and_says_why(tmp_path, moons):
    """A numerical fault is deterministic: one attempt despite ``max_failures: 2``, one ``error:``
    line naming the fix. Also: the stage's start marks KILLED a run left RUNNING by a killed
    driver."""
    from mlflow import MlflowClient

    proj = make_project(tmp_path, moons, "epochs: 3, batch_size: 64, lr: 1.0e+9, max_failures: 2")
    client = MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.create_experiment("linearizer", (proj / "mlartifacts").as_uri())
    orphan, _ = tracking.open_train_run(client, exp, "train-killed", {})
    sleeper = subprocess.Popen(["sleep", "60"])
    client.set_tag(orphan, tracking.DRIVER_TAG, tracking.driver_id(sleeper.pid))
    sleeper.kill()
    sleeper.wait()
    r = subprocess.run(
        [str(BIN / "python"), "-m", "pipelines.stages.train"],
        cwd=proj,
        env=clean_env(RAY_DEDUP_LOGS="0"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-4000:]
    assert "NumericalFault" in errors[0] and "lower train.lr" in errors[0], errors[0]
    starts = (r.stdout + r.stderr).count("Started training worker group")
    assert starts == 1, (r.stdout + r.stderr)[-4000:]  # max_failures 2 would have made it 3
    assert "marked 1 train run(s) left RUNNING by a killed driver as KILLED" in r.stdout
    assert client.get_run(orphan).info.status == "KILLED"
    _, runs = train_runs(proj)
    (run,) = [r for r in runs if r.info.run_id != orphan]
    assert run.info.status == "FAILED" and run.data.params["train.lr"] == "1000000000.0"
    reason = run.data.tags[tracking.ERROR_TAG]
    assert "\n" not in reason and "failed" in reason and "lower train.lr" in reason, reason
    assert "loss is nan" in reason or "NaN/inf" in reason, reason
