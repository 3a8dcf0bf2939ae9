"""Stage ``evaluate``: collapse the trained sampler and score one-step sampling on the test split.

    python -m pipelines.stages.evaluate [--params params.yaml] [--data data/prepared]
                                        [--model models] [--device auto|cpu|cuda]

Writes ``metrics.json`` (DVC metrics), ``plots/steps.csv`` (one-step vs multi-step by T) and PNG
images (samples, interpolation, quality by steps) for DVC, and logs all of it to the training
run in MLflow. It runs on the GPU when there is one (``--device``; the collapse and the
exactness checks in float64 there too) and draws its noise on the CPU, so a seed gives the same
noise, and the same metrics up to round-off, on any device.

Its cost and memory are fixed by ``evaluate.n_samples`` (samples drawn, and test rows they are
compared with: the first ``n``, read in batches; 0 = the test split, at most
``MAX_REFERENCE``), not by the test set's size: every pass runs ``evaluate.batch_size`` rows at
a time and the kernel metrics sum ``batch_size x batch_size`` blocks, so peak memory is
``O(batch_size^2 + n D)`` (the samples, midpoints and reference rows are held for MMD,
energy and sliced Wasserstein distances). The classifier and the midpoints' pairs use the
first ``TRAIN_POOL`` training rows.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from lincore.classifier import fit_classifier
from lincore.generators import bits_per_dim
from lincore.metrics import (
    RunningError,
    RunningMoments,
    energy_distance,
    frechet_distance,
    max_error,
    median_bandwidths,
    median_seconds,
    mmd,
    outside_count,
    psnr,
    sliced_wasserstein,
    typicality_from_energies,
)
from pipelines.common import checkpoints as checkpoint
from pipelines.common import config as config_mod
from pipelines.common import figures, tracking
from pipelines.common.atomic import write_csv, write_json
from pipelines.common.data import iter_rows, read_head, split_info
from pipelines.common.errors import DataError, cli
from pipelines.common.one_step_sampler import default_device, parse_device

SECTIONS = ("evaluate", "mlflow")
"""The params.yaml sections this stage reads (dvc.yaml's ``params`` for it)."""
STEP_GRID = (2, 5, 10, 20, 50, 100)
MAX_REFERENCE = 10_000
"""Samples drawn and test rows compared with when ``evaluate.n_samples`` is 0."""
TRAIN_POOL = 10_000
"""Training rows read for the feature classifier and the interpolation midpoints' pairs."""


def _spans(n: int, size: int) -> Iterator[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def reference_rows(
    test: np.ndarray | str | Path, n_samples: int, batch_size: int
) -> tuple[np.ndarray, int]:
    """``(the first min(n, rows) test rows, n)``: ``n`` is the sample count (``n_samples``, or
    the test rows up to ``MAX_REFERENCE`` when it is 0). A split's path is read with
    ``iter_rows`` up to that limit, ``batch_size`` rows at a time, never whole."""
    if isinstance(test, np.ndarray):
        n = n_samples or min(len(test), MAX_REFERENCE)
        return np.array(test[:n], dtype=np.float32), n  # a writable copy of small data
    info = split_info(test)
    n = n_samples or min(info["rows"], MAX_REFERENCE)
    m = min(n, info["rows"])
    out = np.empty((m, *info["shape"]), dtype=np.float32)
    filled = 0
    for x, _ in iter_rows(test, batch_size, limit=m):
        out[filled : filled + len(x)] = x
        filled += len(x)
    return out[:filled], n


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    test: np.ndarray | str | Path,
    train: np.ndarray,
    labels: np.ndarray,
    steps: int,
    n_samples: int,
    *,
    bins: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 500,
) -> tuple[dict, list[dict], dict]:
    """``(metrics, rows of quality by steps, images)`` for a trained one-step generator.

    Beyond sample quality it reports what a degenerate generator gets wrong: whether test data
    invert to typical noise (``inversion_*``), whether interpolation midpoints (of training
    pairs) stay on the data (``interpolation_*`` next to the samples' figures: same count, same
    held-out reference), how many sample values leave the data's range, and the NLL per bin of
    dequantised data (``bins`` grey levels; 0 = continuous).

    ``test`` is the test split's Parquet path (read by ``reference_rows``: the first ``n`` rows,
    in batches) or its rows in memory; ``train``/``labels`` are the classifier's training rows
    and the midpoints' pool (a bounded head of the training split). ``n_samples`` samples are
    drawn (0: as many as test rows, at most ``MAX_REFERENCE``) and compared with the first
    ``n_samples`` test rows. Sampling, inversion, likelihood, range checks and classifier
    features run ``batch_size`` rows at a time, the kernel metrics in blocks of that size. The
    one-step-vs-multi-step exactness checks (``psnr_one_vs_multi_*``, ``max_err_one_vs_multi_*``
    and the rows by steps, whose ``mmd_one_step`` compares that batch's one-step samples with
    the whole reference) and the throughput timings run on the first batch of noise only: the
    multi-step sampler costs ``T`` forward passes.

    ``model`` is moved to ``device`` (``None``: the GPU when there is one); the noise is drawn
    on the CPU and moved there, the images come back on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = default_device(device)
    model.to(dev)
    torch.manual_seed(0)
    ref_rows, n = reference_rows(test, n_samples, batch_size)
    xt = torch.from_numpy(ref_rows).to(dev)  # the reference: float32, min(n, rows) rows
    m = len(xt)
    shape, dim = tuple(model.event_shape), model.dim
    x0 = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))  # on the CPU
    head = x0[:batch_size].to(dev)  # the exactness checks' and timings' batch
    lo, hi = float(ref_rows.min()), float(ref_rows.max())
    rng = hi - lo
    hs = median_bandwidths(xt)  # fixed by the reference: the same for every MMD below

    model.double()  # the exactness checks, inversion and NLL in float64
    b = {k: model.collapse(steps, k) for k in ("euler", "rk4")}
    be = b["euler"]
    head64 = head.double()
    multi = {k: model.sample(head64, steps, k) for k in b}
    one = {k: model.sample_one_step(head64, b[k]) for k in b}
    noise_back = RunningError()
    for s in _spans(n, batch_size):
        x64 = x0[s].to(dev).double()
        noise_back.update(model.invert(model.sample_one_step(x64, be), be), x64)
    test_back, energies, log_p = RunningError(), [], []
    for s in _spans(m, batch_size):
        xb = xt[s].double()
        test_noise = model.invert(xb, be)
        energies.append(test_noise.flatten(1).pow(2).sum(1))
        test_back.update(model.sample_one_step(test_noise, be), xb)
        log_p.append(model.log_prob(xb, be))
    mid = midpoints(model, torch.from_numpy(train), n, be, batch_size=batch_size)
    typical = typicality_from_energies(torch.cat(energies), dim)
    dense_big = not be.factored and dim > 4096  # O(D^3): skip, report nan
    singular = torch.full((1,), math.nan) if dense_big else be.singular_values()
    metrics = {
        "psnr_one_vs_multi_euler": psnr(one["euler"], multi["euler"], data_range=rng),
        "psnr_one_vs_multi_rk4": psnr(one["rk4"], multi["rk4"], data_range=rng),
        "max_err_one_vs_multi_euler": max_error(one["euler"], multi["euler"]),
        "max_err_one_vs_multi_rk4": max_error(one["rk4"], multi["rk4"]),
        "psnr_inversion_roundtrip": test_back.psnr(data_range=rng),
        "noise_inversion_max_err": noise_back.max,
        "nll_bits_per_dim": bits_per_dim(torch.cat(log_p), dim, bins=bins or None),
        "nll_bins": float(bins),
        "inversion_median_energy": typical["median_energy"],
        "inversion_median_expected": typical["median_expected"],  # of N(0, I) noise
        "inversion_inside_shell": typical["inside_shell"],
        "collapse_floor": be.floor,
        "collapse_min_singular_value": float(singular.min()),
        "collapse_condition_number": float(singular.max() / singular.min()),
    }
    rows = []
    for t in STEP_GRID:  # the evaluated T is in the grid: reuse its samples
        if t == steps:
            one_t, multi_t = one["euler"], multi["euler"]
        else:
            one_t = model.sample_one_step(head64, model.collapse(t, "euler"))
            multi_t = model.sample(head64, t, "euler")
        rows.append(
            {
                "steps": t,
                "psnr_one_vs_multi": min(psnr(one_t, multi_t, data_range=rng), 400.0),
                "mmd_one_step": mmd(one_t.float(), xt, hs, block=batch_size),
            }
        )
    del multi, one, head64
    model.float()
    metrics["g_roundtrip_error_f32"] = max(
        model.roundtrip_error(xt[s]) for s in _spans(m, batch_size)
    )
    samples = torch.empty(n, *shape, device=dev)
    for s in _spans(n, batch_size):
        samples[s] = model.sample_one_step(x0[s].to(dev), be)
    outside = {
        k: sum(outside_count(v[s], lo, hi) for s in _spans(n, batch_size)) / v.numel()
        for k, v in (("samples", samples), ("interpolation", mid))
    }
    metrics |= {
        "mmd": mmd(samples, xt, hs, block=batch_size),
        "swd": sliced_wasserstein(samples, xt, block=batch_size),
        "energy": energy_distance(samples, xt, block=batch_size),
        "interpolation_mmd": mmd(mid, xt, hs, block=batch_size),
        "samples_outside_range": outside["samples"],
        "interpolation_outside_range": outside["interpolation"],
    }
    if (labels >= 0).all() and len(np.unique(labels)) > 1:
        clf = fit_classifier(torch.from_numpy(train), torch.from_numpy(labels), steps=800)
        feats = {k: RunningMoments() for k in ("s", "m", "r")}
        for k, v in (("s", samples), ("m", mid), ("r", xt)):
            for s in _spans(len(v), batch_size):
                feats[k].update(clf.features(v[s].cpu()))
        metrics["frechet_classifier"] = frechet_distance(feats["s"], feats["r"])
        metrics["interpolation_frechet_classifier"] = frechet_distance(feats["m"], feats["r"])

    def finished(fn: Callable[[], object]) -> Callable[[], None]:
        """``fn`` timed to its end: a GPU runs asynchronously, so wait for it."""

        def run() -> None:
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return run

    one_s = median_seconds(finished(lambda: model.sample_one_step(head, be)), 5)
    multi_s = median_seconds(finished(lambda: model.sample(head, steps, "euler")), 1)
    metrics |= {
        "samples_per_s_one_step": len(head) / one_s,
        "samples_per_s_multi_step": len(head) / multi_s,
        "speedup_one_vs_multi": multi_s / one_s,
    }

    alphas = torch.linspace(0, 1, 9)
    path = model.interpolate(xt[:4], xt[4:8], alphas, be)
    images = {"samples": samples.cpu().numpy(), "interpolation": path.cpu().numpy()}
    return metrics, rows, images


def midpoints(
    model: torch.nn.Module, pool: torch.Tensor, n: int, b: object, *, batch_size: int = 500
) -> torch.Tensor:
    """``n`` interpolation midpoints (alpha = 0.5, through the noise) of random pairs drawn from
    ``pool`` (training data): as many as the samples they are compared with, and none built
    from the held-out reference, so both MMD and Fréchet compare like with like. Built
    ``batch_size`` pairs at a time (only those rows of ``pool`` go to the model's device), in
    the model's dtype, returned as float32 on its device."""
    gen = torch.Generator().manual_seed(2)  # indices drawn on the CPU: the same on any device
    a, c = (torch.randint(len(pool), (n,), generator=gen) for _ in range(2))
    ref = next(model.parameters())
    out = torch.empty(n, *pool.shape[1:], device=ref.device)
    half = torch.tensor([0.5])
    for s in _spans(n, batch_size):
        xa, xc = (pool[i[s]].to(ref.device, ref.dtype) for i in (a, c))
        out[s] = model.interpolate(xa, xc, half, b)[0].float()
    return out


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
    test_path = data_dir / "test.parquet"
    meta = split_info(test_path)  # the test rows are read in batches by evaluate()
    train, labels, _ = read_head(data_dir / "train.parquet", TRAIN_POOL)
    model, _ = checkpoint.load(model_dir / "model.pt")
    summary_path = model_dir / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{summary_path} is missing; run `dvc repro train` first")
    summary = json.loads(summary_path.read_text())

    metrics, rows, images = evaluate(
        model,
        test_path,
        train,
        labels,
        cfg.evaluate.steps,
        cfg.evaluate.n_samples,
        bins=int(meta.get("bins", 0)),
        device=device,
        batch_size=cfg.evaluate.batch_size,
    )
    shape = tuple(meta["shape"])
    grid = images["samples"][: cfg.evaluate.grid] if len(shape) > 1 else images["samples"]
    points = read_head(test_path, 2000)[0] if len(shape) == 1 else None  # the scatter's data
    figs = {
        "samples.png": figures.samples(grid, reference=points, title="one-step samples"),
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
