"""Shared fixtures."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import data as data_mod
from pipelines.config import parse

# Ray Train's controller polls its workers every 2 s by default, so every run ends up to 2 s
# after its last epoch; the suite's many short runs wait far less with a shorter poll. Set here,
# it reaches every Ray this test process starts and every stage subprocess it runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

# The suite runs two tests at a time (pytest-xdist) on as many cores: torch's intra-op threads,
# as many as the cores by default in every process, would make each test fight the other for
# them. One thread per test process and per stage it starts (OMP_NUM_THREADS); Ray Train
# workers and Tune trials still set their own count from the CPUs Ray gives them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@functools.cache
def empty_mlflow_db() -> Path:
    """An MLflow SQLite database with its schema and nothing else, made once per test process:
    creating the schema costs seconds that every test and stage with a fresh database would
    pay again; a copy costs nothing."""
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="lzr-mlflow-"))
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # runs the migrations
    return folder / "mlflow.db"


def fresh_mlflow_db(path: Path) -> str:
    """A copy of ``empty_mlflow_db`` at ``path``; its tracking URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_mlflow_db(), path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def moons(tmp_path_factory) -> Path:
    """A prepared folder (train/val/test Parquet) of 600 two-moons points."""
    folder = tmp_path_factory.mktemp("moons")
    cfg = parse({"data": {"name": "moons", "n_samples": 600}})
    for name, part in data_mod.split(data_mod.build(cfg.data), cfg.data).items():
        data_mod.write_split(folder / f"{name}.parquet", part, seed=0)
    return folder


def wait_for_job_agent(ray: Path, url: str, env: dict[str, str], timeout: float = 180) -> None:
    """Block until the Ray head at ``url`` accepts jobs. Its dashboard answers before the job
    agent has registered, and on a loaded machine a ``ray job submit`` in that gap fails with
    "No available agent to submit job"; a ``--no-wait`` no-op job tells when it is ready."""
    import subprocess
    import time

    deadline, out = time.time() + timeout, ""
    while time.time() < deadline:
        r = subprocess.run(
            [str(ray), "job", "submit", "--no-wait", "--address", url, "--", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = r.stdout + r.stderr
        if r.returncode == 0:
            return
        if "No available agent" not in out:
            raise AssertionError(f"the Ray head at {url} refused a job:\n{out[-3000:]}")
        time.sleep(2)
    raise AssertionError(f"the Ray head at {url} took no job in {timeout:.0f} s:\n{out[-3000:]}")


def wait_http(url: str, timeout: float = 120) -> None:
    """Wait until ``url`` answers at all (an HTTP error such as 401 counts: the server is up)."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            assert time.time() < deadline, f"{url} did not come up"
            time.sleep(0.5)


@contextlib.contextmanager
def in_process_ray(monkeypatch: pytest.MonkeyPatch, module: str, num_cpus: int) -> Iterator[None]:
    """A local Ray in this process, in a temp folder of its own, shut down afterwards; the test
    module ``module`` is pickled by value (the workers import pipelines, not the tests)."""
    import ray

    from pipelines import ray_runtime  # first: it keeps Ray on loopback

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tmp = tempfile.mkdtemp(prefix="lzr-", dir="/tmp")  # short: Ray's socket paths
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    # the dashboard (its State API) on, as in production: Ray Train's placement-group cleaner
    # asks it whether the controller lives; without one of its own it may ask another Ray's
    # (tests run two at a time), not find the controller there and remove the live workers' group
    ray_runtime.init(num_cpus=num_cpus, dashboard=True)
    ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    try:
        yield
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[module])
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the leader of the process group ``proc`` leads (started with start_new_session),
    then SIGKILL whatever is left of the group. The leader alone: it stops its own children
    (``ray start --block`` stops its node in about 2 s), while a SIGTERM to the whole group
    makes it wait about 30 s for children that are ending on their own."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
