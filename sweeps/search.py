"""How a sweep searches: the search algorithm and scheduler for the configured objectives, the
resources its trials need, and the Tuner run itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.common.config import Config, SweepConfig
from pipelines.common.errors import ConfigError, LinearizerError, ServiceError
from sweeps import space, trial


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


def search_setup(cfg: Config) -> tuple[Any, Any, dict[str, Any]]:
    """``(search_alg, scheduler, tune_config metric kwargs)`` for the configured objectives."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.sweep
    pareto = s.objectives == "pareto"
    if s.search == "random":
        search = BasicVariantGenerator(random_state=s.seed)
    elif pareto:
        import optuna

        search = OptunaSearch(
            metric=[s.metric, "num_params"],
            mode=["min", "min"],
            sampler=optuna.samplers.NSGAIISampler(seed=s.seed),
        )
    else:
        search = OptunaSearch(seed=s.seed)
    scheduler = None
    if s.scheduler == "asha" and not pareto:  # ASHA ranks by one metric: it would cut the front
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=s.max_epochs,
            grace_period=min(s.grace_period, s.max_epochs),
            reduction_factor=2,
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
) -> Any:
    """Run (or continue) the Tuner named ``sweep_dir.name``; returns its ``ResultGrid``."""
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
        search, scheduler, metric = search_setup(cfg)
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
