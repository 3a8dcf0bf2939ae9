"""Every server the project starts or documents listens on loopback only (issue 18).

Each slow test starts one server as the README writes it (the ``ray start --head`` recipe, read
from the README itself; ``mlflow ui``; the in-process Ray of ``pipelines.ray_runtime``)
and lists the listening sockets of its whole process tree with psutil. Only the ports are
changed, to free ones, and each Ray gets a temp folder of its own, so that a Ray or MLflow
already running on the machine is neither disturbed nor audited. The project has no storage
test server (no moto, MinIO or S3 endpoint) to audit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from conftest import fresh_mlflow_db, stop_group, wait_for_job_agent, wait_http
from test_pipeline_e2e import BIN, clean_env

from pipelines.commands import cluster_check
from pipelines.commands.cluster_check import Listener, is_loopback, listeners, non_loopback
from pipelines.config import ROOT
from pipelines.ray_runtime import LOOPBACK_ENV

README = ROOT / "README.md"
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_command(start: str) -> tuple[dict[str, str], list[str]]:
    """The README's shell line that runs ``start`` (with its ``\\`` continuations), split into
    its ``NAME=value`` prefix and its argv: the test runs what a user copies."""
    lines = README.read_text().splitlines()
    pattern = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*" + re.escape(start) + r"\b")
    for i, line in enumerate(lines):
        if pattern.match(line.strip()):
            command = line.strip()
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            command = command.split(" #", 1)[0]
            words = shlex.split(command)
            env = dict(w.split("=", 1) for w in words if ENV_ASSIGNMENT.match(w))
            return env, [w for w in words if not ENV_ASSIGNMENT.match(w)]
    raise AssertionError(f"no `{start}` line in README.md")


def _env(**extra: str) -> dict[str, str]:
    """``clean_env`` without the loopback variable: importing ``pipelines.ray_runtime`` (this
    module does) sets it in os.environ, and only the README's own prefix may count here."""
    env = clean_env(RAY_USAGE_STATS_ENABLED="0")
    for key in LOOPBACK_ENV:
        env.pop(key, None)
    return {**env, **extra}


def _settle(pid: int, ports: set[int], names: set[str], timeout: float = 120) -> list[Listener]:
    """The tree's listeners once ``ports`` listen and ``names`` have listeners of their own (Ray
    starts its agents and client server after it answers), plus a moment for stragglers."""
    deadline = time.time() + timeout
    while True:
        found = listeners([pid])
        missing = (ports - {e.port for e in found}) | (names - {e.name for e in found})
        if not missing:
            time.sleep(3)
            return listeners([pid])
        assert time.time() < deadline, f"still waiting for {missing}:\n{cluster_check.table(found)}"
        time.sleep(1)


def _assert_loopback(found: list[Listener]) -> None:
    exposed = non_loopback(found)
    assert not exposed, "listening outside loopback:\n" + cluster_check.table(found)


# ---- fast: the checker itself, and the documented recipe ---------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # a dual-stack socket bound to 127.0.0.1 (Ray's gRPC)
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("::ffff:192.0.2.2", False),
        ("fe80::1%eth0", False),
        ("10.1.2.3", False),
    ],
)
def test_non_loopback_flags_wildcards_and_network_addresses(address, loopback):
    entry = Listener(pid=1, name="gcs_server", address=address, port=6379)
    assert is_loopback(address) is loopback
    assert non_loopback([entry]) == ([] if loopback else [entry])


