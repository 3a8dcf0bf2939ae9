"""Sweep: Ray Tune + Optuna over ``sweep.space`` (rank of ``A``, INN depth, width, lr, ...).

    python -m sweeps.tune [--params params.yaml] [--data data/prepared] [--out results/sweep]
                          [--num-samples N] [--max-epochs E] [--objectives single|pareto]
                          [--name NAME | --resume NAME] [--root DIR]

Every trial runs the train stage's loop (Ray Train inside the trial when
``sweep.workers_per_trial >= 1``); ASHA stops poor trials early. MLflow gets one parent run per
sweep and one child run per trial (params, per-epoch metrics, final one-step metrics, model); the
best trial's model is registered as ``models:/<sweep.registry_name>@champion``. Writes
``best_params.yaml``, ``trials.{csv,parquet}``, ``pareto.{csv,png}`` under ``--out``, atomically.

``--resume NAME`` continues an interrupted sweep (``Tuner.restore``): finished trials are kept,
unfinished ones continue from their last checkpoint. ``--root DIR`` makes every relative path in
params.yaml point into DIR: use it with ``ray job submit --working-dir``, whose copy of the code
would otherwise receive the outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from pipelines import config as config_mod
from pipelines import figures, ray_runtime, tracking, train_loop
from pipelines.errors import ConfigError, LinearizerError, ServiceError, cli
from pipelines.io import atomic_path, write_atomic, write_csv
from sweeps import registry, results, space, trial

PARENT_TAG, ROLE_TAG = "linearizer.sweep", tracking.ROLE_TAG


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default=str(config_mod.ROOT / "params.yaml"))
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--out", default="results/sweep")
    p.add_argument("--num-samples", type=int, help="override sweep.num_samples")
    p.add_argument("--max-epochs", type=int, help="override sweep.max_epochs")
    p.add_argument("--objectives", choices=("single", "pareto"), help="override sweep.objectives")
    p.add_argument("--name", help="the sweep's name (default: sweep-<time>)")
    p.add_argument("--resume", metavar="NAME", help="continue the interrupted sweep NAME")
    p.add_argument("--root", help="resolve relative paths from params.yaml against this folder")
    return p.parse_args(argv)


def with_overrides(cfg: config_mod.Config, args: argparse.Namespace) -> config_mod.Config:
    changes = {
        "num_samples": args.num_samples,
        "max_epochs": args.max_epochs,
        "objectives": args.objectives,
    }
    sweep = dataclasses.replace(cfg.sweep, **{k: v for k, v in changes.items() if v is not None})
    return config_mod.parse(
        {
            **{f.name: dataclasses.asdict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)},
            "sweep": dataclasses.asdict(sweep),
        }
    )  # re-validated: flags get the checks params.yaml gets


def check_trial_resources(
    sweep: config_mod.SweepConfig, use_gpu: bool, res: dict[str, float]
) -> None:
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


def search_setup(cfg: config_mod.Config) -> tuple[Any, Any, dict[str, Any]]:
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


def attempt_logger() -> type:
    """``MLflowLoggerCallback`` with one child run per *attempt*: when Tune retries a crashed
    trial (``FailureConfig``), the crashed attempt's run ends FAILED and the retry logs into a
    new run, instead of one run silently spanning both."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class AttemptLogger(MLflowLoggerCallback):
        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            run_id = self._trial_runs.pop(trial, None)
            if run_id is not None:
                self.mlflow_util.end_run(run_id=run_id, status="FAILED")

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            if trial not in self._trial_runs:  # a retried attempt: its own run
                self.log_trial_start(trial)
            super().log_trial_result(iteration, trial, result)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if trial in self._trial_runs:
                super().log_trial_end(trial, failed)

    return AttemptLogger


def find_parent(experiment_id: str, name: str) -> str | None:
    import mlflow

    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'parent'",
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def all_child_runs(experiment_id: str, parent_id: str) -> list[Any]:
    """Every run of the parent's children, oldest first (a resumed trial has one per attempt)."""
    import mlflow

    return mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


def child_runs(experiment_id: str, parent_id: str) -> dict[str, Any]:
    """``trial_name -> run`` for the parent's children (the newest run when a resumed trial
    has two)."""
    runs = all_child_runs(experiment_id, parent_id)
    return {r.data.tags.get("trial_name", r.info.run_id): r for r in runs}


