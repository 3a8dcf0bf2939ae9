"""Sweeps: the search space, the Pareto front, the registry guard, bad input refused before any
trial starts, what Optuna is told of stopped trials, the champion guard on a real registry, the
dataset inputs and full configs of the MLflow runs; and (slow) a sweep end to end (concurrent
trials, the retrain, the runs), a driver killed mid-sweep then resumed, and ``ray job submit``
against a local head node with Ray's token authentication on."""

from __future__ import annotations

import itertools
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
from conftest import fresh_mlflow_db, stop_group, wait_for_job_agent
from test_pipeline_e2e import BIN, clean_env, copy_project, sh

from pipelines.commands.cluster_check import listeners, non_loopback
from pipelines.config import SweepConfig
from pipelines.errors import ConfigError, ServiceError
from sweeps import champion, outputs, registry, results, scoring, space
from sweeps.search import check_trial_resources

TINY = """\
data: {name: moons, n_samples: 600}
model: {rank: 2, depth: 2, hidden: 16, operator_hidden: 16}
train: {batch_size: 64, epochs: %(epochs)d}  # = max_epochs: no retrain, except where a test asks
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
    with pytest.raises(ConfigError, match=r"rank.choice=3 is impossible.* in 1..2"):
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

    assert outputs.nested({"model.rank": np.int64(8), "train.lr": 0.01}) == {
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

    mlflow.set_tracking_uri(fresh_mlflow_db(tmp_path / "m.db"))
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

    mlflow.set_tracking_uri(fresh_mlflow_db(tmp_path / "m.db"))
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


# --- the searcher: what Optuna is told ----------------------------------------------------------


def _searcher(max_t: int = 4, n: int = 12):
    import optuna
    from ray import tune

    from sweeps.search import BudgetOptunaSearch, startup_trials

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=startup_trials(n))
    return BudgetOptunaSearch(
        space={"x": tune.uniform(0.0, 1.0)},
        metric="val_mmd",
        mode="min",
        sampler=sampler,
        max_t=max_t,
    )


def _result(value: float, epochs: int, iteration: int | None = None) -> dict:
    """A trial result as the loop reports it (``epoch`` 0-based) plus Tune's counter."""
    it = epochs if iteration is None else iteration
    return {"val_mmd": value, "epoch": epochs - 1, "epochs_done": epochs, "training_iteration": it}


def test_stopped_trials_reach_optuna_as_pruned_with_their_intermediate_values():
    """Driven the way Tune drives it: ``on_trial_result`` for each epoch ASHA lets go on, then
    ``on_trial_complete(result=last_result)`` (the STOP result never reaches on_trial_result)."""
    from optuna.trial import TrialState

    s = _searcher(max_t=4)
    for tid in ("stopped", "full", "nan", "retried", "crashed"):
        s.suggest(tid)
    s.on_trial_result("stopped", _result(0.9, 1))
    s.on_trial_complete("stopped", result=_result(0.8, 2))  # ASHA stopped it at epoch 2
    for e, v in enumerate([0.9, 0.7, 0.5], 1):
        s.on_trial_result("full", _result(v, e))
    s.on_trial_complete("full", result=_result(0.4, 4))
    s.on_trial_result("nan", _result(1.0, 1))
    s.on_trial_complete("nan", result=_result(float("nan"), 2))
    # a Ray Train trial retried after a crash: Tune's counter restarts, the epochs go on
    s.on_trial_result("retried", _result(0.9, 1))
    s.on_trial_result("retried", _result(0.8, 2))
    s.on_trial_result("retried", _result(0.7, 3, iteration=1))
    s.on_trial_complete("retried", result=_result(0.6, 4, iteration=2))
    s.on_trial_complete("crashed", result=None, error=True)

    trials = {t.number: t for t in s._ot_study.trials}
    stopped, full, nan, retried, crashed = (trials[i] for i in range(5))
    assert stopped.state == TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.9, 2: 0.8}
    assert stopped.value == 0.8  # Optuna keeps the last intermediate value
    assert full.state == TrialState.COMPLETE and full.value == 0.4
    assert full.intermediate_values == {1: 0.9, 2: 0.7, 3: 0.5, 4: 0.4}
    assert nan.state == TrialState.FAIL and nan.intermediate_values == {1: 1.0}
    assert retried.state == TrialState.COMPLETE and retried.value == 0.6
    assert retried.intermediate_values == {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6}
    assert crashed.state == TrialState.FAIL
    assert TrialState.RUNNING not in {t.state for t in s._ot_study.trials}
    s.on_trial_complete("full", result=_result(0.1, 4))  # a second completion changes nothing
    assert s._ot_study.trials[1].value == 0.4


