"""A team's workflow around the pipeline (issue 25), against real servers on 127.0.0.1: a DVC
remote on an S3 endpoint (moto's server) that a colleague pulls from without re-running
anything, a DVC experiment read back as JSON, and the registered champion served by
``mlflow models serve`` with the answers of the in-process model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_cluster import free_port, s3, s3_client, s3_keys  # noqa: F401 - the S3 endpoint fixture
from test_pipeline_e2e import BIN, clean_env, copy_project

TEAM = """\
data: {name: moons, n_samples: 600, path: data/raw}
model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}
train: {epochs: 1, batch_size: 64, num_workers: 0, image_every: 0}
evaluate: {steps: 10, grid: 16, n_samples: 100}
mlflow: {}
sweep: {}
"""
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
OUTPUTS = ("data/prepared/train.parquet", "data/prepared/test.parquet", "models/model.pt")


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 400) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.mark.slow
def test_a_colleague_pulls_from_the_s3_remote_reruns_nothing_and_runs_an_experiment(
    tmp_path,
    s3,  # noqa: F811 - the fixture
):
    dvc = str(BIN / "dvc")
    env = clean_env(**s3)
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    (proj / "params.yaml").write_text(TEAM)
    for stray in ("dvc.lock", "metrics.json", "results", "models", "plots"):  # a developer's
        path = proj / stray  # own runs, which a clone of the repository does not have
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    run([dvc, "repro", "train"], proj, env)
    run([dvc, "remote", "add", "-d", "store", "s3://bucket/dvcstore"], proj, env)
    run([dvc, "remote", "modify", "store", "endpointurl", s3["AWS_ENDPOINT_URL"]], proj, env)
    run(["git", "add", "-A"], proj, env)
    run([*GIT, "commit", "-qm", "trained"], proj, env)
    pushed = run([dvc, "push"], proj, env)
    assert s3_keys(s3, "dvcstore/"), pushed

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(proj), str(clone)], tmp_path, env)
    assert not (clone / "models/model.pt").exists()
    # the README's `dvc pull` after a whole `dvc repro`; here only train (and prepare) ran
    run([dvc, "pull", "--with-deps", "train"], clone, env)
    for f in OUTPUTS:
        assert (clone / f).read_bytes() == (proj / f).read_bytes(), f
    assert "up to date" in run([dvc, "status", "--with-deps", "train"], clone, env)
    repro = run([dvc, "repro", "train"], clone, env)
    assert "Running stage" not in repro and "didn't change" in repro, repro

    # an experiment on the colleague's side: one change (to evaluate only, so train stays
    # cached), its metrics read back as JSON
    ran = run(
        [dvc, "exp", "run", "-n", "n60", "-S", "evaluate.n_samples=60", "evaluate"], clone, env
    )
    assert "'evaluate'" in ran and "Running stage 'train'" not in ran, ran
    # the train run lives in the first developer's mlflow.db: evaluation logs to a run of its own
    assert "is not in this tracking store" in ran and "Traceback" not in ran, ran
    shown = json.loads(run([dvc, "exp", "show", "--json"], clone, env))
    exps = [e for row in shown for e in (row.get("experiments") or [])]
    (mine,) = [e for e in exps if e.get("name") == "n60"]
    revision = mine["revs"][0]["data"]
    assert revision["params"]["params.yaml"]["data"]["evaluate"]["n_samples"] == 60
    metrics = revision["metrics"]["metrics.json"]["data"]
    assert metrics["psnr_one_vs_multi_euler"] >= 100 and metrics["mmd"] > 0


def post(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.slow
def test_the_champion_served_by_mlflow_answers_like_the_in_process_model(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    (proj / "params.yaml").write_text(TEAM)
    env = clean_env()
    run([str(BIN / "dvc"), "repro", "train"], proj, env)
    summary = json.loads((proj / "models/summary.json").read_text())
    uri = summary["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(summary["mlflow_model_uri"], "linearizer-one-step")
    client.set_registered_model_alias("linearizer-one-step", "champion", version.version)

    port = free_port()
    served = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/linearizer-one-step@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=proj,
        env={**env, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert served.poll() is None, served.stdout.read()[-3000:]
            assert time.time() < deadline, "the scoring server did not answer /ping in 180 s"
            time.sleep(0.5)
        noise = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
        status, body = post(f"http://127.0.0.1:{port}/invocations", {"inputs": noise.tolist()})
        assert status == 200, body
        answer = np.asarray(json.loads(body)["predictions"], dtype=np.float32)
        local = mlflow.pyfunc.load_model("models:/linearizer-one-step@champion").predict(noise)
        np.testing.assert_allclose(answer, local, rtol=1e-6, atol=1e-6)
        # a request of the wrong width is refused with a 4xx that says what is wrong
        status, body = post(
            f"http://127.0.0.1:{port}/invocations", {"inputs": [[0.0, 1.0, 2.0]] * 2}
        )
        assert 400 <= status < 500, body
        assert "shape" in body.lower(), body
    finally:
        served.terminate()
        served.wait(timeout=30)


@pytest.fixture
def frozen_s3(tmp_path) -> Iterator[tuple[dict[str, str], subprocess.Popen]]:
    """moto's S3 server in a process of its own (so it can be frozen with SIGSTOP: it keeps its
    objects in memory, a restart would lose them), with a bucket ``bucket``."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        deadline = time.time() + 60
        while True:
            try:
                s3_client(settings).create_bucket(Bucket="bucket")
                break
            except Exception:  # not up yet
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.3)
        yield settings, proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_run_whose_s3_storage_freezes_for_a_minute_finishes_or_resumes(tmp_path, frozen_s3):
    """Checkpoints on S3; the server frozen for 60 s after the first one is written. The run
    either rides it out, or stops with one line naming the storage, and ``--resume`` finishes it
    from the last checkpoint written, in the same MLflow run."""
    settings, server = frozen_s3
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    params = TEAM.replace(
        "train: {epochs: 1, batch_size: 64, num_workers: 0, image_every: 0}",
        "train: {epochs: 6, batch_size: 64, num_workers: 1, image_every: 0, "
        'storage_path: "s3://bucket/runs"}',
    )
    (proj / "params.yaml").write_text(params)
    env = {**clean_env(**settings), "AWS_EC2_METADATA_DISABLED": "true"}
    run([str(BIN / "python"), "-m", "pipelines.stages.prepare"], proj, env)
    log = (tmp_path / "train.log").open("w")
    train = [str(BIN / "python"), "-m", "pipelines.stages.train"]
    proc = subprocess.Popen(train, cwd=proj, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not [k for k in s3_keys(settings, "runs/") if k.endswith("/state.pt")]:
        assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint reached the bucket"
        time.sleep(0.2)
    os.kill(server.pid, signal.SIGSTOP)
    assert proc.poll() is None, "the run ended before the outage: nothing was tested"
    time.sleep(60)
    in_flight = proc.poll() is None  # still waiting on the frozen storage (or failed in it)
    os.kill(server.pid, signal.SIGCONT)
    thawed = time.time()
    rc = proc.wait(timeout=600)
    out = (tmp_path / "train.log").read_text()
    if rc != 0:  # it gave up: one line naming the storage, then --resume finishes it
        errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
        assert rc == 2 and len(errors) == 1 and "s3://bucket/runs" in errors[0], out[-3000:]
        name = next(
            ln.split()[1].rstrip(":") for ln in out.splitlines() if ln.startswith("training ")
        )
        resumed = run([*train, "--resume", name], proj, env, timeout=600)
        assert "continued" in resumed, resumed
    summary = json.loads((proj / "models/summary.json").read_text())
    assert summary["epochs"] == 6, summary
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run_info = client.get_run(summary["mlflow_run_id"])
    assert run_info.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_info.info.run_id, "val_loss"))
    assert steps == [1, 2, 3, 4, 5, 6], steps  # every epoch once, none lost or repeated
    outcome = "rode it out" if rc == 0 else "resumed"
    print(
        f"60 s outage: {outcome}; in flight through it: {in_flight}; ended "
        f"{time.time() - thawed:.0f} s after the thaw"
    )
