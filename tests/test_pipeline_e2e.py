"""End to end in a temporary copy: `dvc repro` on a tiny configuration with 2 Ray Train workers,
then everything read back through the real DVC, MLflow and Parquet APIs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = """\
data: {name: moons, n_samples: 600}
model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}
train: {epochs: 2, batch_size: 64, num_workers: 2}
evaluate: {steps: 20, grid: 16}
"""


def copy_project(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def sh(cmd: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
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
    for png in ("loss.png", "samples.png", "interpolation.png", "steps.png"):
        assert (proj / "plots" / png).read_bytes()[:4] == b"\x89PNG"

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
    assert "evaluate/samples.png" in names
    mlflow.set_tracking_uri(summary["tracking_uri"])
    loaded = mlflow.pyfunc.load_model(summary["mlflow_model_uri"])
    from pipelines.sampler import OneStepSampler

    sampler = loaded.unwrap_python_model().sampler
    assert type(sampler).__name__ == OneStepSampler.__name__
    assert tuple(sampler.sample(5).shape) == (5, 2)

    # the CLI draws from the logged model
    grid = tmp_path / "grid.png"
    env_uri = {"MLFLOW_TRACKING_URI": summary["tracking_uri"]}
    r = subprocess.run(
        [str(BIN / "python"), "-m", "pipelines.cli", "sample", "--model",
         summary["mlflow_model_uri"], "--n", "16", "--out", str(grid)],
        cwd=proj, env={**os.environ, **env_uri}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert grid.read_bytes()[:4] == b"\x89PNG"

    # nothing changed: a second repro runs nothing
    again = sh([str(BIN / "dvc"), "repro"], proj, timeout=60).stdout
    assert "Data and pipelines are up to date" in again
