"""Stage ``evaluate``: collapse the trained sampler and score one-step sampling on the test split.

    python -m pipelines.stages.evaluate [--params params.yaml] [--data data/prepared]
                                        [--model models] [--device auto|cpu|cuda]

Writes ``metrics.json`` (DVC metrics), ``plots/steps.csv`` (one-step vs multi-step by T) and PNG
images (samples, interpolation, quality by steps) for DVC, and logs all of it to the training
run in MLflow. It runs on the GPU when there is one (``--device``; the collapse and the
exactness checks in float64 there too) and draws its noise on the CPU, so a seed gives the same
noise, and the same metrics up to round-off, on any device.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import numpy as np
import torch

from lincore.classifier import fit_classifier
from lincore.generators import bits_per_dim
from lincore.metrics import (
    energy_distance,
    frechet_distance,
    max_error,
    median_seconds,
    mmd,
    outside_range,
    psnr,
    sliced_wasserstein,
    typicality,
)
from pipelines.common import checkpoints as checkpoint
from pipelines.common import config as config_mod
from pipelines.common import figures, tracking
from pipelines.common.atomic import write_csv, write_json
from pipelines.common.data import read_split
from pipelines.common.errors import DataError, cli
from pipelines.common.one_step_sampler import default_device, parse_device

SECTIONS = ("evaluate", "mlflow")
"""The params.yaml sections this stage reads (dvc.yaml's ``params`` for it)."""
STEP_GRID = (2, 5, 10, 20, 50, 100)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    test: np.ndarray,
    train: np.ndarray,
    labels: np.ndarray,
    steps: int,
    n_samples: int,
    *,
    bins: int = 0,
    device: str | torch.device | None = None,
) -> tuple[dict, list[dict], dict]:
    """``(metrics, rows of quality by steps, images)`` for a trained one-step generator.

    Beyond sample quality it reports what a degenerate generator gets wrong: whether test data
    invert to typical noise (``inversion_*``), whether interpolation midpoints (of training
    pairs) stay on the data (``interpolation_*`` next to the samples' figures: same count, same
    held-out reference), how many sample values leave the data's range, and the NLL per bin of
    dequantised data (``bins`` grey levels; 0 = continuous).

    ``model`` is moved to ``device`` (``None``: the GPU when there is one); the noise is drawn
    on the CPU and moved there, the images come back on the CPU.
    """
    dev = default_device(device)
    model.to(dev)
    torch.manual_seed(0)
    xt = torch.from_numpy(test).to(dev)
    n = n_samples or len(xt)
    x0 = torch.randn(n, *model.event_shape, generator=torch.Generator().manual_seed(1)).to(dev)
    ref = xt[:n]
    model.double()  # the exactness checks, inversion and NLL in float64
    x64 = x0.double()
    b = {m: model.collapse(steps, m) for m in ("euler", "rk4")}
    multi = {m: model.sample(x64, steps, m) for m in b}
    one = {m: model.sample_one_step(x64, b[m]) for m in b}
    noise_back = model.invert(one["euler"], b["euler"])
    test_noise = model.invert(xt.double(), b["euler"])
    test_back = model.sample_one_step(test_noise, b["euler"])
    mid = midpoints(model, torch.from_numpy(train).to(dev), n, b["euler"])
    typical = typicality(test_noise)
    dense_big = not b["euler"].factored and model.dim > 4096  # O(D^3): skip, report nan
    singular = torch.full((1,), math.nan) if dense_big else b["euler"].singular_values()
    lo, hi = float(test.min()), float(test.max())
    rng = hi - lo
    metrics = {
        "psnr_one_vs_multi_euler": psnr(one["euler"], multi["euler"], data_range=rng),
        "psnr_one_vs_multi_rk4": psnr(one["rk4"], multi["rk4"], data_range=rng),
        "max_err_one_vs_multi_euler": max_error(one["euler"], multi["euler"]),
        "max_err_one_vs_multi_rk4": max_error(one["rk4"], multi["rk4"]),
        "psnr_inversion_roundtrip": psnr(test_back, xt.double(), data_range=rng),
        "noise_inversion_max_err": max_error(noise_back, x64),
        "nll_bits_per_dim": bits_per_dim(
            model.log_prob(xt.double(), b["euler"]), model.dim, bins=bins or None
        ),
        "nll_bins": float(bins),
        "inversion_median_energy": typical["median_energy"],
        "inversion_median_expected": typical["median_expected"],  # of N(0, I) noise
        "inversion_inside_shell": typical["inside_shell"],
        "collapse_floor": b["euler"].floor,
        "collapse_min_singular_value": float(singular.min()),
        "collapse_condition_number": float(singular.max() / singular.min()),
    }
    rows = []
    for t in STEP_GRID:  # the evaluated T is in the grid: reuse its samples
        if t == steps:
            one_t, multi_t = one["euler"], multi["euler"]
        else:
            one_t = model.sample_one_step(x64, model.collapse(t, "euler"))
            multi_t = model.sample(x64, t, "euler")
        rows.append(
            {
                "steps": t,
                "psnr_one_vs_multi": min(psnr(one_t, multi_t, data_range=rng), 400.0),
                "mmd_one_step": mmd(one_t.float(), ref),
            }
        )
    model.float()
    metrics["g_roundtrip_error_f32"] = model.roundtrip_error(xt)
    samples = model.sample_one_step(x0, b["euler"])
    metrics |= {
        "mmd": mmd(samples, ref),
        "swd": sliced_wasserstein(samples, ref),
        "energy": energy_distance(samples, ref),
        "interpolation_mmd": mmd(mid, ref),
        "samples_outside_range": outside_range(samples, lo, hi),
        "interpolation_outside_range": outside_range(mid, lo, hi),
    }
    if (labels >= 0).all() and len(np.unique(labels)) > 1:
        clf = fit_classifier(torch.from_numpy(train), torch.from_numpy(labels), steps=800)
        feats = {k: clf.features(v.cpu()) for k, v in (("s", samples), ("m", mid), ("r", ref))}
        metrics["frechet_classifier"] = frechet_distance(feats["s"], feats["r"])
        metrics["interpolation_frechet_classifier"] = frechet_distance(feats["m"], feats["r"])

    def finished(fn: Callable[[], object]) -> Callable[[], None]:
        """``fn`` timed to its end: a GPU runs asynchronously, so wait for it."""

        def run() -> None:
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return run

    one_s = median_seconds(finished(lambda: model.sample_one_step(x0, b["euler"])), 5)
    multi_s = median_seconds(finished(lambda: model.sample(x0, steps, "euler")), 1)
    metrics |= {
        "samples_per_s_one_step": n / one_s,
        "samples_per_s_multi_step": n / multi_s,
        "speedup_one_vs_multi": multi_s / one_s,
    }

    alphas = torch.linspace(0, 1, 9)
    path = model.interpolate(xt[:4], xt[4:8], alphas, b["euler"])
    images = {"samples": samples.cpu().numpy(), "interpolation": path.cpu().numpy()}
    return metrics, rows, images


