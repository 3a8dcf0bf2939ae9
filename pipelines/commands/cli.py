"""``linearizer``: the command-line entry point (``linearizer sample``, ``directions``,
``cluster-check``).

linearizer sample --model <MLflow model URI | path to model.pt> --n 64 --out grid.png
                  [--device auto|cpu|cuda]   # auto: the GPU when there is one
linearizer directions --model <MLflow model URI | path to model.pt> --k 8 --out directions.png
                  # one sample moved along each of the top k principal directions of B
linearizer cluster-check     # what the local Ray listens on; exit 1 unless all on loopback
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import figures
from pipelines.commands import cluster_check
from pipelines.entry import cli
from pipelines.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch


def load_sampler(model: str, steps: int, device: str | torch.device | None = None) -> object:
    """A ``OneStepSampler`` from a local checkpoint or an MLflow model URI, on ``device``
    (``None``/``"auto"``: the GPU when there is one, else the CPU)."""
    from pipelines.model.sampler import OneStepSampler

    if "://" not in model and not model.startswith(("models:", "runs:")):
        path = Path(model)
        if path.is_dir():
            path = path / "model.pt"
        return OneStepSampler.from_checkpoint(path, steps, device=device)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        loaded = mlflow.pyfunc.load_model(model)
    except (MlflowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise DataError(
            f"cannot load MLflow model {model!r}: {first}; check the URI (models:/<id>, "
            "runs:/<run_id>/model) and MLFLOW_TRACKING_URI"
        ) from None
    return loaded.unwrap_python_model().sampler.to(device)


def sample(args: argparse.Namespace) -> Path:
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    from pipelines.model.sampler import parse_device

    device = parse_device(args.device)  # checked before any model is loaded
    sampler = load_sampler(args.model, args.steps, device)
    x = sampler.sample(args.n, seed=args.seed).cpu().numpy()  # noise drawn on the device
    out = Path(args.out)
    figures.save_png(figures.samples(x, title=f"{args.n} one-step samples"), out)
    print(f"wrote {args.n} one-step samples to {out}")
    return out


def directions(args: argparse.Namespace) -> Path:
    """The strip figure of ``evaluation.directions`` for a trained model, and its spectrum."""
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    from pipelines.evaluation import directions as dirs
    from pipelines.evaluation import report
    from pipelines.model.sampler import parse_device

    device = parse_device(args.device)  # checked before any model is loaded
    sampler = load_sampler(args.model, args.steps, device)
    model, b = sampler.model, sampler.collapsed
    try:
        svd = dirs.decompose(b, model.dim)
    except dirs.NoDirections as err:
        raise ConfigError(f"{args.model}: {err}") from None
    if args.k > svd.k:
        raise ConfigError(
            f"--k {args.k} is more than the {svd.k} learned directions of this model's sampler "
            f"(the other {svd.dim - svd.k} share the floor {svd.floor:.3g}); use --k 1..{svd.k}"
        )
    strips = dirs.edit_strips(model, b, svd, k=args.k, seed=args.seed).cpu().numpy()
    out = Path(args.out)
    figures.save_png(report.directions_figure(strips, svd.S[: args.k].cpu().numpy()), out)
    values = ", ".join(f"{s:.4g}" for s in svd.S[: args.k].tolist())
    print(
        f"singular values of B (top {args.k}): {values}; floor {svd.floor:.4g} on the other "
        f"{svd.dim - svd.k} directions; effective rank {svd.effective_rank():.1f} of {svd.dim}\n"
        f"wrote the top {args.k} directions to {out}"
    )
    return out


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="MLflow model URI or path to model.pt")
    p.add_argument("--steps", type=int, default=100, help="sampler steps collapsed (local file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device",
        default="auto",
        help="where to run: auto (the GPU when there is one), cpu, cuda, cuda:1, ...",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="linearizer", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="draw one-step samples from a trained model")
    _add_model_args(s)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", default="grid.png")
    d = sub.add_parser(
        "directions", help="draw a sample moved along the principal directions of its sampler"
    )
    _add_model_args(d)
    d.add_argument("--k", type=int, default=8, help="how many directions (the strongest first)")
    d.add_argument("--out", default="directions.png")
    c = sub.add_parser(
        "cluster-check",
        help="list what the local Ray listens on; exit 1 if "
        "anything listens outside loopback, 2 if no Ray runs",
        description=cluster_check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cluster_check.add_arguments(c)
    args = p.parse_args(argv)
    if args.command == "sample":
        sample(args)
    elif args.command == "directions":
        directions(args)
    elif args.command == "cluster-check" and (code := cluster_check.check(args)):
        raise SystemExit(code)


run = cli(main)

if __name__ == "__main__":
    run()
