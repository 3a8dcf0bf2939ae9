"""Faults injected on this machine: numerical blow-ups, a resumed run retracing an undisturbed
one, a stage killed mid-write, a crashed sweep trial retried, a killed training driver resumed,
and (slow) a training worker killed mid-training on a two-node cluster.

Faults come through ``LINEARIZER_FAULT`` and the hooks ``fault_injection.install()`` puts on the
two seams (``hooks.BEFORE_REPLACE``, ``hooks.EPOCH_END``), as in the real entry points."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from test_pipeline_e2e import BIN, clean_env, copy_project, sh

from pipelines import atomic
from pipelines.config import parse
from pipelines.faults import hooks
from pipelines.faults import injection as fault_injection
from pipelines.faults.injection import InjectedFault
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

    def wrap_model(self, model: Any, *, find_unused: bool = False) -> Any:
        return model

    def shard_loader(self, loader: Any) -> Any:
        return loader

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        self.state = copy.deepcopy(state)


def moons_config(moons: Path, epochs: int = 3, **train: Any) -> dict[str, Any]:
    cfg = parse(
        {
            "model": {"rank": 2, "depth": 2, "hidden": 16, "operator_hidden": 16},
            "train": {"epochs": epochs, "batch_size": 64, **train},
            "evaluate": {"steps": 10},
        }
    )
    return loop_config(cfg, moons / "train.parquet", moons / "val.parquet")


@pytest.fixture
def fault(tmp_path, monkeypatch):
    """``fault("epoch:1")``: ``LINEARIZER_FAULT`` set and installed in this process, as an entry
    point does, on hook lists of this test's own (restored afterwards)."""
    monkeypatch.setattr(hooks, "BEFORE_REPLACE", [])
    monkeypatch.setattr(hooks, "EPOCH_END", [])
    monkeypatch.setenv("LINEARIZER_FAULT_DIR", str(tmp_path / "faults"))

    def set_fault(spec: str) -> None:
        monkeypatch.setenv("LINEARIZER_FAULT", spec)
        fault_injection.install()

    yield set_fault
    monkeypatch.delenv("LINEARIZER_FAULT")
    fault_injection.install()  # unregisters the hooks


def test_fault_injection_is_inert_unless_asked_and_installs_once(fault, monkeypatch):
    monkeypatch.delenv("LINEARIZER_FAULT", raising=False)
    fault_injection.install()
    assert hooks.BEFORE_REPLACE == [] and hooks.EPOCH_END == []
    fault("epoch:1")
    fault_injection.install()  # a second entry point in the same process (a reused actor)
    assert len(hooks.EPOCH_END) == 1 and hooks.BEFORE_REPLACE == []
    hooks.EPOCH_END[0](0)  # another epoch: nothing
    with pytest.raises(InjectedFault, match="injected fault at epoch 1"):
        hooks.EPOCH_END[0](1)
    hooks.EPOCH_END[0](1)  # fired once: a retry runs clean
    fault("write:stats.json")
    assert hooks.EPOCH_END == [] and len(hooks.BEFORE_REPLACE) == 1
    monkeypatch.setenv("LINEARIZER_FAULT", "epochs:1")  # a typo must not pass silently
    with pytest.raises(ValueError, match="expected epoch:<n> or write:<file name>"):
        fault_injection.install()


def test_a_write_interrupted_before_the_replace_leaves_the_previous_file(tmp_path, monkeypatch):
    """``BEFORE_REPLACE`` runs once the temporary file is complete; anything that stops the
    writer there leaves the target exactly as it was."""
    target = atomic.write_json(tmp_path / "stats.json", {"rows": 600})
    before = target.read_text()
    seen = []

    def interrupt(path: Path) -> None:
        (tmp,) = tmp_path.glob(".stats.json.*.tmp")
        seen.append((path, json.loads(tmp.read_text())))
        raise KeyboardInterrupt

    monkeypatch.setattr(hooks, "BEFORE_REPLACE", [interrupt])
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json(target, {"rows": 700})
    assert seen == [(target, {"rows": 700})]  # the hook saw the whole new file ...
    assert target.read_text() == before  # ... and the target is still the old one
    assert not list(tmp_path.glob(".*.tmp"))


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