def test_tpe_ranks_complete_trials_above_pruned_ones_and_starts_modelling_early():
    """With the trials told right, TPE's "good" group is the best COMPLETE trial, not a trial
    that looked good after one epoch; and TPE models the space after a third of the sweep."""
    from optuna.samplers._tpe.sampler import _split_trials

    from pipelines.config import parse
    from sweeps.search import BudgetOptunaSearch, search_setup, startup_trials

    s = _searcher(max_t=4)
    for tid, value, epochs in (("early", 0.2, 1), ("late", 0.5, 4), ("worse", 0.6, 4)):
        s.suggest(tid)
        s.on_trial_complete(tid, result=_result(value, epochs))
    study = s._ot_study
    below, _ = _split_trials(study, study.trials, 1)
    assert [t.number for t in below] == [1]  # "late": COMPLETE at the full budget wins
    assert (startup_trials(4), startup_trials(12), startup_trials(30)) == (4, 4, 10)
    cfg = parse({"sweep": {"num_samples": 30, "max_epochs": 5, "seed": 3}})
    search, scheduler, metric = search_setup(cfg)
    assert isinstance(search, BudgetOptunaSearch) and search._max_t == 5
    sampler = search._sampler
    assert (sampler._n_startup_trials, sampler._multivariate, sampler._constant_liar) == (
        10,
        True,
        True,
    )
    assert scheduler._time_attr == "epochs_done" and metric == {"metric": "val_mmd", "mode": "min"}


def first_milestone(asha) -> int:
    """The epoch of ASHA's first rung (its first chance to stop a trial)."""
    return min(milestone for milestone, _ in asha._brackets[0]._rungs)


def test_asha_waits_for_the_end_of_a_warm_up_and_a_trial_may_tune_it():
    """An image-flow trial warms ``g(.; 1)`` up for 97% of its steps (the operator untrained):
    ASHA's first rung is the first epoch after that, not epoch 1. ``train.warmup`` (a number or
    auto) can be in the space, and a trial's value goes in as params.yaml's would."""
    from pipelines.config import parse
    from pipelines.config.loading import apply_trial
    from sweeps.search import first_rung, search_setup

    image = parse({"model": {"flow": "image"}, "sweep": {"max_epochs": 10, "grace_period": 1}})
    assert first_rung(image) == 10  # floor(0.97 x 10) + 1
    assert first_milestone(search_setup(image)[1]) == 10
    digits = parse({"sweep": {"max_epochs": 10, "grace_period": 1}})
    assert first_rung(digits) == 1 and first_milestone(search_setup(digits)[1]) == 1
    half = parse({"train": {"warmup": 0.5}, "sweep": {"max_epochs": 10}})
    assert first_rung(half) == 6
    tuned = parse({"sweep": {"space": {"train.warmup": {"uniform": [0, 0.9]}}}})
    assert apply_trial(tuned, {"train.warmup": 0.25}).train.warmup == 0.25
    assert apply_trial(tuned, {"model.two_networks": "auto"}).model.two_networks == "auto"


# --- the champion: registered only when it beats what exists -------------------------------------


def _tiny_model(seed: int):
    """A tiny model whose weights are its initial ones plus noise drawn from ``seed``."""
    import torch

    from lincore.generators import OneStepFlowMatching
    from pipelines.config import ModelConfig

    cfg = ModelConfig(rank=1, depth=1, hidden=8, operator_hidden=8)
    model = OneStepFlowMatching.build((2,), cfg, seed=0, steps=10)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model, cfg


def _logged_model(tmp_path: Path, seed: int, name: str) -> tuple[Path, str, str]:
    """A checkpoint of a tiny untrained model (init ``seed``) logged as a pyfunc model in a run
    of its own: ``(checkpoint, model uri, run id)``."""
    import mlflow

    from pipelines import tracking
    from pipelines.model import checkpoints
    from pipelines.model.sampler import OneStepSampler

    model, cfg = _tiny_model(seed)
    path = tmp_path / name / "model.pt"
    checkpoints.save(path, model, cfg, (2,), run_name=name, source="test")
    with mlflow.start_run(run_name=name) as run:
        uri = tracking.log_sampler_model(path, OneStepSampler(model, 10))
    return path, uri, run.info.run_id


