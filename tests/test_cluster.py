"""Cluster-ready by configuration alone, against real servers that these tests start on
127.0.0.1: an S3 endpoint (moto's server) for the prepared data and Ray Train's checkpoints, an
MLflow tracking server that proxies artifacts (``--artifacts-destination``), a server that
answers 401, and a two-node Ray cluster that gets the code through Ray's runtime env only.
(That a deterministic fault, ``NumericalFault``, is not retried: ``test_mlflow_live``.)"""

from __future__ import annotations

import http.server
import io
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import fresh_mlflow_db, stop_group, wait_http
from test_pipeline_e2e import BIN, clean_env, copy_project

from lincore.toys import toy
from pipelines import ray_runtime, tracking
from pipelines.config import output_path
from pipelines.errors import ConfigError, ServiceError

PARAMS = """\
data: {{{data}}}
model: {{rank: 2, depth: 2, hidden: 16, operator_hidden: 16}}
train: {{epochs: {epochs}, batch_size: 64, num_workers: {workers}{train}}}
evaluate: {{steps: 10, grid: 16}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    """``clean_env`` without the caller's S3 settings, plus ``extra``."""
    base = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
    return {**base, "AWS_EC2_METADATA_DISABLED": "true", **extra}


def run(
    args: list[str], cwd: Path, timeout: int = 240, **extra: str
) -> subprocess.CompletedProcess:
    """``python -m <args>`` in ``cwd`` with ``env(**extra)``."""
    return subprocess.run(
        [str(BIN / "python"), "-m", *args],
        cwd=cwd,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess, *, ray_ran: bool = False) -> str:
    """The stage's ``error: ...`` line: exit status 2, one line; no traceback unless Ray ran
    (its workers log theirs)."""
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and (ray_ran or "Traceback" not in r.stderr), r.stderr[-4000:]
    return lines[0]


def make_project(
    tmp_path: Path,
    *,
    epochs: int = 1,
    workers: int = 1,
    train: str = "",
    data: str = "name: moons, n_samples: 600",
    mlflow_db: bool = True,
) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir(exist_ok=True)
    if not (proj / "pyproject.toml").exists():
        copy_project(proj, mlflow_db=mlflow_db)
    params = PARAMS.format(data=data, epochs=epochs, workers=workers, train=train and f", {train}")
    (proj / "params.yaml").write_text(params)
    return proj


# ---- S3: moto's server as the endpoint ---------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """An S3 endpoint on 127.0.0.1 with a bucket ``bucket``; yields the client settings."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3_client(settings).create_bucket(Bucket="bucket")
    try:
        yield settings
    finally:
        server.stop()


