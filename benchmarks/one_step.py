"""The one-step Linearizer against the baselines a user would pick instead, and the collapse.

    python -m benchmarks.one_step [--quick] [--seconds S] [--datasets moons,digits] [--ablation]
                                  [--memory] [--json F]

Table 1: on 2-D moons, checkerboard and scikit-learn digits, every model trained for the same
wall-clock budget: the Linearizer (default ``isotropic_psd`` operator, and the original rank-only
one), the same ``g`` trained as a plain normalizing flow (the likelihood reference), both again
with rational-quadratic spline couplings (``model.coupling: spline``), flow matching
with an MLP velocity at 1, 10 and 100 Euler steps, and MeanFlow at 1 and 2 steps (both baselines
with the Linearizer's parameter count). Columns: MMD, sliced Wasserstein and energy distance
against held-out data (Fréchet distance ``fd`` in a digits classifier's features); for the
invertible models, the NLL (bits/dim per bin of the 17 grey levels for digits), test data
inverted to noise (median ``|e|^2 / D``, ``inv_energy``, and the fraction inside the 99% shell of
``N(0, I)``, ``inv_shell``), interpolation midpoints of test pairs (``mid_mmd``, ``mid_fd``) and
the fraction of sample pixels outside the data's range; samples/s, speedup over the 100-step
baseline, one-step cost over one ``g`` pass each way, and the PSNR of one step against the same
model's 100-step sampler (Euler and RK4).

Table 2: time and memory (peak RSS, each case in a fresh process) of collapsing T = 100 steps of
a rank-8 ``A_t`` with random weights: shared basis (``isotropic_psd``: rank 8 whatever T), and
the rank-only operator factored or dense, at D = 64, 1024 and 12288.

Table 3 (``--memory``): one training step at 3x64x64 (image flow, depth 6, rank 8), per operator.
Table 4 (``--ablation``): digits, the kind of operator x the likelihood terms.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import table
from benchmarks.one_step_ablation import ablation
from benchmarks.one_step_collapse import collapse_table
from benchmarks.one_step_memory import memory_table
from benchmarks.one_step_models import STEPS
from benchmarks.one_step_quality import run_dataset


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """The tables in the order above, printed as they finish; the rows are returned for tests
    (each table is built in its own ``benchmarks.one_step_*`` module)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short training, D <= 1024 collapse")
    p.add_argument("--seconds", type=float, help="training budget per model and data set")
    p.add_argument("--datasets", default="moons,checkerboard,digits")
    p.add_argument("--collapse-dims", help="comma-separated D for table 2 (default by --quick)")
    p.add_argument("--ablation", action="store_true", help="also table 4: operator x likelihood")
    p.add_argument("--no-spline", action="store_true", help="table 1 without the spline rows")
    p.add_argument("--no-old", action="store_true", help="table 1 without the rank-only A_t")
    p.add_argument("--memory", action="store_true", help="also table 3: one step at 3x64x64")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    seconds = args.seconds or (20.0 if args.quick else 180.0)
    torch.set_num_threads(2)

    quality_rows: list[dict] = []
    for name in args.datasets.split(","):
        quality_rows += run_dataset(
            name.strip(), seconds, print, spline=not args.no_spline, old=not args.no_old
        )
        torch.set_grad_enabled(True)
    print("\n## One-step Linearizer vs baselines (same wall-clock training)\n")
    print(table(quality_rows))
    out: dict[str, list[dict]] = {"quality": quality_rows}
    if args.ablation:
        out["ablation"] = ablation(seconds, print)
        print("\n## Digits: kind of operator x likelihood terms (same wall-clock training)\n")
        print(table(out["ablation"]))
    dims = [64, 1024] if args.quick else [64, 1024, 12288]
    if args.collapse_dims:
        dims = [int(d) for d in args.collapse_dims.split(",")]
    out["collapse"] = collapse_table(dims)
    print(f"\n## Collapse of T={STEPS} Euler steps, rank 8, float64\n")
    print(table(out["collapse"]))
    if args.memory:
        out["memory"] = memory_table()
        print("\n## One training step (forward, backward, Adam) at 3x64x64, image flow depth 6\n")
        print(table(out["memory"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


if __name__ == "__main__":
    main()