def test_a_worse_candidate_does_not_move_the_champion(tmp_path):
    """A real SQLite registry: the reference data are samples of model A, so A scores best.
    A becomes champion; B (worse) is refused and the alias stays on A; a train-stage model
    better than the candidate also keeps it out; scores are ``score`` on the same points."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from pipelines.config import parse
    from pipelines.model.sampler import OneStepSampler

    mlflow.set_tracking_uri(fresh_mlflow_db(tmp_path / "m.db"))
    try:
        mlflow.set_experiment("e")
        cfg = parse({"evaluate": {"steps": 10}, "sweep": {"registry_name": "guarded"}})
        registry.claim("guarded")
        a_path, a_uri, a_run = _logged_model(tmp_path, 0, "a")
        b_path, b_uri, b_run = _logged_model(tmp_path, 1, "b")
        model_a, _ = _tiny_model(0)
        reference = OneStepSampler(model_a, 10).sample(300, seed=99).numpy()
        score_a = scoring.score_checkpoint(a_path, 10, reference, (2,))[0]["final_mmd"]
        score_b = scoring.score_checkpoint(b_path, 10, reference, (2,))[0]["final_mmd"]
        assert score_a < score_b
        assert scoring.score_checkpoint(a_path, 10, reference, (3,))[0] is None  # other data

        def candidate(uri: str, run: str, value: float) -> dict:
            return {"final_mmd": value, "epochs": 30, "model_uri": uri, "run_id": run}

        first = champion.crown(cfg, candidate(a_uri, a_run, score_a), (2,), reference, None)
        assert first["registered"] and first["champion"] is None
        client = MlflowClient()
        v1 = client.get_model_version_by_alias("guarded", registry.ALIAS).version
        assert registry.champion("guarded")[0] == str(v1)

        second = champion.crown(cfg, candidate(b_uri, b_run, score_b), (2,), reference, None)
        assert not second["registered"] and second["registered_version"] == ""
        assert second["champion"]["final_mmd"] == pytest.approx(score_a)
        assert "does not beat champion" in second["reason"]
        assert client.get_model_version_by_alias("guarded", registry.ALIAS).version == v1
        assert len(client.search_model_versions("name='guarded'")) == 1

        # B against no champion but a better train-stage model: still not registered
        client.delete_registered_model_alias("guarded", registry.ALIAS)
        third = champion.crown(cfg, candidate(b_uri, b_run, score_b), (2,), reference, a_path)
        assert not third["registered"] and "train_model" in third["reason"]
        assert third["train_model"]["final_mmd"] == pytest.approx(score_a)
        assert np.isfinite(third["candidate"]["final_mmd"])
    finally:
        mlflow.set_tracking_uri(None)


def test_the_champion_decision_needs_a_strictly_better_score():
    assert champion.decide(0.3, {"champion": 0.4, "train_model": None})[0]
    assert not champion.decide(0.4, {"champion": 0.4})[0]  # a tie keeps the old champion
    assert not champion.decide(0.3, {"champion": 0.5, "train_model": 0.2})[0]
    assert champion.decide(0.3, {})[1] == "no champion or train-stage model to beat"
    assert not champion.decide(float("nan"), {})[0]


def test_score_is_the_loops_val_mmd_of_the_same_weights(moons):
    """``final_mmd`` (what decides the champion) equals the training loop's last ``val_mmd``:
    the same validation points, noise seed and EMA weights."""
    import torch

    from lincore.generators import OneStepFlowMatching
    from pipelines.config import parse
    from pipelines.data import read_split
    from pipelines.model.sampler import OneStepSampler
    from pipelines.training.driver import loop_config
    from pipelines.training.loop import fit_epochs
    from pipelines.training.state import final_weights

    class Session:
        world, rank, device, cpu_threads = 1, 0, torch.device("cpu"), None

        def __init__(self) -> None:
            self.reports: list = []

        def latest_state(self) -> None:
            return None

        def wrap_model(self, model, *, find_unused=False):
            return model

        def shard_loader(self, loader):
            return loader

        def report(self, metrics: dict, state: dict | None) -> None:
            self.reports.append((metrics, state))

    cfg = parse(
        {
            "model": {"rank": 1, "depth": 1, "hidden": 8, "operator_hidden": 8},
            "train": {"epochs": 2, "batch_size": 64},
            "evaluate": {"steps": 10},
        }
    )
    session = Session()
    fit_epochs(loop_config(cfg, moons / "train.parquet", moons / "val.parquet"), session)
    metrics, state = session.reports[-1]
    model = OneStepFlowMatching.build((2,), cfg.model, seed=cfg.train.seed, steps=10)
    model.load_state_dict(final_weights(state))
    xv, _, _ = read_split(moons / "val.parquet")
    scored = scoring.score(OneStepSampler(model, 10), xv)
    assert scored["final_mmd"] == pytest.approx(metrics["val_mmd"], rel=1e-6)


# --- MLflow: datasets, full configs, the experiment kind ------------------------------------------


def test_the_dataset_input_carries_the_dvc_md5_and_a_profile(moons, tmp_path, monkeypatch):
    import shutil

    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.tracking import dataset

    root = tmp_path / "proj"
    folder = root / "data" / "prepared"
    shutil.copytree(moons, folder)
    monkeypatch.setenv("LINEARIZER_ROOT", str(root))
    digest = dataset.dvc_dir_md5(folder)
    assert dataset.describe(folder)[1]["dvc_lock"] == "absent"
    lock = {"stages": {"prepare": {"outs": [{"path": "data/prepared", "md5": digest + ".dir"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dataset.dvc_lock_md5(folder) == digest

    client = MlflowClient(fresh_mlflow_db(tmp_path / "m.db"))
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    tracking.log_dataset(client, run_id, folder, name="moons")
    (logged,) = client.get_run(run_id).inputs.dataset_inputs
    ds = logged.dataset
    assert (ds.name, ds.digest, ds.source_type) == ("moons", digest, "local")
    assert json.loads(ds.source)["uri"] == str(folder)
    profile = json.loads(ds.profile)
    assert profile["splits"] == {"train": 420, "val": 60, "test": 120} and profile["rows"] == 600
    assert profile["shape"] == [2] and profile["dvc_lock"] == "match"
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "training")]
    assert "mlflow_colspec" in ds.schema

    (folder / "extra.txt").write_text("changed")  # the data changed after dvc.lock was written
    assert dataset.describe(folder)[1]["dvc_lock"] == "stale"
    assert dataset.describe(folder)[0] != digest


@pytest.mark.slow
def test_the_dataset_digest_is_what_dvc_writes(moons, tmp_path):
    folder = tmp_path / "prepared"
    import shutil

    from pipelines.tracking import dataset

    shutil.copytree(moons, folder)
    sh([str(BIN / "dvc"), "init", "--no-scm", "-q"], tmp_path, timeout=120)
    sh([str(BIN / "dvc"), "add", "-q", "prepared"], tmp_path, timeout=120)
    written = yaml.safe_load((tmp_path / "prepared.dvc").read_text())["outs"][0]["md5"]
    assert written == dataset.dvc_dir_md5(folder) + ".dir"


def test_the_experiment_is_marked_for_model_development(tmp_path):
    """Set by ``tracking.setup`` (the UI then opens the runs table, not the GenAI overview)."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import MlflowConfig

    uri = fresh_mlflow_db(tmp_path / "m.db")
    try:
        exp_id = tracking.setup(MlflowConfig(tracking_uri=uri, artifact_location=str(tmp_path)))
        tags = MlflowClient(uri).get_experiment(exp_id).tags
        assert tags.get("mlflow.experimentKind") == "custom_model_development"
    finally:
        mlflow.set_tracking_uri(None)


