"""``linearizer``: the command-line entry point (``linearizer sample``, ``cluster-check``).

linearizer sample --model <MLflow model URI | path to model.pt> --n 64 --out grid.png
                  [--device auto|cpu|cuda]   # auto: the GPU when there is one
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="linearizer", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="draw one-step samples from a trained model")
    s.add_argument("--model", required=True, help="MLflow model URI or path to model.pt")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", default="grid.png")
    s.add_argument("--steps", type=int, default=100, help="sampler steps collapsed (local file)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--device",
        default="auto",
        help="where to sample: auto (the GPU when there is one), cpu, cuda, cuda:1, ...",
    )
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
    elif args.command == "cluster-check" and (code := cluster_check.check(args)):
        raise SystemExit(code)


run = cli(main)

if __name__ == "__main__":
    run()
