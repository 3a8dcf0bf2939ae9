"""Sweeps: the search space, the Pareto front, the registry guard, bad input refused before any
trial starts; and (slow) a driver killed mid-sweep then resumed, and ``ray job submit`` against
a local head node with Ray's token authentication on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_pipeline_e2e import BIN, clean_env, copy_project, sh

from pipelines.commands.cluster_check import listeners, non_loopback
from pipelines.common.config import SweepConfig
from pipelines.common.errors import ConfigError, ServiceError
from sweeps import registry, results, space
from sweeps.search import check_trial_resources

TINY = """\
data: {name: moons, n_samples: 600}
model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}
train: {batch_size: 64}
evaluate: {steps: 20}
sweep:
  num_samples: %(n)d
  max_epochs: %(epochs)d
  max_concurrent_trials: %(concurrent)d
  workers_per_trial: %(workers)d
  space:
    model.rank: {choice: [1, 2]}
    model.depth: {choice: [1, 2, 3]}
    train.lr: {loguniform: [0.001, 0.01]}
"""


def tiny(n: int = 3, epochs: int = 2, concurrent: int = 2, workers: int = 0) -> str:
    return TINY % {"n": n, "epochs": epochs, "concurrent": concurrent, "workers": workers}


def test_the_space_becomes_tune_distributions():
    from ray.tune.search.sample import Categorical, Float, Integer

    out = space.tune_space(
        {
            "model.rank": {"choice": [2, 4]},
            "model.depth": {"randint": [1, 3]},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "model.sigma": {"uniform": [0.1, 0.5]},
        }
    )
    assert isinstance(out["model.rank"], Categorical) and out["model.rank"].categories == [2, 4]
    assert isinstance(out["model.depth"], Integer)
    assert (out["model.depth"].lower, out["model.depth"].upper) == (1, 4)  # 3 inclusive
    depths = {out["model.depth"].sample() for _ in range(200)}
    assert depths == {1, 2, 3}
    assert isinstance(out["train.lr"], Float) and out["train.lr"].lower == 1e-4


def test_a_rank_above_the_latent_dimension_is_refused():
    sweep = SweepConfig(space={"model.rank": {"choice": [1, 2, 3]}})
    with pytest.raises(ConfigError, match=r"reaches 3, above the latent dimension 2"):
        space.check_against_data(sweep, (2,))
    space.check_against_data(sweep, (1, 8, 8))


def test_pareto_front_matches_its_definition():
    import random

    rng = random.Random(0)
    points = [(rng.random(), float(rng.randint(1, 20))) for _ in range(60)] + [(0.5, 3.0)] * 2
    front = results.pareto_front(points)
    for p, on in zip(points, front, strict=True):
        dominated = any(
            q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1]) for q in points
        )
        assert on == (not dominated)
    assert results.pareto_front([(1.0, 1.0), (float("nan"), 0.0)]) == [True, False]


def test_best_params_nest_into_params_sections():
    import numpy as np

    assert results.nested({"model.rank": np.int64(8), "train.lr": 0.01}) == {
        "model": {"rank": 8},
        "train": {"lr": 0.01},
    }


@pytest.mark.parametrize(
    ("sweep", "res", "message"),
    [
        ({"max_concurrent_trials": 3, "workers_per_trial": 0}, {"CPU": 2}, "need 3 CPUs"),
        (
            {"max_concurrent_trials": 2, "workers_per_trial": 2},
            {"CPU": 2, "trial_driver": 2},
            "need 4 CPUs but Ray has 2",
        ),
        ({"max_concurrent_trials": 1, "workers_per_trial": 1}, {"CPU": 2}, "'trial_driver'"),
    ],
)
def test_more_concurrent_trials_than_resources_is_refused(sweep, res, message):
    with pytest.raises((ConfigError, ServiceError), match=message):
        check_trial_resources(SweepConfig(**sweep), False, res)
    check_trial_resources(
        SweepConfig(max_concurrent_trials=2, workers_per_trial=1),
        False,
        {"CPU": 2, "trial_driver": 2},
    )
    with pytest.raises(ConfigError, match="need 2 GPUs but Ray has 0"):
        check_trial_resources(SweepConfig(max_concurrent_trials=2), True, {"CPU": 8})


def test_a_registry_name_bound_to_another_model_is_refused(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        MlflowClient().create_registered_model("someone-elses")
        with pytest.raises(ConfigError, match="'someone-elses' is already bound to another"):
            registry.claim("someone-elses")
        registry.claim("ours")
        registry.claim("ours")  # claiming our own name again is fine
        tags = MlflowClient().get_registered_model("ours").tags
        assert tags[registry.KIND_TAG] == registry.KIND
    finally:
        mlflow.set_tracking_uri(None)


def test_every_orphaned_attempt_of_a_trial_is_marked_killed(tmp_path):
    """A trial running when its driver died gets a newer run after the resume: the older one,
    left RUNNING, must be closed too (the per-trial view keeps only the newest)."""
    import mlflow
    from mlflow import MlflowClient

    from sweeps.mlflow_runs import child_runs, close_orphans

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        client = MlflowClient()
        exp = client.create_experiment("e")
        parent = client.create_run(exp).info.run_id
        tags = {"mlflow.parentRunId": parent, "trial_name": "run_trial_a"}
        old = client.create_run(exp, tags=tags).info.run_id  # the attempt the kill interrupted
        time.sleep(0.01)
        new = client.create_run(exp, tags=tags).info.run_id  # the resumed attempt, finished
        client.set_terminated(new, "FINISHED")
        assert child_runs(exp, parent)["run_trial_a"].info.run_id == new
        assert close_orphans(exp, parent) == 1
        assert client.get_run(old).info.status == "KILLED"
        assert client.get_run(new).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(None)


def run_sweep(proj: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = clean_env()
    return subprocess.run(
        [sys.executable, "-m", "sweeps", *args],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with prepared tiny data (no Ray needed for the checks below)."""
    proj = tmp_path_factory.mktemp("sweep") / "proj"
    proj.mkdir()
    copy_project(proj)
    (proj / "params.yaml").write_text(tiny())
    sh([str(BIN / "python"), "-m", "pipelines.stages.prepare"], proj, timeout=120)
    return proj


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume", "no-such-sweep"], "no sweep to resume at"),
        (["--num-samples", "0"], "sweep.num_samples must be >= 1"),
        (["--name", "a", "--resume", "b"], "not both"),
        (["--data", "nowhere"], "nowhere"),
        (["--root", "/no/such/folder"], "is not a folder"),
    ],
)
def test_bad_sweep_input_fails_before_trials_with_one_line(project, args, message):
    r = run_sweep(project, *args, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (project / "ray_results").exists()  # no trial ever started


def test_a_rank_above_the_data_dimension_stops_the_sweep_cli(project, tmp_path):
    params = yaml.safe_load(tiny())
    params["sweep"]["space"]["model.rank"] = {"choice": [2, 3]}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    r = run_sweep(project, "--params", str(bad), timeout=120)
    assert r.returncode == 2 and "above the latent dimension 2" in r.stderr


def _trial_results(sweep_dir: Path) -> dict[str, int]:
    """Trial folder -> epochs it reported (lines of its ``result.json``)."""
    out = {}
    for f in sweep_dir.glob("*/result.json"):
        out[f.parent.name] = sum(1 for line in f.read_text().splitlines() if line.strip())
    return out


@pytest.mark.slow
def test_a_killed_driver_resumes_without_rerunning_finished_trials(project):
    """SIGKILL the whole sweep (driver and its local Ray) once a trial has finished and another
    has started; ``--resume`` completes the sweep, keeps the finished trial as it was."""
    (project / "params.yaml").write_text(tiny(n=3, epochs=3, concurrent=1))
    name = "killed"
    sweep_dir = project / "ray_results" / name
    env = clean_env()
    log = (project / "first.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps", "--name", name],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            epochs = _trial_results(sweep_dir)
            finished = [t for t, n in epochs.items() if n == 3]
            if finished and len(epochs) > len(finished):
                break
            assert proc.poll() is None, (project / "first.log").read_text()[-3000:]
            time.sleep(0.3)
        else:
            pytest.fail("no trial finished in time:\n" + (project / "first.log").read_text())
        time.sleep(1.0)  # let Tune write its experiment state once more
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _trial_results(sweep_dir)
    finished = {t for t, n in before.items() if n == 3}

    r = run_sweep(project, "--resume", name)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = _trial_results(sweep_dir)
    assert len(after) == 3 and all(1 <= n <= 3 for n in after.values()), after  # ASHA may cut
    for t in finished:  # a re-run would have appended epochs to its result.json
        assert after[t] == before[t] == 3
    import pyarrow.parquet as pq

    table = pq.read_table(project / "results/sweep/trials.parquet").to_pylist()
    assert len(table) == 3 and {t["status"] for t in table} == {"ok"}
    assert sorted(t["epochs"] for t in table) == sorted(after.values())  # no epoch reported twice

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("linearizer")
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.`linearizer.sweep` = '{name}' and tags.`linearizer.role` = 'parent'",
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )
    assert "RUNNING" not in {c.info.status for c in children}  # orphans marked KILLED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_against_a_local_head_with_token_auth(project, tmp_path):
    """A head node on 127.0.0.1 with token auth on: a request without the token is refused;
    the documented `ray job submit --working-dir . -- python -m sweeps --root ...` runs
    the sweep (Ray Train inside each trial) and writes into the project, not the job's copy."""
    (project / "params.yaml").write_text(tiny(n=2, epochs=2, concurrent=2, workers=1))
    gcs, dash = _free_port(), _free_port()
    # as the README writes it: the loopback prefix, not inherited from this test process
    env = clean_env(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            '--resources={"trial_driver": 2}',
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 without the token): it is up
            except OSError:
                assert time.time() < deadline, "the Ray head did not come up"
                time.sleep(1)
        # every socket of the head's process tree listens on loopback only, and the job API
        # refuses a job without the token
        heard = listeners([head.pid])
        assert any(x.port == dash for x in heard) and not non_loopback(heard), heard
        request = urllib.request.Request(
            f"{url}/api/jobs/",
            method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"entrypoint": "echo pwned"}).encode(),
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (401, 403)
        no_token = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", url, "--", "echo", "pwned"],
            env={**env, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert no_token.returncode != 0 and "pwned" not in no_token.stdout

        submit = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                url,
                "--working-dir",
                ".",
                "--",
                sys.executable,
                "-m",
                "sweeps",
                "--root",
                str(project),
                "--name",
                "from-a-job",
            ],
            cwd=project,
            env={**env, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=400,
        )
        out = submit.stdout + submit.stderr
        assert submit.returncode == 0 and "succeeded" in out, out[-4000:]
        best = yaml.safe_load((project / "results/sweep/best_params.yaml").read_text())
        assert best["model"]["rank"] in (1, 2)
        assert (project / "ray_results/from-a-job/train_runs").is_dir()  # Ray Train per trial
        assert "best trial" in out
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.slow
def test_a_pareto_sweep_writes_the_front_and_picks_its_best_from_it(project):
    import pyarrow.parquet as pq

    (project / "params.yaml").write_text(tiny(n=4, epochs=2, concurrent=2))
    r = run_sweep(project, "--objectives", "pareto", "--name", "front")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    trials = pq.read_table(project / "results/sweep/trials.parquet").to_pylist()
    assert len(trials) == 4 and all(t["epochs"] == 2 for t in trials)  # no ASHA cuts
    points = [(t["val_mmd"], float(t["num_params"])) for t in trials]
    assert [t["pareto"] for t in trials] == results.pareto_front(points)
    best = yaml.safe_load((project / "results/sweep/best_params.yaml").read_text())["objective"]
    on_front = [t for t in trials if t["pareto"]]
    assert best["val_mmd"] == min(t["val_mmd"] for t in on_front)
    assert (project / "results/sweep/pareto.png").read_bytes()[:4] == b"\x89PNG"
