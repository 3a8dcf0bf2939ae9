"""Faults injected on this machine: numerical blow-ups, a resumed run retracing an undisturbed
one, a stage killed mid-write, a crashed sweep trial retried, a killed training driver resumed,
and (slow) a training worker killed mid-training on a two-node cluster."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from test_pipeline_e2e import BIN, clean_env, copy_project, sh

from pipelines.common.config import parse
from pipelines.common.fault_injection import InjectedFault
from pipelines.training.driver import loop_config
from pipelines.training.loop import NumericalFault, fit_epochs

ROOT = Path(__file__).resolve().parents[1]


class FakeSession:
    """``Session`` without Ray: records what the loop reports."""

    world, rank, device = 1, 0, torch.device("cpu")

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state, self.reports = state, []

    def latest_state(self) -> dict[str, Any] | None:
        return self.state

    def prepare(self, loader: Any, model: Any) -> tuple[Any, Any]:
        return loader, model

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        self.state = copy.deepcopy(state)


def moons_config(moons: Path, epochs: int = 3, **train: Any) -> dict[str, Any]:
    cfg = parse({
        "model": {"rank": 2, "depth": 2, "hidden": 16, "operator_hidden": 16},
        "train": {"epochs": epochs, "batch_size": 64, **train},
        "evaluate": {"steps": 10},
    })  # fmt: skip
    return loop_config(cfg, moons / "train.parquet", moons / "val.parquet")


def test_non_finite_loss_stops_the_run_naming_the_step_and_the_fix(moons):
    with pytest.raises(NumericalFault, match=r"at epoch 0, step \d+.*: lower train.lr"):
        fit_epochs(moons_config(moons, lr=1e9), FakeSession())


def test_a_network_no_longer_invertible_in_float32_stops_the_run(moons):
    session = FakeSession()
    with pytest.raises(
        NumericalFault,
        match="no longer invertible in float32 at "
        r"epoch 0: max\|g\^-1\(g\(x\)\) - x\| = .* > train.max_roundtrip_error",
    ):
        fit_epochs(moons_config(moons, max_roundtrip_error=1e-15), session)
    assert session.reports == []  # nothing reported from the broken epoch


def test_a_resumed_run_retraces_an_undisturbed_one(moons, tmp_path, monkeypatch):
    """Each epoch's randomness (and learning rate) depends on (seed, rank, epoch, step) only: a
    3-epoch run crashing after epoch 2, resumed from its checkpoint, ends bit for bit where
    3 epochs straight do."""
    straight = FakeSession()
    fit_epochs(moons_config(moons, 3), straight)
    first = FakeSession()
    monkeypatch.setenv("LINEARIZER_FAULT", "epoch:1")
    monkeypatch.setenv("LINEARIZER_FAULT_DIR", str(tmp_path))
    with pytest.raises(InjectedFault, match="injected fault at epoch 1"):
        fit_epochs(moons_config(moons, 3), first)
    assert [r["epoch"] for r in first.reports] == [0, 1]
    resumed = FakeSession(first.state)
    fit_epochs(moons_config(moons, 3), resumed)
    assert len(resumed.reports) == 1 and resumed.reports[0]["epoch"] == 2  # only what was left
    for key in ("train_loss", "val_loss", "val_mmd", "roundtrip_error"):
        assert resumed.reports[0][key] == straight.reports[-1][key]
    for name, w in straight.state["model"].items():
        assert torch.equal(w, resumed.state["model"][name]), name
    assert straight.reports[-1]["roundtrip_error"] > 0  # the round trip is monitored each epoch


@pytest.fixture
def project(tmp_path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    (proj / "params.yaml").write_text(
        "data: {name: moons, n_samples: 600}\n"
        "model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}\n"
        "train: {epochs: 4, batch_size: 64}\nevaluate: {steps: 10}\n"
    )
    return proj


@pytest.mark.slow
def test_a_stage_killed_mid_write_leaves_no_half_written_output_and_reruns(project, tmp_path):
    dvc = str(BIN / "dvc")
    sh([dvc, "repro", "prepare"], project, timeout=120)
    before = (project / "data/prepared/stats.json").read_text()
    params = (project / "params.yaml").read_text().replace("n_samples: 600", "n_samples: 700")
    (project / "params.yaml").write_text(params)
    killed = subprocess.run(
        [dvc, "repro", "prepare"], cwd=project, capture_output=True, text=True, timeout=120,
        env=clean_env(LINEARIZER_FAULT="write:stats.json",
                            LINEARIZER_FAULT_DIR=str(tmp_path)),
    )  # fmt: skip
    assert killed.returncode != 0  # SIGKILLed after writing the temporary file
    folder = project / "data/prepared"
    assert list(folder.glob(".stats.json.*.tmp"))  # the kill left its temporary file ...
    assert not (folder / "stats.json").exists() or (folder / "stats.json").read_text() in (
        before,
        (folder / "stats.json").read_text(),
    )
    for part in folder.glob("*.parquet"):  # ... but every visible output is whole
        pq.read_table(part)
    status = sh([dvc, "status", "prepare"], project, timeout=60).stdout
    assert "changed" in status  # DVC knows the stage did not finish
    sh([dvc, "repro", "prepare"], project, timeout=120)  # the next repro runs it again
    stats = json.loads((folder / "stats.json").read_text())
    assert sum(stats["rows"].values()) == 700
    assert not list(folder.glob(".*.tmp"))  # and clears the leftovers
    assert "up to date" in sh([dvc, "status", "prepare"], project, timeout=60).stdout


@pytest.mark.slow
def test_a_killed_training_driver_resumes_without_retraining_finished_epochs(project, tmp_path):
    sh([str(BIN / "python"), "-m", "pipelines.stages.prepare"], project, timeout=120)
    log = tmp_path / "train.log"
    proc = subprocess.Popen(
        [str(BIN / "python"), "-u", "-m", "pipelines.stages.train"], cwd=project, env=clean_env(),
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 180
    try:
        while "epoch 2/4" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    name = next(ln.split()[1].rstrip(":") for ln in log.read_text().splitlines()
                if ln.startswith("training "))  # fmt: skip
    resumed = sh([str(BIN / "python"), "-m", "pipelines.stages.train", "--resume", name], project,
                 timeout=300)  # fmt: skip
    out = resumed.stdout + resumed.stderr
    assert "epoch 1/4" not in out and "epoch 4/4" in out  # finished epochs were not retrained
    summary = json.loads((project / "models/summary.json").read_text())
    assert summary["run_name"] == name and summary["epochs"] == 4
    # one MLflow run throughout: reopened by --resume, its history continuous, no step twice
    from mlflow import MlflowClient

    assert "continued (it was RUNNING)" in out
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    exp = client.get_experiment_by_name("linearizer")
    (run,) = client.search_runs([exp.experiment_id], "tags.`linearizer.role` = 'train'")
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["linearizer.ray_run"] == name
    for key in ("train_loss", "val_loss", "val_mmd", "roundtrip_error"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3, 4], key


@pytest.mark.slow
def test_a_crashed_sweep_trial_is_retried_and_its_failed_attempt_recorded(project, tmp_path):
    from mlflow import MlflowClient

    (project / "params.yaml").write_text(
        (project / "params.yaml").read_text()
        + "sweep:\n  num_samples: 2\n  max_epochs: 2\n  workers_per_trial: 0\n"
        "  max_concurrent_trials: 1\n  scheduler: none\n"
        "  space: {model.rank: {choice: [1, 2]}}\n"
    )
    sh([str(BIN / "python"), "-m", "pipelines.stages.prepare"], project, timeout=120)
    r = subprocess.run(
        [str(BIN / "python"), "-m", "sweeps", "--name", "retry"], cwd=project,
        capture_output=True, text=True, timeout=300,
        env=clean_env(LINEARIZER_FAULT="epoch:0", LINEARIZER_FAULT_DIR=str(tmp_path)),
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "injected fault at epoch 0" in r.stdout + r.stderr
    table = pq.read_table(project / "results/sweep/trials.parquet").to_pylist()
    assert [t["status"] for t in table] == ["ok", "ok"] and all(t["epochs"] == 2 for t in table)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("linearizer")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`linearizer.role` = 'parent'")
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    statuses = sorted(c.info.status for c in children)
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]  # the crashed attempt, two successes


@pytest.mark.slow
def test_a_killed_training_worker_costs_one_checkpoint_interval_not_the_run(tmp_path):
    out = tmp_path / "faults.json"
    r = subprocess.run(
        [str(BIN / "python"), "-m", "benchmarks.faults", "--epochs", "4", "--kill-after", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=500, env=clean_env(),
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    result = json.loads(out.read_text())
    assert result["disturbed"]["killed"] and not result["clean"]["killed"]
    assert result["disturbed"]["epochs"] == result["clean"]["epochs"] == 4
    assert result["max_relative_metric_gap"] < 1e-6  # the resumed run retraced the clean one


def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    from pipelines.common.atomic import write_json

    path = write_json(tmp_path / "out.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert not list(tmp_path.glob(".*.tmp"))
