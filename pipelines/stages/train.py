"""Stage ``train``: Ray Train (DDP) fits the one-step generator; MLflow records the run.

    python -m pipelines.stages.train [--params params.yaml] [--data data/prepared] [--out models]
                              [--resume RUN_NAME]

Checks everything cheap first (params, data, rank vs latent dimension, MLflow, Ray resources),
then trains with checkpoints under ``train.storage_path``. The MLflow run opens before the first
epoch and follows training live (see ``tracking``). ``--resume`` continues a run that was
interrupted (same Ray run name, same MLflow run). Writes ``models/model.pt`` (state dict + config),
``models/summary.json`` and ``plots/loss.{csv,png}``, all atomically.
"""

from __future__ import annotations

import argparse
import math

from lincore.generators import OneStepFlowMatching
from pipelines import config as config_mod
from pipelines import figures, ray_runtime, tracking
from pipelines.atomic import write_csv, write_json
from pipelines.data import read_split
from pipelines.entry import cli
from pipelines.errors import ConfigError
from pipelines.model import checkpoints as checkpoint
from pipelines.training.driver import run as run_training
from pipelines.training.driver import unique_run_name
from pipelines.training.state import final_weights, load_result_state

SECTIONS = ("data", "model", "train", "evaluate", "mlflow")
"""The params.yaml sections this stage reads; of ``evaluate`` only ``steps`` and ``grid`` (the
keys dvc.yaml's ``params`` name for it)."""
LOSS_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_mmd",
    "val_inversion_energy",
    "roundtrip_error",
)


def check_rank(rank: int, shape: tuple[int, ...]) -> None:
    dim = math.prod(shape)
    if not 1 <= rank <= dim:
        raise ConfigError(
            f"model.rank={rank} is impossible for samples of shape {shape}: the latent "
            f"dimension is {dim}, so the rank must be in 1..{dim}"
        )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default=str(config_mod.PARAMS_FILE))
    p.add_argument("--data", default=config_mod.PREPARED)
    p.add_argument("--out", default=config_mod.MODELS)
    p.add_argument("--plots", default=config_mod.PLOTS)
    p.add_argument("--resume", help="the Ray run name of an interrupted run to continue")
    args = p.parse_args(argv)

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

    import mlflow
    from mlflow import MlflowClient

    from pipelines.model.sampler import OneStepSampler

    # the MLflow run exists before the first epoch: RUNNING while Ray Train trains, rank 0
    # logging each epoch into it (fit_epochs), FAILED with the reason if it fails
    exp_id = tracking.setup(cfg.mlflow)
    client = MlflowClient(uri)
    resumed = tracking.find_train_run(client, exp_id, run_name) if args.resume else None
    closed = tracking.close_orphaned_train_runs(
        client, exp_id, keep=resumed.info.run_id if resumed else None
    )
    if closed:
        print(f"marked {closed} train run(s) left RUNNING by a killed driver as KILLED")
    params = {
        **cfg.to_flat_dict(),
        "data.shape": str(shape),
        "data.source": meta["source"],
        "ray.run_name": run_name,
        "ray.storage_path": str(storage / run_name),
    }
    dataset = tracking.dataset_input(data_dir, name=cfg.data.name)  # digest: its DVC md5
    run_id, before = tracking.open_train_run(
        client, exp_id, run_name, params, previous=resumed, dataset=dataset
    )
    again = f", continued (it was {before})" if before else ""
    print(
        f"training {run_name}: {len(x)} samples of shape {shape}, "
        f"{cfg.train.num_workers} worker(s), {cfg.train.epochs} epochs; "
        f"MLflow run {run_id}{again}"
    )
    live = {"tracking_uri": uri, "run_id": run_id, "grid": cfg.evaluate.grid}
    with tracking.failed_on_error(client, run_id):
        result = run_training(cfg, train_path, val_path, run_name=run_name, mlflow_run=live)
        state = load_result_state(result)
        history = state["history"]  # every epoch, resumed ones included

        model = OneStepFlowMatching.build(
            shape, cfg.model, seed=cfg.train.seed, steps=cfg.evaluate.steps
        )
        model.load_state_dict(final_weights(state))
        model_path = out / "model.pt"
        checkpoint.save(
            model_path, model, cfg.model, shape, run_name=run_name, source=meta["source"]
        )
        write_csv(plots / "loss.csv", history, LOSS_COLUMNS)
        epochs = [int(r["epoch"]) + 1 for r in history]
        loss_fig = figures.curves(
            epochs,
            {"train": [r["train_loss"] for r in history], "val": [r["val_loss"] for r in history]},
            xlabel="epoch",
            ylabel="loss",
            title=f"{run_name}",
        )
        tracking.log_missing_epochs(client, run_id, history)
        with mlflow.start_run(run_id=run_id):  # FINISHED once every output is written
            mlflow.log_figure(loss_fig, "plots/loss.png")
            sampler = OneStepSampler(model, cfg.evaluate.steps)
            grid = sampler.sample(cfg.evaluate.grid if len(shape) > 1 else 2000).numpy()
            mlflow.log_figure(
                figures.samples(grid, reference=xv, title="one-step samples (end of training)"),
                "samples/train_end_grid.png",
            )
            model_uri = tracking.log_sampler_model(model_path, sampler)
            figures.save_png(loss_fig, plots / "loss.png")
            final = history[-1]
            summary = {
                "run_name": run_name,
                "mlflow_run_id": run_id,
                "mlflow_model_uri": model_uri,
                "tracking_uri": uri,
                "epochs": len(history),
                "train_loss": final["train_loss"],
                "val_loss": final["val_loss"],
                "roundtrip_error": final["roundtrip_error"],
                "checkpoint_path": str(storage / run_name),  # result.path drops s3://
            }
            write_json(out / "summary.json", summary)
    print(
        f"trained {run_name}: val_loss {final['val_loss']:.4f}; MLflow run {run_id}; "
        f"model {model_path}"
    )
    return summary


if __name__ == "__main__":
    cli(main)()