class _Trial:
    """What the MLflow callback reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return f"run_trial_{self.trial_id}"


def test_child_runs_carry_the_whole_config_the_dataset_and_their_trial_id(moons, tmp_path):
    """One run per attempt: the resolved config of the trial (every key the train run logs),
    the dataset input, ``linearizer.trial_id``, metrics at step ``epoch + 1``; a retried
    attempt gets a new run and ``child_runs`` finds the newest by its trial id."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.config import parse
    from sweeps import trial as trial_mod
    from sweeps.mlflow_runs import TRIAL_TAG, attempt_logger, child_runs

    uri = fresh_mlflow_db(tmp_path / "m.db")
    cfg = parse({"data": {"name": "moons"}, "sweep": {"max_epochs": 3, "workers_per_trial": 0}})
    client = MlflowClient(uri)
    try:
        exp = client.create_experiment("linearizer")
        parent = client.create_run(exp).info.run_id
        logger = attempt_logger(cfg, tmp_path / "sweep", moons)(
            tracking_uri=uri, experiment_name="linearizer", tags={"mlflow.parentRunId": parent}
        )
        logger.setup()
        t = _Trial("abc123", {"model.rank": 1, "train.lr": 0.003})
        logger.log_trial_start(t)
        logger.log_trial_result(1, t, {"val_mmd": 0.5, "epoch": 0, "epochs_done": 1, "x": "s"})
        first = logger._trial_runs[t]
        run = client.get_run(first)
        expected = trial_mod.logged_params(
            trial_mod.trial_config(cfg, t.config, tmp_path / "sweep")
        )
        assert set(expected) >= {"model.depth", "train.epochs", "data.name", "evaluate.steps"}
        for key, value in expected.items():
            assert run.data.params[key] == str(value), key
        assert run.data.params["train.epochs"] == "3" and run.data.params["model.rank"] == "1"
        assert run.data.params["data.shape"] == "(2,)"
        assert run.data.tags[TRIAL_TAG] == "abc123"
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["moons"]
        assert [m.step for m in client.get_metric_history(first, "val_mmd")] == [1]

        logger.on_trial_recover(1, [t], t)  # Tune retries the crashed attempt
        logger.log_trial_result(2, t, {"val_mmd": 0.4, "epoch": 1, "epochs_done": 2})
        second = logger._trial_runs[t]
        assert second != first and client.get_run(first).info.status == "FAILED"
        assert client.get_run(second).data.tags[TRIAL_TAG] == "abc123"
        assert child_runs(exp, parent)["abc123"].info.run_id == second
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
    assert r.returncode == 2 and "rank.choice=3 is impossible" in r.stderr


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
    import optuna

    study = optuna.load_study(  # the resumed sweep continued the same study, not a new one
        study_name=name, storage=f"sqlite:///{project / 'results/sweep/optuna.db'}"
    )
    assert len({t.number for t in study.trials}) >= 3
    assert sum(t.state.is_finished() for t in study.trials) >= 3

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
    # the job agent gets a free port too: Ray's default (52365) is taken by any other Ray on the
    # machine, whose agent then serves no jobs ("No available agent to submit job")
    gcs, dash, agent = _free_port(), _free_port(), _free_port()
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
            f"--dashboard-agent-listen-port={agent}",
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
        wait_for_job_agent(BIN / "ray", url, {**env, "RAY_AUTH_MODE": "token"})

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
        stop_group(head)


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