def test_a_resumed_run_retraces_an_undisturbed_one(moons, fault):
    """Each epoch's randomness (and learning rate) depends on (seed, rank, epoch, step) only: a
    3-epoch run crashing after epoch 2, resumed from its checkpoint, ends bit for bit where
    3 epochs straight do."""
    straight = FakeSession()
    fit_epochs(moons_config(moons, 3), straight)
    first = FakeSession()
    fault("epoch:1")
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
        "data: {name: moons, n_samples: 600, path: data/raw}\n"  # dvc.yaml: ${data.path}
        "model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}\n"
        "train: {epochs: 4, batch_size: 64}\nevaluate: {steps: 10}\n"
    )
    return proj


def test_a_stage_killed_mid_write_leaves_the_previous_file_whole(tmp_path):
    """The atomic writer's guarantee, through a real entry point (``entry.cli`` installs the
    fault): SIGKILLed between writing ``stats.json``'s temporary file and the rename, the stage
    leaves the previous ``stats.json`` exactly as it was, next to its complete temporary file."""
    out = tmp_path / "prepared"

    def prepare(n_samples: int, **env: str) -> subprocess.CompletedProcess:
        params = tmp_path / "params.yaml"
        params.write_text(f"data: {{name: moons, n_samples: {n_samples}}}\n")
        cmd = [str(BIN / "python"), "-m", "pipelines.stages.prepare"]
        cmd += ["--params", str(params), "--out", str(out)]
        return subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env(**env)
        )

    assert prepare(600).returncode == 0
    before = (out / "stats.json").read_text()
    killed = prepare(
        700, LINEARIZER_FAULT="write:stats.json", LINEARIZER_FAULT_DIR=str(tmp_path / "faults")
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "stats.json").read_text() == before  # the old file, byte for byte
    (tmp,) = out.glob(".stats.json.*.tmp")  # the new one, complete, never renamed
    assert sum(json.loads(tmp.read_text())["rows"].values()) == 700
    assert sum(pq.read_metadata(part).num_rows for part in out.glob("*.parquet")) == 700
    assert prepare(700).returncode == 0  # a rerun replaces it and clears the leftover
    assert sum(json.loads((out / "stats.json").read_text())["rows"].values()) == 700
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_a_stage_killed_mid_write_leaves_no_half_written_output_and_reruns(project, tmp_path):
    dvc = str(BIN / "dvc")
    sh([dvc, "repro", "prepare"], project, timeout=120)
    params = (project / "params.yaml").read_text().replace("n_samples: 600", "n_samples: 700")
    (project / "params.yaml").write_text(params)
    killed = subprocess.run(
        [dvc, "repro", "prepare"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(LINEARIZER_FAULT="write:stats.json", LINEARIZER_FAULT_DIR=str(tmp_path)),
    )
    assert killed.returncode != 0  # SIGKILLed after writing the temporary file
    folder = project / "data/prepared"
    # DVC removes a stage's outputs before it runs the stage, so no old stats.json is left to
    # keep (the test above checks that one outside DVC); the killed writer never renamed its
    # complete temporary file, so there is no stats.json at all, never a partial one
    assert not (folder / "stats.json").exists()
    (tmp,) = folder.glob(".stats.json.*.tmp")
    assert sum(json.loads(tmp.read_text())["rows"].values()) == 700
    for part in folder.glob("*.parquet"):  # every visible output is whole
        pq.read_table(part)
    status = sh([dvc, "status", "prepare"], project, timeout=60).stdout
    assert "changed" in status  # DVC knows the stage did not finish
    sh([dvc, "repro", "prepare"], project, timeout=120)  # the next repro runs it again
    stats = json.loads((folder / "stats.json").read_text())
    assert sum(stats["rows"].values()) == 700
    assert not list(folder.glob(".*.tmp"))  # and clears the leftovers
    assert "up to date" in sh([dvc, "status", "prepare"], project, timeout=60).stdout


def run_name(log: str) -> str | None:
    """The Ray run name the train stage printed first (``training <name>: ...``), if yet."""
    names = (ln.split()[1].rstrip(":") for ln in log.splitlines() if ln.startswith("training "))
    return next(names, None)


def registered_checkpoints(project: Path, log: Path) -> int:
    """The checkpoints Ray Train's controller has registered for the run ``log`` names: what a
    resumed run starts from (``checkpoint_manager_snapshot.json`` in its storage folder)."""
    name = run_name(log.read_text())
    if name is None:
        return 0
    snapshot = project / "ray_results" / name / "checkpoint_manager_snapshot.json"
    try:
        return len(json.loads(snapshot.read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):  # not written yet, or being written
        return 0


@pytest.mark.slow
def test_a_killed_training_driver_resumes_without_retraining_finished_epochs(
    project, tmp_path, moons
):
    epochs = 8  # room to kill the driver between registered checkpoints and the run's end
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 4", f"epochs: {epochs}"))
    shutil.copytree(moons, project / "data/prepared")  # what prepare writes for these params
    log = tmp_path / "train.log"
    proc = subprocess.Popen(
        [str(BIN / "python"), "-u", "-m", "pipelines.stages.train"],
        cwd=project,
        env=clean_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 180
    try:
        # killed once the controller has registered two checkpoints (a printed epoch is not
        # yet a registered one: on a loaded machine the controller lags the workers)
        while registered_checkpoints(project, log) < 2:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = log.read_text()
    assert f"epoch {epochs}/{epochs}" not in done, "the run ended before the driver was killed"
    name = run_name(done)
    assert name is not None, done[-3000:]
    resumed = sh(
        [str(BIN / "python"), "-m", "pipelines.stages.train", "--resume", name],
        project,
        timeout=300,
    )
    out = resumed.stdout + resumed.stderr
    # finished epochs were not retrained
    assert f"epoch 1/{epochs}" not in out and f"epoch {epochs}/{epochs}" in out
    summary = json.loads((project / "models/summary.json").read_text())
    assert summary["run_name"] == name and summary["epochs"] == epochs
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
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key


@pytest.mark.slow
def test_a_crashed_sweep_trial_is_retried_and_its_failed_attempt_recorded(project, tmp_path, moons):
    from mlflow import MlflowClient

    (project / "params.yaml").write_text(
        (project / "params.yaml").read_text().replace("epochs: 4", "epochs: 2")  # no retrain
        + "sweep:\n  num_samples: 2\n  max_epochs: 2\n  workers_per_trial: 0\n"
        "  max_concurrent_trials: 1\n  scheduler: none\n"
        "  space: {model.rank: {choice: [1, 2]}}\n"
    )
    shutil.copytree(moons, project / "data/prepared")  # what prepare writes for these params
    r = subprocess.run(
        [str(BIN / "python"), "-m", "sweeps", "--name", "retry"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(LINEARIZER_FAULT="epoch:0", LINEARIZER_FAULT_DIR=str(tmp_path)),
    )
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
    cmd = [str(BIN / "python"), "-m", "benchmarks.faults"]
    cmd += ["--epochs", "4", "--kill-after", "1", "--json", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500, env=clean_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    result = json.loads(out.read_text())
    assert result["disturbed"]["killed"] and not result["clean"]["killed"]
    assert result["disturbed"]["workers_killed"] == 1  # this cluster's one worker, no other's
    assert result["disturbed"]["epochs"] == result["clean"]["epochs"] == 4
    assert result["max_relative_metric_gap"] < 1e-6  # the resumed run retraced the clean one


def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    path = atomic.write_json(tmp_path / "out.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert not list(tmp_path.glob(".*.tmp"))
