"""Stage ``evaluate``: collapse the trained sampler and score one-step sampling on the test split.

    python -m pipelines.stages.evaluate [--params params.yaml] [--data data/prepared]
                                        [--model models] [--device auto|cpu|cuda]

Writes ``metrics.json`` (DVC metrics), ``plots/steps.csv`` (one-step vs multi-step by T) and PNG
images (samples, interpolation, quality by steps) for DVC, and logs all of it to the training
run in MLflow. It runs on the GPU when there is one (``--device``; the collapse and the
exactness checks in float64 there too) and draws its noise on the CPU, so a seed gives the same
noise, and the same metrics up to round-off, on any device. Its cost and memory are fixed by
``evaluate.n_samples`` and ``evaluate.batch_size``, not by the test set's size
(``pipelines.evaluation.trained``).
"""

from __future__ import annotations

import argparse
import json

from pipelines import config as config_mod
from pipelines.data import read_head, split_info
from pipelines.entry import cli
from pipelines.errors import DataError
from pipelines.evaluation import report
from pipelines.evaluation.trained import TRAIN_POOL, evaluate
from pipelines.model import checkpoints
from pipelines.model.sampler import parse_device

SECTIONS = ("evaluate", "mlflow")
"""The params.yaml sections this stage reads (dvc.yaml's ``params`` for it)."""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default=str(config_mod.PARAMS_FILE))
    p.add_argument("--data", default=config_mod.PREPARED)
    p.add_argument("--model", default=config_mod.MODELS)
    p.add_argument("--metrics", default=config_mod.METRICS)
    p.add_argument("--plots", default=config_mod.PLOTS)
    p.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1"
    )
    args = p.parse_args(argv)
    # load
    cfg = config_mod.load(args.params, SECTIONS)
    device = parse_device(args.device)
    data_dir, model_dir = (config_mod.resolve(a) for a in (args.data, args.model))
    plots = config_mod.output_path(args.plots, "--plots")
    metrics_path = config_mod.output_path(args.metrics, "--metrics")
    test_path = data_dir / "test.parquet"
    meta = split_info(test_path)  # the test rows are read in batches by evaluate()
    train, labels, _ = read_head(data_dir / "train.parquet", TRAIN_POOL)
    model, _ = checkpoints.load(model_dir / "model.pt")
    summary_path = model_dir / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{summary_path} is missing; run `dvc repro train` first")
    summary = json.loads(summary_path.read_text())
    # call
    e = cfg.evaluate
    metrics, rows, images = evaluate(
        model,
        test_path,
        train,
        labels,
        e.steps,
        e.n_samples,
        bins=int(meta.get("bins", 0)),
        device=device,
        batch_size=e.batch_size,
    )
    # write
    vectors = len(meta["shape"]) == 1
    points = read_head(test_path, 2000)[0] if vectors else None  # the scatter's data
    figs = report.draw(rows, images, grid=e.grid, points=points)
    report.log_to_run(cfg.mlflow, summary["mlflow_run_id"], metrics, rows, figs)
    out = report.write_outputs(
        metrics, rows, figs, metrics_path=metrics_path, plots=plots, spectrum=images.get("spectrum")
    )
    report.print_summary(out)
    print(
        f"\nresults: {metrics_path} (dvc metrics show), {plots}/*.png "
        f"(dvc plots show), MLflow run {summary['run_name']} in {summary['tracking_uri']}\n"
        f"  view:  mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1"
    )
    return metrics


if __name__ == "__main__":
    cli(main)()