def s3_client(settings: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def s3_keys(settings: dict[str, str], prefix: str) -> list[str]:
    pages = (
        s3_client(settings)
        .get_paginator("list_objects_v2")
        .paginate(Bucket="bucket", Prefix=prefix)
    )
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_an_unusable_s3_location_is_one_line_naming_it(s3, tmp_path):
    proj = make_project(tmp_path, train='storage_path: "s3://bucket/runs"')
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    line = one_line_error(
        run(["pipelines.stages.train"], proj, **{**s3, "AWS_ENDPOINT_URL": dead}, timeout=120)
    )
    assert "s3://bucket" in line and dead in line and "AWS_ENDPOINT_URL" in line, line
    assert time.perf_counter() - t0 < 60  # a short probe, not the SDK's retries
    missing = {k: v for k, v in s3.items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    missing.pop("AWS_SECRET_ACCESS_KEY")
    line = one_line_error(
        run(["pipelines.stages.prepare", "--out", "s3://bucket/prepared"], proj, **missing)
    )
    assert "no credentials for s3://bucket" in line and "AWS_ACCESS_KEY_ID" in line, line
    line = one_line_error(run(["pipelines.stages.prepare", "--out", "s3://nobucket/x"], proj, **s3))
    assert "s3://nobucket" in line and "does not exist" in line, line
    assert not (proj / "s3:").exists()
    with pytest.raises(ConfigError, match="a URI is not accepted here"):
        output_path("s3://bucket/models", "--out")  # outputs other than data and checkpoints


@pytest.mark.slow
def test_training_reads_data_and_checkpoints_on_s3_and_resumes_from_there(s3, tmp_path):
    # the raw data set, the prepared splits and the checkpoints all live in the bucket
    raw = io.BytesIO()
    np.savez(raw, x=toy("moons", 600, seed=0).numpy())
    s3_client(s3).put_object(Bucket="bucket", Key="raw/moons.npz", Body=raw.getvalue())
    storage = 'storage_path: "s3://bucket/runs", image_every: 0'
    data = 'name: path, path: "s3://bucket/raw/moons.npz"'
    proj = make_project(tmp_path, epochs=1, train=storage, data=data)
    out = ok(run(["pipelines.stages.prepare", "--out", "s3://bucket/prepared"], proj, **s3))
    assert "prepared s3://bucket/raw/moons.npz" in out and "-> s3://bucket/prepared" in out
    prepared = s3_keys(s3, "prepared/")
    assert sorted(prepared) == [
        f"prepared/{name}"
        for name in ("stats.json", "test.parquet", "train.parquet", "val.parquet")
    ]
    train = ["pipelines.stages.train", "--data", "s3://bucket/prepared"]
    ok(run(train, proj, **s3))
    summary = json.loads((proj / "models/summary.json").read_text())
    name = summary["run_name"]
    assert summary["checkpoint_path"] == f"s3://bucket/runs/{name}"
    first = [k for k in s3_keys(s3, f"runs/{name}/") if k.endswith("/state.pt")]
    assert len(first) == 1  # epoch 0's checkpoint, in the bucket

    # one more epoch, continued from the checkpoint in the bucket (epoch 0 is not retrained)
    make_project(tmp_path, epochs=2, train=storage, data=data)
    out = ok(run([*train, "--resume", name], proj, **s3))
    assert "continued" in out, out
    summary = json.loads((proj / "models/summary.json").read_text())
    assert summary["run_name"] == name and summary["epochs"] == 2
    states = [k for k in s3_keys(s3, f"runs/{name}/") if k.endswith("/state.pt")]
    assert len(states) == 2 and set(first) <= set(states)  # one new checkpoint: epoch 1
    assert not (proj / "ray_results").exists() and not (proj / "s3:").exists()


# ---- MLflow: a team tracking server ------------------------------------------------------------


@pytest.mark.slow
def test_a_tracking_server_keeps_the_artifacts_and_the_client_project_none(tmp_path, moons):
    store, artifacts = tmp_path / "server", tmp_path / "server" / "artifacts"
    store.mkdir()
    fresh_mlflow_db(store / "mlflow.db")  # migrated once per session, not by every server
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--backend-store-uri=sqlite:///{store / 'mlflow.db'}",
            f"--artifacts-destination={artifacts}",
            "--workers=1",
        ],
        cwd=store,
        env=env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # no GenAI job runner: 8 processes
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(f"{uri}/health")
        proj = make_project(tmp_path, train="image_every: 0", mlflow_db=False)
        ok(run(["pipelines.stages.train", "--data", str(moons)], proj, MLFLOW_TRACKING_URI=uri))
        summary = json.loads((proj / "models/summary.json").read_text())
        assert summary["tracking_uri"] == uri

        from mlflow import MlflowClient

        client = MlflowClient(uri)
        run_info = client.get_run(summary["mlflow_run_id"]).info
        assert run_info.artifact_uri.startswith("mlflow-artifacts:"), run_info.artifact_uri
        exp = client.get_experiment(run_info.experiment_id)
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    finally:
        stop_group(server)
    files = {p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file()}
    grid = f"{run_info.experiment_id}/{run_info.run_id}/artifacts/samples/train_end_grid.png"
    assert grid in files, sorted(files)
    assert any(f.endswith("/MLmodel") for f in files), sorted(files)  # the logged model
    for local in ("mlartifacts", "mlruns", "mlflow.db"):
        assert not (proj / local).exists(), local


class Refuses(http.server.BaseHTTPRequestHandler):
    """A tracking server behind auth that accepts nothing: 401 on every request."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        Refuses.seen.append(self.headers.get("Authorization"))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_that_answers_401_is_one_line_naming_the_auth_variables(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for name in tracking.MLFLOW_ENV:
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(ServiceError) as err:
            tracking.check_reachable(uri)
        message = str(err.value)
        assert "\n" not in message and uri in message and "HTTP 401" in message, message
        for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME"):
            assert name in message, message
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
        with pytest.raises(ServiceError, match="HTTP 401"):
            tracking.check_reachable(uri)
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
        with pytest.raises(ServiceError, match="HTTP 401"):
            tracking.check_reachable(uri)
    finally:
        server.shutdown()
    # the check sends what the MLflow client would: nothing, a bearer token, basic auth
    assert Refuses.seen[-3:] == [None, "Bearer t0ken", "Basic YW5uOnB3"]


# ---- Ray: a two-node cluster that gets the code through the runtime env ------------------------


def test_a_joined_cluster_gets_the_code_and_optionally_the_pins_through_the_runtime_env(
    monkeypatch,
):
    monkeypatch.delenv(ray_runtime.PIP_ENV, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    env = ray_runtime.cluster_runtime_env()
    assert [Path(m).name for m in env["py_modules"]] == ["lincore", "pipelines", "sweeps"]
    assert "PYTHONPATH" not in env["env_vars"] and "pip" not in env  # nothing installed
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    monkeypatch.setenv(ray_runtime.PIP_ENV, "1")
    pins = ray_runtime.cluster_runtime_env()["pip"]
    assert "torch==2.13.0" in pins and "ray[default,train,tune]==2.60.0" in pins, pins
    assert not any(p.startswith(("pytest", "moto")) for p in pins)  # extras stay out


CLUSTER = """\
import sys
from ray.cluster_utils import Cluster

# two nodes on 127.0.0.1, as benchmarks/faults.py builds them (`ray start --address` refuses to
# add a node to a loopback head, and without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it would listen
# on the machine's network address)
head = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": 0}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **head})
cluster.add_node(num_cpus=1)
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""


@pytest.fixture
def cluster(tmp_path) -> Iterator[dict[str, str]]:
    """Two Ray nodes on 127.0.0.1 (1 CPU each), started outside the project and without
    PYTHONPATH: their workers can only get the code from the job. Token auth on, with a token
    of its own. Yields what a driver needs to join: ``RAY_ADDRESS`` and the token settings."""
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    temp = tempfile.mkdtemp(prefix="lzc-", dir="/tmp")  # short: Ray's socket paths must fit
    node_env = {k: v for k, v in env().items() if k != "PYTHONPATH"}
    node_env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_TMPDIR=temp, **token)
    proc = subprocess.Popen(
        [str(BIN / "python"), "-c", CLUSTER],
        cwd=elsewhere,
        env=node_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        yield {"RAY_ADDRESS": address, **token}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


WHERE = """\
import time
from pipelines import ray_runtime  # first, as in the stages: it keeps Ray on loopback
import ray
ray_runtime.init()
deadline = time.time() + 60
while ray.cluster_resources().get("CPU", 0) < 2:
    assert time.time() < deadline, ray.cluster_resources()
    time.sleep(0.5)

from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

# one bundle on each node, guaranteed (SPREAD is a preference: a task that finishes before the
# second one is placed lets that one run on the same node)
group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
ray.get(group.ready(), timeout=60)

@ray.remote(num_cpus=1)
def where():
    import os, pipelines
    return ray.get_runtime_context().get_node_id(), pipelines.__file__, os.environ.get("PYTHONPATH")

on = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(2)]
for node, path, pythonpath in ray.get([where.options(scheduling_strategy=s).remote() for s in on]):
    print("worker", node, path, pythonpath)
"""


@pytest.mark.slow
def test_a_two_node_cluster_trains_with_the_code_shipped_by_the_runtime_env(
    cluster, tmp_path, moons
):
    proj = make_project(tmp_path, epochs=1, workers=2, train="image_every: 0")
    elsewhere = tmp_path / "elsewhere"  # the driver's working directory: not the project
    # the driver imports the project through PYTHONPATH; Ray workers never see that variable
    driver = {**cluster, "PYTHONPATH": str(proj), "RAY_DEDUP_LOGS": "0"}
    out = ok(_where(elsewhere, driver))
    workers = [ln.split() for ln in out.splitlines() if ln.startswith("worker ")]
    assert len({w[1] for w in workers}) == 2, out  # one task on each node
    for _, _, path, *_ in workers:
        # each worker imported the zip Ray unpacked from the GCS, not this checkout or the copy
        assert "runtime_resources" in path and "py_modules" in path, out
        assert not path.startswith((str(proj), str(Path(__file__).parents[1]))), out
    r = run(["pipelines.stages.train", "--data", str(moons)], elsewhere, **driver)
    ok(r)
    summary = json.loads((proj / "models/summary.json").read_text())
    assert summary["epochs"] == 1
    # two workers of 1 CPU on two nodes of 1 CPU: one on each (Ray Train's node_rank cannot
    # tell, it groups workers by IP address and both nodes are 127.0.0.1)
    ranks = [ln for ln in (r.stdout + r.stderr).splitlines() if "world_rank=" in ln]
    assert len(ranks) == 2, (r.stdout + r.stderr)[-4000:]


def _where(cwd: Path, extra: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "python"), "-c", WHERE],
        cwd=cwd,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
