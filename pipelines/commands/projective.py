"""The globally projective generator on a data set, for a list of ranks: train, score, picture.

    python -m pipelines.commands.projective [--data moons] [--ranks 1] [--seconds 60] [--depth 6]
                                   [--hidden 64] [--out results/projective]

For each rank ``r``: ``f = g^-1 P g`` (``P`` an exact rank-``r`` projector) is trained for
``--seconds`` on the train split, then scored on the test split: the idempotency error on
random inputs (float64), the reconstruction of held-out data (``f(x)`` vs ``x``), and the quality
of ``f(noise)`` with the one-step metrics (MMD, sliced Wasserstein, energy, classifier Fréchet
for labelled images). Writes ``metrics.json``, ``table.csv`` and one PNG per rank, atomically.
"""

from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import torch

from lincore.classifier import fit_classifier
from lincore.generators import ProjectiveGenerator
from lincore.metrics import (
    energy_distance,
    frechet_distance,
    mmd,
    psnr,
    roundtrip_error,
    sliced_wasserstein,
)
from pipelines import config as config_mod
from pipelines import data as data_mod
from pipelines import figures
from pipelines.atomic import write_csv, write_json
from pipelines.entry import cli
from pipelines.errors import ConfigError
from pipelines.training.timed_fit import fit_for

COLUMNS = (
    "data",
    "rank",
    "steps",
    "idempotency_error",
    "idempotency_abs_error",
    "max_abs_output",
    "g_roundtrip_error_f32",
    "reconstruction_mse",
    "reconstruction_psnr",
    "mmd",
    "swd",
    "energy",
    "frechet_classifier",
    "data_floor_mmd",
)


def score(
    p: ProjectiveGenerator, test: torch.Tensor, train: torch.Tensor, labels: np.ndarray
) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics for a trained projector, and its samples ``f(noise)``."""
    shape = tuple(test.shape[1:])
    gen = torch.Generator().manual_seed(0)
    any_input = torch.cat(
        [
            torch.randn(500, *shape, generator=gen),
            5 * torch.randn(500, *shape, generator=gen),
            torch.rand(500, *shape, generator=gen),
        ]
    ).double()
    p64 = copy.deepcopy(p).double()
    with torch.no_grad():
        relative = p64.idempotency_error(any_input)  # max|f(f(x)) - f(x)| / max(1, max|f(x)|)
        largest = float(p64.project(any_input).abs().max())
        metrics = {
            "idempotency_error": relative,
            "idempotency_abs_error": relative * max(1.0, largest),
            "max_abs_output": largest,
        }
        back = p.project(test)
        samples = p.sample(len(test), generator=torch.Generator().manual_seed(1))
        metrics["g_roundtrip_error_f32"] = roundtrip_error(p.g, test)
    lo, hi = float(test.min()), float(test.max())
    metrics |= {
        "reconstruction_mse": float((back - test).pow(2).mean()),
        "reconstruction_psnr": psnr(back, test, data_range=hi - lo),
        "mmd": mmd(samples, test),
        "swd": sliced_wasserstein(samples, test),
        "energy": energy_distance(samples, test),
        "data_floor_mmd": mmd(train[: len(test)], test),
    }
    if (labels >= 0).all() and len(np.unique(labels)) > 1:
        clf = fit_classifier(train, torch.from_numpy(labels), steps=800)
        metrics["frechet_classifier"] = frechet_distance(clf.features(samples), clf.features(test))
    return metrics, samples


def picture(p: ProjectiveGenerator, test: torch.Tensor, samples: torch.Tensor, title: str):  # noqa: ANN201
    """2-D: inputs joined to their projections over the data. Images: one labelled row each of
    noise, f(noise), held-out data and f(data), the columns lined up."""
    with torch.no_grad():
        if test.dim() == 2 and test.shape[1] == 2:
            noise = p.noise(200, generator=torch.Generator().manual_seed(2))
            moved = p.project(noise).numpy()
            return figures.projection_arrows(
                noise.numpy(), moved, test.numpy(), samples.numpy(), title=title
            )
        noise = p.noise(8, generator=torch.Generator().manual_seed(2))
        rows = [noise.clamp(0, 1), p.project(noise), test[:8], p.project(test[:8])]
    return figures.labelled_rows(
        torch.stack(rows).numpy(),
        row_labels=["noise", "f(noise)", "x (held out)", "f(x)"],
        col_labels=[f"#{j + 1}" for j in range(len(rows[0]))],
        title=title + "\nf projects onto the data: f(noise) should be samples, f(x) close to x",
    )


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="moons", help=f"one of {', '.join(config_mod.DATASETS)}")
    p.add_argument("--data-path", default="", help="for --data path")
    p.add_argument("--ranks", type=int, nargs="+", default=[1])
    p.add_argument("--seconds", type=float, default=60.0, help="training time per rank")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--w-distribution", type=float, default=0.3)
    p.add_argument("--flow", choices=("coupling", "image"), default="coupling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/projective")
    args = p.parse_args(argv)
    cfg = config_mod.parse({"data": {"name": args.data, "path": args.data_path}})
    out = config_mod.output_path(args.out, "--out")
    parts = data_mod.split(data_mod.build(cfg.data), cfg.data)
    train, test = (torch.from_numpy(parts[k].x) for k in ("train", "test"))
    dim = math.prod(train.shape[1:])
    bad = [r for r in args.ranks if not 1 <= r <= dim - 1]
    if bad:
        raise ConfigError(
            f"--ranks {bad} impossible: a projector of {dim}-D samples needs a rank in 1..{dim - 1}"
        )
    rows = []
    for rank in args.ranks:
        torch.manual_seed(args.seed)
        model = ProjectiveGenerator.build(
            tuple(train.shape[1:]),
            rank,
            depth=args.depth,
            hidden=args.hidden,
            flow=args.flow,
            seed=args.seed,
            w_distribution=args.w_distribution,
        )
        model.initialize_from(train[:256])
        steps, seconds = fit_for(
            model,
            train,
            seconds=args.seconds,
            lr=args.lr,
            batch_size=256,
            label=f"{args.data} rank {rank}",
            seed=args.seed,
        )
        metrics, samples = score(model, test, train, parts["train"].labels)
        row = {"data": args.data, "rank": rank, "steps": steps, "train_seconds": seconds, **metrics}
        rows.append(row)
        if metrics["g_roundtrip_error_f32"] > 1e-3:
            err = metrics["g_roundtrip_error_f32"]
            print(
                f"warning: rank {rank}: g is no longer invertible in float32 (round trip "
                f"{err:.3g}); training diverged, lower --lr"
            )
        print(
            "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
            )
        )
        figures.save_png(
            picture(model, test, samples, f"{args.data}: f = g^-1 P g, rank {rank}"),
            out / f"{args.data}_rank{rank}.png",
        )
    write_json(out / f"{args.data}_metrics.json", rows)
    write_csv(out / f"{args.data}_table.csv", rows, COLUMNS)
    print(f"wrote {out}/{args.data}_{{metrics.json,table.csv,rank*.png}}")
    return rows


if __name__ == "__main__":
    cli(main)()
