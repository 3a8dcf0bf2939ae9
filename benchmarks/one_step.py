"""One-step Linearizer flow matching against a standard flow-matching baseline, and the collapse.

    python -m benchmarks.one_step [--quick] [--seconds S] [--datasets moons,digits] [--json F]

Table 1: on 2-D moons, checkerboard and scikit-learn digits, both models trained for the same
wall-clock budget, then a row per (model, sampler): MMD, sliced Wasserstein and energy distance
against held-out data (Fréchet distance in a digits classifier's features), exact NLL of the
one-step generator, samples/s, speedup over the baseline's 100-step sampler, the one-step cost
over the floor of one ``g`` pass each way, and the PSNR of the one-step output against the same
model's multi-step sampler (Euler and RK4, T = 100).

Table 2: memory (peak RSS, each case in a fresh process) and time of collapsing T = 100 steps of a
rank-8 ``A_t`` with random weights, factored vs dense, at D = 64, 1024 and 12288.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lincore.classifier import FeatureClassifier, fit_classifier
from lincore.generators import (
    FlowMatchingBaseline,
    LossWeights,
    OneStepFlowMatching,
    VelocityMLP,
    bits_per_dim,
)
from lincore.metrics import (
    energy_distance,
    frechet_distance,
    median_seconds,
    mmd,
    psnr,
    sliced_wasserstein,
)
from lincore.operators.time_low_rank import TimeLowRank
from lincore.sampling import collapse
from lincore.toys import toy
from lincore.training import fit
from pipelines.config import DataConfig
from pipelines.data import build as build_dataset

STEPS = 100


@dataclass(frozen=True)
class Data:
    name: str
    train: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None


def load(name: str, seed: int = 0) -> Data:
    """Toys are generated; digits ship inside scikit-learn (1,797 8x8 images, 17 grey levels)."""
    if name != "digits":
        return Data(
            name, toy(name, 20000, seed=seed).float(), toy(name, 2000, seed=seed + 1).float()
        )
    digits = build_dataset(DataConfig(name="digits", seed=seed))  # dequantised, as the pipeline's
    x, y = torch.from_numpy(digits.x), torch.from_numpy(digits.labels)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:1437], perm[1437:]
    return Data(name, x[train], x[test], y[train], y[test])


def build_linearizer(data: Data) -> OneStepFlowMatching:
    shape = tuple(data.train.shape[1:])
    dim = math.prod(shape)
    if dim == 2:
        return OneStepFlowMatching.build(
            shape, rank=2, depth=4, hidden=64, operator_hidden=64,
            weights=LossWeights(data_likelihood=1.0),
        )  # fmt: skip
    return OneStepFlowMatching.build(
        shape, rank=16, depth=8, hidden=256, operator_hidden=256,
        weights=LossWeights(data_likelihood=1.0),
    )  # fmt: skip


def build_baseline(data: Data, target_params: int) -> FlowMatchingBaseline:
    """An MLP velocity with about ``target_params`` parameters (3 hidden layers)."""
    shape = tuple(data.train.shape[1:])
    hidden = 16
    while n_params(velocity := VelocityMLP(shape, hidden=hidden, depth=3)) < target_params:
        hidden += 8  # grow the width until the parameter count matches the Linearizer's
    return FlowMatchingBaseline(velocity)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def quality(x: Tensor, data: Data, clf: FeatureClassifier | None) -> dict[str, float]:
    ref = data.test
    row = {
        "mmd": mmd(x, ref),
        "swd": sliced_wasserstein(x, ref),
        "energy": energy_distance(x, ref),
    }
    if clf is not None:
        with torch.no_grad():
            row["fd"] = frechet_distance(clf.features(x), clf.features(ref))
    return row


def run_dataset(name: str, seconds: float, log: Callable[[str], None]) -> list[dict]:
    data = load(name)
    torch.manual_seed(0)
    lin = build_linearizer(data)
    base = build_baseline(data, n_params(lin))
    log(f"[{name}] training the Linearizer ({n_params(lin):,} params) for {seconds:.0f} s")
    lin_steps = len(fit(lin, data.train, seconds=seconds, lr=3e-3, batch_size=512))
    log(f"[{name}] training the baseline ({n_params(base):,} params) for {seconds:.0f} s")
    base_steps = len(fit(base, data.train, seconds=seconds, lr=2e-3, batch_size=512))
    clf = None
    if data.train_labels is not None:
        clf = fit_classifier(data.train, data.train_labels, steps=1500)
    lin.eval()
    base.eval()
    torch.set_grad_enabled(False)  # everything below is evaluation (restored in main)
    n = len(data.test)
    x0 = torch.randn(n, *data.train.shape[1:], generator=torch.Generator().manual_seed(1))

    lin.double()  # collapse, the exactness check and the NLL in float64; sampling in float32
    t0 = time.perf_counter()
    b_euler = lin.collapse(STEPS, "euler")
    collapse_s = time.perf_counter() - t0
    b_rk4 = lin.collapse(STEPS, "rk4")
    bins = 17 if name == "digits" else None
    nll = bits_per_dim(lin.log_prob(data.test.double(), b_euler), lin.dim, bins=bins)
    x64 = x0.double()
    exact = {
        m: psnr(lin.sample_one_step(x64, b), lin.sample(x64, STEPS, m))
        for m, b in (("euler", b_euler), ("rk4", b_rk4))
    }
    lin.float()
    rows: list[dict] = []

    base_100 = median_seconds(lambda: base.sample(x0, 100), 3)
    floor = median_seconds(lambda: lin.decode(lin.encode(x0, 0), 1), 9)

    def add(model: str, sampler: str, x: Tensor, secs: float, **extra: float) -> None:
        rows.append(
            {
                "data": name,
                "model": model,
                "sampler": sampler,
                **quality(x.float(), data, clf),
                "samples/s": n / secs,
                "speedup vs base-100": base_100 / secs,
                **extra,
            }
        )

    for label, b, method in (
        ("1 step (Euler B)", b_euler, "euler"),
        ("1 step (RK4 B)", b_rk4, "rk4"),
    ):
        secs = median_seconds(lambda b=b: lin.sample_one_step(x0, b), 9)
        add(
            "linearizer", label, lin.sample_one_step(x0, b), secs,
            nll_bpd=nll, cost_over_floor=secs / floor, psnr_vs_multi=exact[method],
            collapse_s=collapse_s, train_steps=lin_steps,
        )  # fmt: skip
    for method in ("euler", "rk4"):
        secs = median_seconds(lambda m=method: lin.sample(x0, STEPS, m), 1)
        add("linearizer", f"{STEPS} steps {method}", lin.sample(x0, STEPS, method), secs)
    for steps in (1, 10, 100):
        secs = median_seconds(lambda s=steps: base.sample(x0, s), 3)
        add("baseline", f"{steps} steps euler", base.sample(x0, steps), secs,
            train_steps=base_steps)  # fmt: skip
    rows.append({"data": name, "model": "held-out data", "sampler": "-",
                 **quality(load(name, seed=7).test if name != "digits" else data.train[:n],
                           data, clf)})  # fmt: skip
    return rows


# --- table 2: the collapse, factored vs dense ---------------------------------------------------
def _collapse_case(dim: int, form: str, steps: int, rank: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    op = TimeLowRank(dim, rank, hidden=64).double().requires_grad_(False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    b = collapse(op, steps, "euler", form=form)  # type: ignore[arg-type]
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    z = torch.randn(64, dim, dtype=torch.float64)
    apply_s = median_seconds(lambda: b.apply(z), 3)
    stored = (
        sum(t.numel() for t in (b.matrix.W, b.matrix.Y)) * 8 if b.factored else b.matrix.numel() * 8
    )
    queue.put({"D": dim, "form": form, "collapse_s": secs, "apply_64_ms": 1e3 * apply_s,
               "stored_MB": stored / 2**20, "peak_rss_MB": peak / 1024})  # fmt: skip


def collapse_table(dims: list[int], steps: int = STEPS, rank: int = 8) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for dim in dims:
        for form in ("factored", "dense"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_collapse_case, args=(dim, form, steps, rank, queue))
            proc.start()
            rows.append(queue.get())
            proc.join()
    return rows


def table(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def fmt(v: object) -> str:
        if isinstance(v, float):
            if math.isinf(v):
                return "inf"
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short training, D <= 1024 collapse")
    p.add_argument("--seconds", type=float, help="training budget per model and data set")
    p.add_argument("--datasets", default="moons,checkerboard,digits")
    p.add_argument("--collapse-dims", help="comma-separated D for table 2 (default by --quick)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    seconds = args.seconds or (20.0 if args.quick else 180.0)
    torch.set_num_threads(2)

    quality_rows: list[dict] = []
    for name in args.datasets.split(","):
        quality_rows += run_dataset(name.strip(), seconds, print)
        torch.set_grad_enabled(True)
    print("\n## One-step Linearizer vs flow-matching baseline (same wall-clock training)\n")
    print(table(quality_rows))
    dims = [64, 1024] if args.quick else [64, 1024, 12288]
    if args.collapse_dims:
        dims = [int(d) for d in args.collapse_dims.split(",")]
    collapse_rows = collapse_table(dims)
    print(f"\n## Collapse of T={STEPS} Euler steps, rank 8, float64: factored vs dense\n")
    print(table(collapse_rows))
    out = {"quality": quality_rows, "collapse": collapse_rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


if __name__ == "__main__":
    main()
