"""Stage ``train``: Ray Train (DDP) fits the one-step generator; MLflow records the run.

    python -m pipelines.stages.train [--params params.yaml] [--data data/prepared] [--out models]
                              [--resume RUN_NAME]

Checks everything cheap first (params, data, rank vs latent dimension, MLflow, Ray resources),
then trains with checkpoints under ``train.storage_path``. The MLflow run opens before the first
epoch and follows training live (see ``tracking``). ``--resume`` continues a run that was
interrupted (same Ray run name, same MLflow run). Writes ``models/model.pt`` (state dict + config),
``models/summary.json`` and ``plots/loss.{csv,png}``, all atomically
(``pipelines.training.outputs``).
"""

from __future__ import annotations

import argparse

from pipelines import config as config_mod
from pipelines import ray_runtime, tracking
from pipelines.config import check_rank
from pipelines.data import read_split
from pipelines.entry import cli
from pipelines.training.driver import run as run_training
from pipelines.training.driver import unique_run_name
from pipelines.training.outputs import save_trained
from pipelines.training.state import load_result_state

SECTIONS = ("data", "model", "train", "evaluate", "mlflow")
"""The params.yaml sections this stage reads; of ``evaluate`` only ``steps`` and ``grid`` (the
keys dvc.yaml's ``params`` name for it)."""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default=str(config_mod.PARAMS_FILE))
    p.add_argument("--data", default=config_mod.PREPARED)
    p.add_argument("--out", default=config_mod.MODELS)
    p.add_argument("--plots", default=config_mod.PLOTS)
    p.add_argument("--resume", help="the Ray run name of an interrupted run to continue")
    args = p.parse_args(argv)

    # load, and check everything cheap before Ray starts
    cfg = config_mod.load(args.params, SECTIONS)
    data_dir = config_mod.resolve(args.data)
    out = config_mod.output_path(args.out, "--out")
    plots = config_mod.output_path(args.plots, "--plots")
    storage = config_mod.output_path(cfg.train.storage_path, "train.storage_path", uri=True)
    train_path, val_path = data_dir / "train.parquet", data_dir / "val.parquet"
    x, _, meta = read_split(train_path)
    xv, _, _ = read_split(val_path)
    shape = tuple(meta["shape"])
    check_rank(cfg.model.rank, shape)
    uri = tracking.tracking_uri(cfg.mlflow)
    tracking.check_reachable(uri)
    ray_runtime.init()
    ray_runtime.check_workers(cfg.train.num_workers, cfg.train.use_gpu)
    run_name = args.resume or unique_run_name()

    # the MLflow run exists before the first epoch: RUNNING while Ray Train trains, rank 0
    # logging each epoch into it (fit_epochs), FAILED with the reason if it fails
    from mlflow import MlflowClient

    exp_id = tracking.setup(cfg.mlflow)
    client = MlflowClient(uri)
    params = {
        **cfg.to_flat_dict(),
        "data.shape": str(shape),
        "data.source": meta["source"],
        "ray.run_name": run_name,
        "ray.storage_path": str(storage / run_name),
    }
    dataset = tracking.dataset_input(data_dir, name=cfg.data.name)  # digest: its DVC md5
    run_id, before = tracking.start_train_run(
        client, exp_id, run_name, params, resume=bool(args.resume), dataset=dataset
    )
    again = f", continued (it was {before})" if before else ""
    print(
        f"training {run_name}: {len(x)} samples of shape {shape}, "
        f"{cfg.train.num_workers} worker(s), {cfg.train.epochs} epochs; "
        f"MLflow run {run_id}{again}"
    )
    # call, then write
    live = {"tracking_uri": uri, "run_id": run_id, "grid": cfg.evaluate.grid}
    run = {"run_name": run_name, "run_id": run_id, "tracking_uri": uri}
    with tracking.failed_on_error(client, run_id):
        result = run_training(cfg, train_path, val_path, run_name=run_name, mlflow_run=live)
        summary = save_trained(
            cfg,
            load_result_state(result),
            shape,
            source=meta["source"],
            run=run,
            reference=xv,
            out=out,
            plots=plots,
            checkpoint_path=str(storage / run_name),  # result.path drops s3://
        )
    print(
        f"trained {run_name}: val_loss {summary['val_loss']:.4f}; MLflow run {run_id}; "
        f"model {out / 'model.pt'}"
    )
    return summary


if __name__ == "__main__":
    cli(main)()
