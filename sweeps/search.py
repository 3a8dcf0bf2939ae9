"""How a sweep searches: the search algorithm and scheduler for the configured objectives, the
resources its trials need, and the Tuner run itself.

Optuna learns from every trial, early-stopped ones included: ``BudgetOptunaSearch`` tells Optuna
a trial ASHA stopped is PRUNED (its per-epoch values kept as intermediate values), and only a
trial that trained its whole ``max_epochs`` COMPLETE with its final value. Ray's own
``OptunaSearch`` told Optuna COMPLETE with whatever low-budget value a stopped trial last had,
so TPE modelled "good" from one-epoch values. TPE ranks COMPLETE trials first, then PRUNED ones
by how far they got and their last value, as with Optuna's own pruners.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from pipelines.config import Config, SweepConfig
from pipelines.errors import ConfigError, LinearizerError, ServiceError
from sweeps import space, trial

STUDY_FILE = "optuna.db"
"""The sweep's Optuna study, in its results folder unless ``sweep.study_storage`` names one."""
REDUCTION_FACTOR = 2
"""ASHA keeps the better 1/2 of the trials at each rung (epochs grace, 2 x grace, ...)."""


def startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the space: a third of the sweep, at least 4. (Optuna's
    default of 10 made every sweep of up to 10 trials a random search.)"""
    return max(4, num_samples // 3)


def _step(result: dict[str, Any]) -> int | None:
    """The epochs a result has trained: ``epoch + 1`` (the loop's own count, right after a
    retried Ray Train trial resumed at epoch k, when Tune's ``training_iteration`` restarts
    at 1), else ``training_iteration``."""
    if result.get(trial.EPOCHS_DONE) is not None:
        return int(result[trial.EPOCHS_DONE])
    if result.get("epoch") is not None:
        return int(result["epoch"]) + 1
    step = result.get("training_iteration")
    return None if step is None else int(step)


class BudgetOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that knows the trial budget: trials stopped early (ASHA) reach Optuna
    as PRUNED with their intermediate values, trials that trained ``max_t`` epochs as COMPLETE,
    and a trial whose last value is missing or not finite as FAIL (Ray's ``tell`` of a NaN
    raised, was swallowed, and left the Optuna trial RUNNING forever).

    Module-level on purpose: ``Tuner.restore`` unpickles it."""

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._reported: dict[str, set[int]] = {}  # trial id -> epochs told to Optuna

    def _report(self, trial_id: str, result: dict[str, Any]) -> tuple[float | None, int | None]:
        """Report the result's value at its epoch as an intermediate value (once per epoch);
        returns ``(value if finite, step)``."""
        value, step = result.get(self.metric), _step(result)
        finite = value is not None and math.isfinite(float(value))
        t, reported = self._ot_trials.get(trial_id), self._reported.setdefault(trial_id, set())
        if finite and step is not None and t is not None and step not in reported:
            t.report(float(value), step)
            reported.add(step)
        return (float(value) if finite else None), step

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if isinstance(self.metric, list):  # multi-objective: Optuna takes no intermediates
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if (
            isinstance(self.metric, list)
            or error
            or not result
            or trial_id in self._completed_trials
            or trial_id not in self._ot_trials
        ):
            return super().on_trial_complete(trial_id, result, error)
        from optuna.trial import TrialState

        # the result that made ASHA stop the trial never reached on_trial_result: report it
        value, step = self._report(trial_id, result)
        if value is not None and step is not None and step >= self._max_t:
            state, values = TrialState.COMPLETE, value
        else:  # PRUNED takes no value: Optuna keeps the last intermediate one as its value
            state, values = (TrialState.PRUNED if value is not None else TrialState.FAIL), None
        self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        self._completed_trials.add(trial_id)


def check_trial_resources(sweep: SweepConfig, use_gpu: bool, res: dict[str, float]) -> None:
    """Concurrent trials times their workers must fit the cluster (``ray.cluster_resources()``),
    or trials wait forever."""
    per_trial = max(sweep.workers_per_trial, 1)
    need = sweep.max_concurrent_trials * per_trial
    for kind, have in (("CPU", int(res.get("CPU", 0))), ("GPU", int(res.get("GPU", 0)))):
        if (kind == "CPU" or use_gpu) and need > have:
            raise ConfigError(
                f"sweep.max_concurrent_trials={sweep.max_concurrent_trials} trials x {per_trial} "
                f"worker(s) need {need} {kind}s but Ray has {have}; lower "
                "sweep.max_concurrent_trials or sweep.workers_per_trial, or add nodes"
            )
    if sweep.workers_per_trial >= 1 and res.get("trial_driver", 0) < 1:
        raise ServiceError(
            "the Ray cluster has no 'trial_driver' resource, which trials that drive Ray Train "
            "take instead of a CPU; start its head with "
            "`ray start --head --resources='{\"trial_driver\": 4}'`, or set "
            "sweep.workers_per_trial: 0"
        )


def study_storage(cfg: Config, out: Path) -> str:
    """The Optuna storage URL of the sweep's study: ``sweep.study_storage``, or SQLite in the
    sweep's results folder ``out`` (created)."""
    if cfg.sweep.study_storage:
        return cfg.sweep.study_storage
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(out / STUDY_FILE).resolve()}"


