"""End to end in a temporary copy: `dvc repro` on a tiny configuration with 2 Ray Train workers
and a 3-trial sweep, then everything read back through the real DVC, MLflow and Parquet APIs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import fresh_mlflow_db

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = """\
data: {name: moons, n_samples: 600, path: data/raw}  # dvc.yaml: ${data.path}
model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}
train: {epochs: 2, batch_size: 64, num_workers: 2}
evaluate: {steps: 20, grid: 16}
mlflow: {}  # the defaults; DVC needs every section a stage declares in params.yaml
sweep:
  num_samples: 3
  max_epochs: 2
  max_concurrent_trials: 2
  workers_per_trial: 0
  space:
    model.rank: {choice: [1, 2]}
    model.depth: {choice: [1, 2, 3]}
    train.lr: {loguniform: [0.001, 0.01]}
  registry_name: e2e-sampler
"""


def copy_project(dest: Path, *, mlflow_db: bool = True) -> None:
    """The project's files (git's view: tracked and unignored) in ``dest``, a git repository of
    its own; with ``mlflow_db``, an empty MLflow database where params.yaml's default tracking
    URI points (its schema made once per test process, not once per stage)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    if mlflow_db:
        fresh_mlflow_db(dest / "mlflow.db")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a cluster or tracking server of the caller's, the venv first on
    PATH, plus ``extra``: subprocesses start their own local Ray and use the project's MLflow."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def sh(cmd: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    r = subprocess.run(
        cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    (proj / "params.yaml").write_text(TINY)
    sh([str(BIN / "dvc"), "repro"], proj)

    # the Parquet contract
    schema = pq.read_schema(proj / "data/prepared/train.parquet")
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert json.loads(meta["shape"]) == [2] and meta["source"] == "lincore.toys.moons"
    assert pq.read_metadata(proj / "data/prepared/test.parquet").num_rows == 120

    # DVC metrics and plots
    metrics = json.loads((proj / "metrics.json").read_text())
    assert metrics["psnr_one_vs_multi_euler"] >= 100 and metrics["psnr_one_vs_multi_rk4"] >= 100
    shown = sh([str(BIN / "dvc"), "metrics", "show", "--json"], proj).stdout
    assert "psnr_one_vs_multi_euler" in shown
    pngs = ("loss.png", "samples.png", "interpolation.png", "steps.png", "directions.png")
    for png in (*pngs, "rank_k.png"):
        assert (proj / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    # the generator's principal directions: its spectrum as a DVC plot, their effect as metrics
    spectrum = (proj / "plots/spectrum.csv").read_text().splitlines()
    assert spectrum[0] == "direction,singular_value" and len(spectrum) == 1 + 2  # D = 2
    assert 1 <= metrics["directions_effective_rank"] <= 2
    assert metrics["directions_pixel_ratio_1"] > 0

    # the MLflow run, read back through the client
    import mlflow
    from mlflow import MlflowClient

    summary = json.loads((proj / "models/summary.json").read_text())
    assert summary["epochs"] == 2
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["model.rank"] == "2" and run.data.params["train.num_workers"] == "2"
    assert run.data.tags["mlflow.runName"] == summary["run_name"]
    assert "test_mmd" in run.data.metrics and "val_loss" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/samples.png", "evaluate/directions.png"} <= names
    mlflow.set_tracking_uri(summary["tracking_uri"])
    loaded = mlflow.pyfunc.load_model(summary["mlflow_model_uri"])
    from pipelines.model.sampler import OneStepSampler

    sampler = loaded.unwrap_python_model().sampler
    assert type(sampler).__name__ == OneStepSampler.__name__
    assert tuple(sampler.sample(5).shape) == (5, 2)

    # the CLI draws from the logged model
    grid = tmp_path / "grid.png"
    env_uri = {"MLFLOW_TRACKING_URI": summary["tracking_uri"]}
    r = subprocess.run(
        [
            str(BIN / "python"),
            "-m",
            "pipelines.commands.cli",
            "sample",
            "--model",
            summary["mlflow_model_uri"],
            "--n",
            "16",
            "--out",
            str(grid),
        ],
        cwd=proj,
        env={**os.environ, **env_uri},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert grid.read_bytes()[:4] == b"\x89PNG"

    check_sweep(proj, summary["tracking_uri"])

    # nothing changed: a second repro runs nothing
    again = sh([str(BIN / "dvc"), "repro"], proj, timeout=60).stdout
    assert "Data and pipelines are up to date" in again


def check_sweep(proj: Path, uri: str) -> None:
    """The sweep stage's outputs, its MLflow parent and children, and the registered model."""
    import mlflow
    import yaml
    from mlflow import MlflowClient

    trials = pq.read_table(proj / "results/sweep/trials.parquet").to_pylist()
    assert len(trials) == 3 and all(t["status"] == "ok" for t in trials)
    assert len({(t["model.rank"], t["model.depth"]) for t in trials}) >= 2
    best = yaml.safe_load((proj / "results/sweep/best_params.yaml").read_text())
    assert best["model"]["rank"] in (1, 2) and best["model"]["depth"] in (1, 2, 3)
    assert best["objective"]["val_mmd"] == min(t["val_mmd"] for t in trials)
    assert (proj / "results/sweep/pareto.png").read_bytes()[:4] == b"\x89PNG"
    shown = sh([str(BIN / "dvc"), "metrics", "show", "--json"], proj).stdout
    assert "best_params.yaml" in shown

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("linearizer")
    parents = client.search_runs([exp.experiment_id], "tags.`linearizer.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{pid}'")
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    by_run = {t["mlflow_run_id"]: t for t in trials}
    for child in children:  # each child carries its trial's params, epochs and final metrics
        t = by_run[child.info.run_id]
        assert child.data.params["model.rank"] == str(t["model.rank"])
        assert child.data.params["model.depth"] == str(t["model.depth"])
        history = client.get_metric_history(child.info.run_id, "val_mmd")
        assert [m.step for m in history] == list(range(1, t["epochs"] + 1))
        assert abs(child.data.metrics["final_mmd"] - t["final_mmd"]) < 1e-12
    version = client.get_model_version_by_alias("e2e-sampler", "champion")
    assert version.run_id == best_run_id(trials)
    mlflow.set_tracking_uri(uri)
    sampler = mlflow.pyfunc.load_model("models:/e2e-sampler@champion").unwrap_python_model().sampler
    assert tuple(sampler.sample(4).shape) == (4, 2)


def best_run_id(trials: list[dict]) -> str:
    return min(trials, key=lambda t: t["val_mmd"])["mlflow_run_id"]