def midpoints(model: torch.nn.Module, pool: torch.Tensor, n: int, b: object) -> torch.Tensor:
    """``n`` interpolation midpoints (alpha = 0.5, through the noise) of random pairs drawn from
    ``pool`` (training data): as many as the samples they are compared with, and none built
    from the held-out reference, so both MMD and Fréchet compare like with like."""
    gen = torch.Generator().manual_seed(2)  # indices drawn on the CPU: the same on any device
    a, c = (torch.randint(len(pool), (n,), generator=gen).to(pool.device) for _ in range(2))
    return model.interpolate(pool[a].double(), pool[c].double(), torch.tensor([0.5]), b)[0].float()


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
    cfg = config_mod.load(args.params, SECTIONS)
    device = parse_device(args.device)
    data_dir, model_dir = (config_mod.resolve(a) for a in (args.data, args.model))
    plots = config_mod.output_path(args.plots, "--plots")
    test, _, meta = read_split(data_dir / "test.parquet")
    train, labels, _ = read_split(data_dir / "train.parquet")
    model, _ = checkpoint.load(model_dir / "model.pt")
    summary_path = model_dir / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{summary_path} is missing; run `dvc repro train` first")
    summary = json.loads(summary_path.read_text())

    metrics, rows, images = evaluate(
        model,
        test,
        train,
        labels,
        cfg.evaluate.steps,
        cfg.evaluate.n_samples,
        bins=int(meta.get("bins", 0)),
        device=device,
    )
    shape = tuple(meta["shape"])
    grid = images["samples"][: cfg.evaluate.grid] if len(shape) > 1 else images["samples"]
    figs = {
        "samples.png": figures.samples(grid, reference=test, title="one-step samples"),
        "interpolation.png": figures.interpolation(
            images["interpolation"], title="interpolation through the noise (one step each)"
        ),
        "steps.png": figures.curves(
            [r["steps"] for r in rows],
            {"one-step vs multi-step PSNR (dB)": [r["psnr_one_vs_multi"] for r in rows]},
            xlabel="sampler steps T",
            ylabel="PSNR (dB)",
            log_x=True,
            title="the collapse is exact at every T",
        ),
    }

    import mlflow

    tracking.setup(cfg.mlflow)
    with mlflow.start_run(run_id=summary["mlflow_run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if math.isfinite(v)})
        for row in rows:
            mlflow.log_metric(
                "test_psnr_one_vs_multi_by_steps", row["psnr_one_vs_multi"], step=row["steps"]
            )
        for name, fig in figs.items():
            mlflow.log_figure(fig, f"evaluate/{name}")
    for name, fig in figs.items():
        figures.save_png(fig, plots / name)
    write_csv(plots / "steps.csv", rows, list(rows[0]))
    out = {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
    write_json(config_mod.output_path(args.metrics, "--metrics"), out)
    width = max(len(k) for k in out)
    print(
        "\n".join(
            f"  {k:<{width}}  {v:.6g}" if isinstance(v, float) else f"  {k:<{width}}  {v}"
            for k, v in out.items()
        )
    )
    print(
        f"\nresults: {config_mod.resolve(args.metrics)} (dvc metrics show), {plots}/*.png "
        f"(dvc plots show), MLflow run {summary['run_name']} in {summary['tracking_uri']}\n"
        f"  view:  mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1"
    )
    return metrics


if __name__ == "__main__":
    cli(main)()