@pytest.mark.slow
def test_a_sweep_runs_trials_at_once_retrains_its_best_and_logs_like_the_train_run(project):
    """TPE + ASHA, two trials at a time: their child runs overlap in time (Tune's
    ConcurrencyLimiter lets two run, not one), carry the resolved config, the dataset and their
    trial id; the best configuration is retrained at train.epochs in a run of its own and,
    with nothing to beat, registered; best_params.yaml records both budgets."""
    from mlflow import MlflowClient

    params = yaml.safe_load(tiny(n=4, epochs=2, concurrent=2))
    params["train"]["epochs"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    r = run_sweep(project, "--name", "single", "--model", "no/such/model.pt")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "candidate (retrain, 4 epochs)" in out and "train stage's model: none" in out

    best = yaml.safe_load((project / "results/sweep/best_params.yaml").read_text())
    assert best["objective"]["budget_epochs"] == 2 == best["objective"]["max_epochs"]
    decision = best["champion"]
    assert decision["candidate"]["source"] == "retrain" and decision["candidate"]["epochs"] == 4
    assert decision["registered"] is True or "does not beat champion" in decision["reason"]

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("linearizer")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    mine = "tags.`linearizer.sweep` = 'single'"
    (parent,) = client.search_runs(
        [exp.experiment_id],
        f"{mine} and tags.`linearizer.role` = 'parent'",
    )
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["moons"]
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), spans  # two ran at once
    digest = parent.inputs.dataset_inputs[0].dataset.digest
    for c in children:
        assert {d.dataset.digest for d in c.inputs.dataset_inputs} == {digest}
        assert c.data.tags["linearizer.trial_id"] and c.data.params["train.epochs"] == "2"
        assert {"model.operator", "train.batch_size", "evaluate.steps", "data.shape"} <= set(
            c.data.params
        )
    (retrain,) = client.search_runs(
        [exp.experiment_id],
        f"{mine} and tags.`linearizer.role` = 'retrain'",
    )
    assert retrain.data.params["train.epochs"] == "4" and retrain.info.status == "FINISHED"
    assert retrain.data.tags["linearizer.trial_id"] == str(best["objective"]["trial_id"])
    steps = [m.step for m in client.get_metric_history(retrain.info.run_id, "val_mmd")]
    assert sorted(steps) == [1, 2, 3, 4]
    assert retrain.data.metrics["final_mmd"] == pytest.approx(decision["candidate"]["final_mmd"])

    # the Optuna study outlives the sweep: every trial, finished or pruned, with its values
    import optuna
    from optuna.trial import TrialState

    assert "optuna-dashboard sqlite:///" in out
    study = optuna.load_study(
        study_name="single", storage=f"sqlite:///{project / 'results/sweep/optuna.db'}"
    )
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in study.trials:
        assert t.intermediate_values and set(t.intermediate_values) <= {1, 2}
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(t.intermediate_values[2])