def first_rung(cfg: Config) -> int:
    """The first epoch whose ``val_mmd`` says something of a trial: the first one after its
    warm-up, which trains ``g(.; 1)`` alone (the operator untouched) for a share of its steps."""
    from pipelines.training.loop import warmup_share

    share = warmup_share(cfg.train.warmup, cfg.model.flow)
    return math.floor(share * cfg.sweep.max_epochs) + 1 if share else 1


def search_setup(
    cfg: Config, study: tuple[str, str] | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """``(search_alg, scheduler, tune_config metric kwargs)`` for the configured objectives.

    ``study``: ``(storage URL, study name)``: the Optuna study lives there, so it outlives the
    sweep (``optuna-dashboard <URL>`` shows it, ``optuna.load_study`` reads it) and a resumed
    sweep continues it; ``None`` keeps it in memory.

    Single objective: ASHA and the searcher rank trials by ``sweep.metric`` as reported after
    each epoch, at equal epoch counts (``trial.EPOCHS_DONE``), unsmoothed: on digits its spread
    over noise seeds is 0.7-5% of the value (and the seed is the same for every trial), under
    the cosine schedule it moves by under 1.3% over a run's last 5 epochs, and the epoch-1
    value ranks trials as their last one does (Spearman 0.94-0.97; docs/sweeps.md). Not so
    during a warm-up (``train.warmup``: the operator is untrained until it ends), so ASHA's
    first rung waits for the first epoch after it (``first_rung``)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    s = cfg.sweep
    pareto = s.objectives == "pareto"
    persisted: dict[str, Any] = {}
    if study is not None:
        url, name = study
        persisted = {"storage": optuna.storages.RDBStorage(url), "study_name": name}
    if s.search == "random":
        search = BasicVariantGenerator(random_state=s.seed)
    elif pareto:
        search = OptunaSearch(
            metric=[s.metric, "num_params"],
            mode=["min", "min"],
            sampler=optuna.samplers.NSGAIISampler(seed=s.seed),
            **persisted,
        )
    else:
        # constant_liar (Optuna 5's default) keeps concurrent trials from asking for one point
        sampler = optuna.samplers.TPESampler(
            seed=s.seed, n_startup_trials=startup_trials(s.num_samples), multivariate=True
        )
        search = BudgetOptunaSearch(
            metric=s.metric, mode="min", sampler=sampler, max_t=s.max_epochs, **persisted
        )
    scheduler = None
    if s.scheduler == "asha" and not pareto:  # ASHA ranks by one metric: it would cut the front
        scheduler = ASHAScheduler(
            time_attr=trial.EPOCHS_DONE,
            max_t=s.max_epochs,
            grace_period=min(max(s.grace_period, first_rung(cfg)), s.max_epochs),
            reduction_factor=REDUCTION_FACTOR,
        )
    metric = {} if pareto else {"metric": s.metric, "mode": "min"}
    return search, scheduler, metric


def fit(
    cfg: Config,
    sweep_dir: Path,
    train_path: Path,
    val_path: Path,
    *,
    callbacks: list[Any] | None = None,
    resume: str | None = None,
    study: tuple[str, str] | None = None,
) -> Any:
    """Run (or continue) the Tuner named ``sweep_dir.name``; returns its ``ResultGrid``.

    At most ``sweep.max_concurrent_trials`` trials run at once, with any searcher: Tune wraps
    ours in a ``ConcurrencyLimiter`` (``ray/tune/tune.py``, ``run``: ``max_concurrent_trials``),
    and since ray-project/ray#63770 that limit is no longer one pending trial
    (``tests/test_sweeps.py`` checks two trials overlap)."""
    from ray import tune

    s = cfg.sweep
    trainable = tune.with_parameters(
        trial.run_trial,
        base=cfg,
        train_path=str(train_path),
        val_path=str(val_path),
        storage=str(sweep_dir),
    )
    if s.workers_per_trial >= 1:  # the trial only drives Ray Train: no CPU of its own
        resources = {"cpu": 0, "trial_driver": 1}
    else:
        resources = {"cpu": 1, "gpu": 1 if cfg.train.use_gpu else 0}
    trainable = tune.with_resources(trainable, resources)
    if resume:
        tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_errored=True)
    else:
        search, scheduler, metric = search_setup(cfg, study)
        tuner = tune.Tuner(
            trainable,
            param_space=space.tune_space(s.space),
            tune_config=tune.TuneConfig(
                search_alg=search,
                scheduler=scheduler,
                num_samples=s.num_samples,
                max_concurrent_trials=s.max_concurrent_trials,
                **metric,
            ),
            run_config=tune.RunConfig(
                name=sweep_dir.name,
                storage_path=str(sweep_dir.parent),
                failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
                callbacks=callbacks,
                verbose=1,
            ),
        )
    grid = tuner.fit()
    if all(r.error is not None for r in grid):
        first = next(iter(grid)).error
        raise LinearizerError(f"every trial of sweep {sweep_dir.name} failed; the first: {first}")
    return grid
