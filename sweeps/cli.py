"""Sweep: Ray Tune + Optuna over ``sweep.space`` (rank of ``A``, INN depth, width, lr, ...).

    python -m sweeps [--params params.yaml] [--data data/prepared] [--out results/sweep]
                          [--model models/model.pt]
                          [--num-samples N] [--max-epochs E] [--objectives single|pareto]
                          [--name NAME | --resume NAME] [--root DIR]

Every trial runs the train stage's loop (Ray Train inside the trial when
``sweep.workers_per_trial >= 1``) for ``sweep.max_epochs``; ASHA stops poor trials early and
Optuna learns from them as pruned trials. The best configuration is then retrained for the full
``train.epochs`` and registered as ``models:/<sweep.registry_name>@champion`` only if it beats the
current champion and the train stage's model (``--model``), all scored alike. MLflow gets one
parent run per sweep and one child run per trial (the resolved config, the dataset, per-epoch
metrics, final one-step metrics, model), plus the retrain's run. Writes ``best_params.yaml``
(with the budget and the comparison), ``trials.{csv,parquet}``, ``pareto.{csv,png}`` under
``--out``, atomically.

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
from pipelines import ray_runtime, tracking
from pipelines.entry import cli
from pipelines.errors import ConfigError
from sweeps import registry, space
from sweeps.champion import CHAMPION_METRIC
from sweeps.mlflow_runs import PARENT_TAG, ROLE_TAG, attempt_logger, close_orphans, find_parent
from sweeps.results import summarise
from sweeps.search import check_trial_resources, fit, study_storage

SECTIONS = ("data", "model", "train", "evaluate", "mlflow", "sweep")
"""The params.yaml sections the sweep reads: ``data`` only to log it on the parent run, of
``evaluate`` only ``steps`` (the keys dvc.yaml's ``params`` name for it)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default=str(config_mod.PARAMS_FILE))
    p.add_argument("--data", default=config_mod.PREPARED)
    p.add_argument("--out", default=config_mod.SWEEP_RESULTS)
    p.add_argument(
        "--model",
        default=f"{config_mod.MODELS}/model.pt",
        help="the train stage's model: the champion must beat it too (skipped when missing)",
    )
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
            **{name: dataclasses.asdict(getattr(cfg, name)) for name in cfg.loaded_sections},
            "sweep": dataclasses.asdict(sweep),
        },
        cfg.loaded_sections,
    )  # re-validated: flags get the checks params.yaml gets


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.root:
        root = Path(args.root).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"--root {args.root} is not a folder")
        os.environ["LINEARIZER_ROOT"] = str(root)
    if args.name and args.resume:
        raise ConfigError("give --name for a new sweep or --resume for an old one, not both")
    cfg = with_overrides(config_mod.load(args.params, SECTIONS), args)
    s = cfg.sweep
    data_dir, out = config_mod.resolve(args.data), config_mod.output_path(args.out, "--out")
    train_model = config_mod.resolve(args.model)
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
    from mlflow import MlflowClient
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
            tracking.log_dataset(MlflowClient(), parent_id, data_dir, name=cfg.data.name)
        objective = s.metric + (" vs num_params" if s.objectives == "pareto" else "")
        print(
            f"sweep {name}: {s.num_samples} trials x <= {s.max_epochs} epochs, "
            f"{s.objectives} objective ({objective}), "
            f"MLflow parent run {parent_id}\n"
            f"  interrupted? resume with: python -m sweeps --resume {name}",
            flush=True,
        )
        logger = attempt_logger(cfg, sweep_dir, data_dir)(
            tracking_uri=uri,
            experiment_name=cfg.mlflow.experiment,
            tags={"mlflow.parentRunId": parent_id, PARENT_TAG: name},
        )
        study = None
        if s.search == "optuna":
            study = (study_storage(cfg, out), name)
            print(f"  Optuna study {name!r}: optuna-dashboard {study[0]}", flush=True)
        grid = fit(
            cfg,
            sweep_dir,
            train_path,
            val_path,
            callbacks=[logger],
            resume=args.resume,
            study=study,
        )
        summary = summarise(
            cfg,
            grid,
            shape,
            xv,
            exp_id,
            parent_id,
            sweep_dir,
            out,
            data_dir=data_dir,
            train_model=train_model,
        )
    closed = close_orphans(exp_id, parent_id)
    if closed:
        print(f"marked {closed} child run(s) left RUNNING by an interrupted driver as KILLED")
    print(report(cfg, summary, uri, exp_id, out))
    return summary


def report(
    cfg: config_mod.Config, summary: dict[str, Any], uri: str, exp_id: str, out: Path
) -> str:
    """The sweep's closing lines: the best trial at its budget, the candidate at the full one
    against the champion and the train stage's model, and what was registered."""
    s, best, decision = cfg.sweep, summary["best"], summary["champion"]
    cand, metric = decision["candidate"], CHAMPION_METRIC

    def value(entry: dict[str, Any] | None) -> str:
        if not entry:
            return "none"
        if entry.get(metric) is None:
            return f"not compared ({entry.get('note', '')})"
        return f"{entry[metric]:.4f} ({entry['model']})"

    where = f"models:/{s.registry_name}@{registry.ALIAS}"
    outcome = (
        f"registered {where} (version {summary['registered_version']}): {decision['reason']}"
        if decision["registered"]
        else f"not registered, {where} unchanged: {decision['reason']}"
    )
    return (
        f"\nbest trial {best['trial_id']}: {s.metric} {best[s.metric]:.4f} after "
        f"{best['epochs']} epochs (the trial budget, sweep.max_epochs={s.max_epochs}), "
        f"{best['num_params']:,} parameters; params "
        + ", ".join(f"{k}={best[k]}" for k in s.space)
        + f"\n  candidate ({cand['source']}, {cand['epochs']} epochs): {metric} "
        f"{cand[metric]:.4f}; current champion: {value(decision['champion'])}; train stage's "
        f"model: {value(decision['train_model'])}\n  {outcome}\n  results: {out}/ "
        f"(best_params.yaml, trials.csv, pareto.png)\n  compare runs: mlflow ui "
        f"--backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open "
        f"http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning "
        f"(experiment '{cfg.mlflow.experiment}', parent run '{summary['name']}')"
    )


def run() -> None:
    """``python -m sweeps``: ``main`` with one-line errors."""
    cli(main)()