def close_orphans(experiment_id: str, parent_id: str) -> int:
    """Children left RUNNING by a killed driver are marked KILLED (the UI would show them live).
    All of them: a trial that was running when its driver died has a newer run after the
    resume, and the older one would hide behind it in ``child_runs``."""
    return tracking.mark_killed(all_child_runs(experiment_id, parent_id))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.root:
        root = Path(args.root).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"--root {args.root} is not a folder")
        os.environ["LINEARIZER_ROOT"] = str(root)
    if args.name and args.resume:
        raise ConfigError("give --name for a new sweep or --resume for an old one, not both")
    cfg = with_overrides(config_mod.load(args.params), args)
    s = cfg.sweep
    data_dir, out = config_mod.resolve(args.data), config_mod.output_path(args.out, "--out")
    train_path, val_path = data_dir / "train.parquet", data_dir / "val.parquet"

    from pipelines.data import read_split

    _, _, meta = read_split(train_path)
    xv, _, _ = read_split(val_path)
    shape = tuple(meta["shape"])
    space.check_against_data(s, shape)
    uri = tracking.tracking_uri(cfg.mlflow)
    tracking.check_reachable(uri)

    storage = config_mod.output_path(cfg.train.storage_path, "train.storage_path")
    name = args.resume or args.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = storage / name
    import mlflow
    from ray import tune

    if args.resume and not tune.Tuner.can_restore(str(sweep_dir)):
        raise ConfigError(
            f"no sweep to resume at {sweep_dir}; give the NAME printed when it started "
            f"(folders in {storage})"
        )
    if not args.resume and sweep_dir.exists():
        raise ConfigError(f"{sweep_dir} exists: pick another --name, or --resume {name}")
    exp_id = tracking.setup(cfg.mlflow)
    registry.claim(s.registry_name)
    ray_runtime.init(trial_driver=float(s.max_concurrent_trials))
    import ray

    check_trial_resources(s, cfg.train.use_gpu, ray.cluster_resources())

    parent_id = find_parent(exp_id, name) if args.resume else None
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else name) as parent:
        parent_id = parent.info.run_id
        if not args.resume:
            mlflow.set_tags({PARENT_TAG: name, ROLE_TAG: "parent"})
            mlflow.log_params(
                {
                    k: v
                    for k, v in cfg.to_flat_dict().items()
                    if k.startswith(("sweep.", "data.")) and k != "sweep.space"
                }
            )
            mlflow.log_dict(s.space, "sweep_space.json")
        objective = s.metric + (" vs num_params" if s.objectives == "pareto" else "")
        print(
            f"sweep {name}: {s.num_samples} trials x <= {s.max_epochs} epochs, "
            f"{s.objectives} objective ({objective}), "
            f"MLflow parent run {parent_id}\n"
            f"  interrupted? resume with: python -m sweeps.tune --resume {name}",
            flush=True,
        )
        logger = attempt_logger()(
            tracking_uri=uri,
            experiment_name=cfg.mlflow.experiment,
            tags={"mlflow.parentRunId": parent_id, PARENT_TAG: name},
        )
        grid = fit(cfg, sweep_dir, train_path, val_path, callbacks=[logger], resume=args.resume)
        summary = summarise(cfg, grid, shape, xv, exp_id, parent_id, sweep_dir, out)
    closed = close_orphans(exp_id, parent_id)
    if closed:
        print(f"marked {closed} child run(s) left RUNNING by an interrupted driver as KILLED")
    best = summary["best"]
    print(
        f"\nbest trial {best['trial_id']}: {s.metric} {best[s.metric]:.4f}, "
        f"{best['num_params']:,} parameters, {best['epochs']} epochs; params "
        + ", ".join(f"{k}={best[k]}" for k in s.space)
        + f"\n  registered: models:/{s.registry_name}@{registry.ALIAS} (version "
        f"{summary['registered_version']})\n  results: {out}/ (best_params.yaml, trials.csv, "
        f"pareto.png)\n  compare runs: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 "
        f"--port 5000, experiment '{cfg.mlflow.experiment}', parent run '{name}'"
    )
    return summary