def test_listeners_sees_a_socket_of_this_process_and_cluster_check_passes_it(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = listeners([os.getpid()])
        assert Listener(os.getpid(), psutil.Process().name(), "127.0.0.1", port) in found
        assert cluster_check.check(argparse.Namespace(pid=[os.getpid()])) == 0
    assert f"127.0.0.1:{port}" in capsys.readouterr().out


def test_cluster_check_names_what_listens_outside_loopback(monkeypatch, capsys):
    exposed = Listener(4242, "gcs_server", "0.0.0.0", 6379)
    monkeypatch.setattr(
        cluster_check, "listeners", lambda pids: [exposed, Listener(4242, "raylet", "::1", 1)]
    )
    assert cluster_check.check(argparse.Namespace(pid=[4242])) == 1
    err = capsys.readouterr().err
    assert "gcs_server (pid 4242) listens on 0.0.0.0:6379" in err


def test_cluster_check_without_ray_exits_2(capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists
    with pytest.raises(SystemExit) as status:
        cluster_check.run(["--pid", str(gone.pid)])
    assert status.value.code == 2
    assert "no running Ray process" in capsys.readouterr().err


def test_the_readme_head_recipe_carries_the_loopback_settings():
    env, argv = readme_command("ray start --head")
    assert env == LOOPBACK_ENV
    assert "--node-ip-address=127.0.0.1" in argv and "--dashboard-host=127.0.0.1" in argv
    submit_env, submit = readme_command("ray job submit")
    assert submit_env == {"RAY_AUTH_MODE": "token"} and "http://127.0.0.1:8265" in submit


# ---- slow: the servers themselves --------------------------------------------------------------


@pytest.fixture(scope="module")
def head():
    """The README's head, as written, on free ports and with a temp folder of its own."""
    readme_env, argv = readme_command("ray start --head")
    # the job agent's HTTP port too: Ray's default (52365) is taken by any other Ray on the
    # machine, whose agent then serves no jobs ("No available agent to submit job")
    ports = {
        "gcs": _free_port(),
        "dashboard": _free_port(),
        "client": _free_port(),
        "agent": _free_port(),
    }
    tmp = tempfile.mkdtemp(prefix="lzh-", dir="/tmp")  # short: Ray's socket paths must fit
    env = _env(RAY_TMPDIR=tmp, **readme_env)
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            *argv[1:],
            "--block",
            f"--port={ports['gcs']}",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client']}",
            f"--dashboard-agent-listen-port={ports['agent']}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{ports['dashboard']}/api/version")
        found = _settle(
            proc.pid,
            set(ports.values()),
            {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"},
        )
        yield proc, ports, env, found
    finally:
        stop_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_the_readme_head_listens_on_loopback_only(head):
    proc, ports, _, found = head
    assert {"gcs_server", "raylet"} <= {e.name for e in found}
    assert set(ports.values()) <= {e.port for e in found}
    _assert_loopback(found)
    # cluster-check's own discovery (no --pid) finds this head's GCS and raylet
    tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    ray_pids = set(cluster_check.find_ray_processes())
    assert {e.pid for e in found if e.name in ("gcs_server", "raylet")} <= ray_pids & tree


@pytest.mark.slow
def test_linearizer_cluster_check_passes_the_loopback_head(head):
    proc, ports, env, _ = head
    r = subprocess.run(
        [str(BIN / "linearizer"), "cluster-check", "--pid", str(proc.pid)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any("gcs_server" in line and line.endswith(f":{ports['gcs']}") for line in lines)
    assert lines[-1].startswith("ok: all") and lines[-1].endswith("on loopback")


JOB = """\
import pathlib, sys, time
import ray
ray.init()
assert ray.get(ray.remote(lambda: 1).remote()) == 1
flags = pathlib.Path(sys.argv[1])
(flags / "started").touch()
deadline = time.time() + 120
while not (flags / "go").exists() and time.time() < deadline:
    time.sleep(0.2)
print("job-done")
"""


@pytest.mark.slow
def test_ray_job_submit_runs_on_the_loopback_head_and_stays_there(head, tmp_path):
    """The job path (job supervisor, driver, task worker) listens on loopback too, and
    ``ray job submit`` with the token works against the loopback head."""
    proc, ports, env, _ = head
    (tmp_path / "job.py").write_text(JOB)
    url = f"http://127.0.0.1:{ports['dashboard']}"
    wait_for_job_agent(BIN / "ray", url, {**env, "RAY_AUTH_MODE": "token"})
    submit = subprocess.Popen(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            url,
            "--",
            sys.executable,
            str(tmp_path / "job.py"),
            str(tmp_path),
        ],
        env={**env, "RAY_AUTH_MODE": "token"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while not (tmp_path / "started").exists():
            assert submit.poll() is None, submit.communicate()[0][-4000:]
            assert time.time() < deadline, "the job did not start"
            time.sleep(0.5)
        found = listeners([proc.pid])
        assert any(e.name.startswith("ray::JobSupervisor") for e in found), found
        _assert_loopback(found)
    finally:
        (tmp_path / "go").touch()
    out = submit.communicate(timeout=120)[0]
    assert submit.returncode == 0 and "job-done" in out and "succeeded" in out, out[-4000:]


@pytest.mark.slow
def test_mlflow_ui_as_the_readme_writes_it_listens_on_loopback_only(tmp_path):
    _, argv = readme_command("mlflow ui")
    port = _free_port()
    argv = [str(BIN / "mlflow"), *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)
    fresh_mlflow_db(tmp_path / "mlflow.db")  # the README's sqlite:///mlflow.db, migrated once
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        found = _settle(proc.pid, {port}, set(), timeout=60)
        _assert_loopback(found)
    finally:
        stop_group(proc)


INIT = """\
import sys
from pipelines import ray_runtime
ray_runtime.init(num_cpus=1)
import ray
assert ray.get(ray.remote(lambda: 1).remote()) == 1
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_the_in_process_ray_listens_on_loopback_only():
    tmp = tempfile.mkdtemp(prefix="lzi-", dir="/tmp")
    proc = subprocess.Popen(
        [sys.executable, "-c", INIT],
        cwd=ROOT,
        env=_env(RAY_TMPDIR=tmp),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        found = _settle(
            proc.pid, set(), {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}
        )
        assert proc.pid in {e.pid for e in found}  # the driver's own core-worker server
        _assert_loopback(found)
    finally:
        proc.stdin.close()  # the driver returns, and ray.shutdown() stops its servers
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        stop_group(proc)  # whatever is left of its process group
        shutil.rmtree(tmp, ignore_errors=True)