def fit(
    cfg: config_mod.Config,
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


def summarise(
    cfg: config_mod.Config,
    grid: Any,
    shape: tuple[int, ...],
    xv: Any,
    exp_id: str,
    parent_id: str,
    sweep_dir: Path,
    out: Path,
) -> dict[str, Any]:
    """Score each trial's final model, log it to its child run, pick and register the best,
    and write the DVC outputs."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from pipelines import checkpoint
    from pipelines.sampler import OneStepSampler

    s = cfg.sweep
    children = child_runs(exp_id, parent_id)
    client, rows = MlflowClient(), []
    for res in grid:
        metrics = res.metrics or {}
        trial_id = metrics.get("trial_id") or Path(res.path).name
        params = {k: res.config[k] for k in s.space}
        state = None if res.error else trial.final_state(res)
        row = {
            "trial_id": trial_id,
            **params,
            "status": "error" if res.error else "ok",
            "epochs": int(metrics.get("training_iteration", 0)),
            "num_params": int(metrics.get("num_params", 0)),
        }
        child = next((r for t, r in children.items() if t.endswith(trial_id)), None)
        row["mlflow_run_id"] = child.info.run_id if child else ""
        if state is None:
            rows.append({**row, s.metric: float("nan")})
            continue
        tcfg = trial.trial_config(cfg, params, sweep_dir)
        model = checkpoint.build_model(tcfg.model, shape, seed=tcfg.train.seed,
                                       steps=cfg.evaluate.steps)  # fmt: skip
        model.load_state_dict(train_loop.final_weights(state))
        sampler = OneStepSampler(model, cfg.evaluate.steps)
        row.update({s.metric: float(state["history"][-1][s.metric]), **results.score(sampler, xv)})
        model_path = sweep_dir / "models" / trial_id / "model.pt"
        checkpoint.save(model_path, model, tcfg.model, shape, run_name=trial_id, source="sweep")
        if child is not None:
            now = int(time.time() * 1000)
            final = [
                Metric(k, float(row[k]), now, 0)
                for k in ("final_mmd", "final_swd", "final_energy", "samples_per_s")
            ]
            client.log_batch(child.info.run_id, metrics=final)
            with mlflow.start_run(run_id=child.info.run_id, nested=True):
                row["model_uri"] = tracking.log_sampler_model(model_path, sampler)
        rows.append(row)

    ok = [r for r in rows if r["status"] == "ok"]
    front = results.pareto_front([(r[s.metric], float(r["num_params"])) for r in ok])
    for r, on in zip(ok, front, strict=True):
        r["pareto"] = on
    best = min(ok, key=lambda r: r[s.metric])
    if s.objectives == "pareto":
        best = min((r for r in ok if r["pareto"]), key=lambda r: r[s.metric])
    version = ""
    if best.get("model_uri"):
        version = registry.register(best["model_uri"], s.registry_name, best["mlflow_run_id"])

    columns = [
        "trial_id",
        *s.space,
        "status",
        "epochs",
        s.metric,
        "final_mmd",
        "final_swd",
        "final_energy",
        "num_params",
        "samples_per_s",
        "pareto",
        "mlflow_run_id",
    ]
    write_csv(out / "trials.csv", rows, columns)
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    write_atomic(out / "trials.parquet", lambda p: pq.write_table(table, p))
    write_csv(
        out / "pareto.csv",
        [{**r, "objective": r[s.metric]} for r in ok],
        ["num_params", "objective", "pareto", "trial_id"],
    )
    best_params = {
        **results.nested({k: best[k] for k in s.space}),
        "objective": {
            s.metric: best[s.metric],
            "num_params": best["num_params"],
            "trial_id": best["trial_id"],
            "registered_version": version,
        },
    }
    with atomic_path(out / "best_params.yaml") as tmp:
        tmp.write_text(
            f"# best trial of sweep {sweep_dir.name}: paste the sections into params.yaml\n"
            + yaml.safe_dump(best_params, sort_keys=False)
        )
    fig = figures.pareto(
        [r["num_params"] for r in ok],
        [r[s.metric] for r in ok],
        front,
        xlabel="parameters (log)",
        ylabel=f"{s.metric} (one-step, lower is better)",
        labels=[f"r{r.get('model.rank', '')} d{r.get('model.depth', '')}" for r in ok],
        title=f"{sweep_dir.name}: one-step quality vs model size",
    )
    mlflow.log_figure(fig, "pareto.png")
    figures.save_png(fig, out / "pareto.png")
    mlflow.log_artifact(str(out / "trials.csv"))
    mlflow.log_metrics({f"best_{s.metric}": best[s.metric], "best_num_params": best["num_params"]})
    mlflow.set_tags({"best_trial": best["trial_id"], "best_run_id": best["mlflow_run_id"]})
    return {
        "name": sweep_dir.name,
        "parent_run_id": parent_id,
        "rows": rows,
        "best": best,
        "registered_version": version,
        "out": str(out),
    }


if __name__ == "__main__":
    cli(main)()
