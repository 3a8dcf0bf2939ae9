"""The one-step Linearizer against the baselines a user would pick instead, and the collapse.

    python -m benchmarks.one_step [--quick] [--seconds S] [--datasets moons,digits] [--ablation]
                                  [--memory] [--json F]

Table 1: on 2-D moons, checkerboard and scikit-learn digits, every model trained for the same
wall-clock budget: the Linearizer (default ``isotropic_psd`` operator, and the original rank-only
one), the same ``g`` trained as a plain normalizing flow (the likelihood reference), flow matching
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
import dataclasses
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
from lincore.fit import fit
from lincore.generators import (
    FlowMatchingBaseline,
    LossWeights,
    MaximumLikelihoodFlow,
    MeanFlow,
    MeanVelocityMLP,
    OneStepFlowMatching,
    VelocityMLP,
    bits_per_dim,
    slerp,
)
from lincore.inn import CouplingFlow, Reshaped
from lincore.metrics import (
    energy_distance,
    frechet_distance,
    median_seconds,
    mmd,
    outside_range,
    psnr,
    sliced_wasserstein,
    typicality,
)
from lincore.operators import time_operator
from lincore.sampling import collapse
from lincore.toys import toy
from pipelines.config import DataConfig, ModelConfig
from pipelines.data import build as build_dataset

STEPS = 100


@dataclass(frozen=True)
class Data:
    name: str
    train: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    bins: int = 0
    """grey levels of dequantised discrete data (0: continuous)"""


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
    return Data(name, x[train], x[test], y[train], y[test], bins=digits.bins)


DEFAULT_WEIGHTS = LossWeights(
    **{f.name: getattr(ModelConfig(), f"w_{f.name}") for f in dataclasses.fields(LossWeights)}
)
"""The loss weights of ``params.yaml``'s defaults: the benchmark measures what ships."""


def build_linearizer(
    data: Data, operator: str = "isotropic_psd", weights: LossWeights | None = None
) -> OneStepFlowMatching:
    shape = tuple(data.train.shape[1:])
    weights = weights or DEFAULT_WEIGHTS
    torch.manual_seed(0)
    if math.prod(shape) == 2:
        return OneStepFlowMatching.build(
            shape,
            rank=2,
            depth=4,
            hidden=64,
            operator_hidden=64,
            operator=operator,
            weights=weights,
        )
    return OneStepFlowMatching.build(
        shape,
        rank=16,
        depth=8,
        hidden=256,
        operator_hidden=256,
        operator=operator,
        weights=weights,
    )


def build_flow(data: Data) -> MaximumLikelihoodFlow:
    """The Linearizer's ``g`` (same depth and width, unconditional) as a plain normalizing flow."""
    shape = tuple(data.train.shape[1:])
    dim = math.prod(shape)
    torch.manual_seed(0)
    depth, hidden = (4, 64) if dim == 2 else (8, 256)
    g = CouplingFlow(dim, depth, hidden)
    return MaximumLikelihoodFlow(g if len(shape) == 1 else Reshaped(g, shape))


def build_baseline(data: Data, target_params: int) -> FlowMatchingBaseline:
    """An MLP velocity with about ``target_params`` parameters (3 hidden layers)."""
    shape = tuple(data.train.shape[1:])
    hidden = 16
    while n_params(velocity := VelocityMLP(shape, hidden=hidden, depth=3)) < target_params:
        hidden += 8  # grow the width until the parameter count matches the Linearizer's
    return FlowMatchingBaseline(velocity)


def build_meanflow(data: Data, target_params: int) -> MeanFlow:
    """MeanFlow with an MLP ``u(z, r, t)`` of about ``target_params`` parameters. One embedding
    frequency (``embed_dim=2``): the top frequency enters its target through ``du/dr`` and the
    default 32 rad made short runs erratic (see ``lincore.generators.meanflow``)."""
    shape = tuple(data.train.shape[1:])
    hidden = 16
    while n_params(u := MeanVelocityMLP(shape, hidden=hidden, depth=3, embed_dim=2)) < (
        target_params
    ):
        hidden += 8
    return MeanFlow(u)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def quality(x: Tensor, data: Data, clf: FeatureClassifier | None, prefix: str = "") -> dict:
    ref = data.test
    row = {f"{prefix}mmd": mmd(x, ref)}
    if not prefix:
        row |= {"swd": sliced_wasserstein(x, ref), "energy": energy_distance(x, ref)}
    if clf is not None:
        with torch.no_grad():
            row[f"{prefix}fd"] = frechet_distance(clf.features(x), clf.features(ref))
    return row


def bins_of(data: Data) -> int | None:
    return data.bins or None


def coverage(
    noise: Tensor, mid: Tensor, samples: Tensor, data: Data, clf: FeatureClassifier | None
) -> dict[str, float]:
    """What a degenerate generator gets wrong: test data inverted to ``noise`` should be typical
    of ``N(0, I)``; midpoints ``mid`` should be as good as samples; images stay in range."""
    typical = typicality(noise)
    row = {
        "inv_energy": typical["median_energy"],
        "inv_expected": typical["median_expected"],
        "inv_shell": typical["inside_shell"],
    }
    row |= quality(mid.float(), data, clf, prefix="mid_")
    if data.name == "digits":
        lo, hi = float(data.train.min()), float(data.train.max())
        row["outside"] = outside_range(samples, lo, hi)
    return row


def pairs(data: Data) -> tuple[Tensor, Tensor]:
    """Random training pairs, as many as test points: midpoints are then scored like samples
    (same count, a reference they were not built from)."""
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randint(len(data.train), (len(data.test),), generator=gen) for _ in range(2))
    return data.train[a], data.train[b]


def linearizer_rows(
    lin: OneStepFlowMatching,
    label: str,
    data: Data,
    clf: FeatureClassifier | None,
    x0: Tensor,
    *,
    base_100: float,
    lin_steps: int,
    multi_step: bool = True,
) -> list[dict]:
    """Rows for a trained one-step Linearizer: 1 step (Euler and RK4 ``B``), and ``STEPS``."""
    n = len(x0)
    lin.eval()
    lin.double()  # collapse, the exactness check, inversion and the NLL in float64
    t0 = time.perf_counter()
    b_euler = lin.collapse(STEPS, "euler")
    collapse_s = time.perf_counter() - t0
    b_rk4 = lin.collapse(STEPS, "rk4")
    nll = bits_per_dim(lin.log_prob(data.test.double(), b_euler), lin.dim, bins=bins_of(data))
    x64 = x0.double()
    exact = {
        m: psnr(lin.sample_one_step(x64, b), lin.sample(x64, STEPS, m))
        for m, b in (("euler", b_euler), ("rk4", b_rk4))
    }
    noise = lin.invert(data.test.double(), b_euler)
    xa, xb = pairs(data)
    mid = lin.interpolate(xa.double(), xb.double(), torch.tensor([0.5]), b_euler)[0]
    lin.float()
    floor = median_seconds(lambda: lin.decode(lin.encode(x0, 0), 1), 9)
    rows = []
    for sampler, b, method in (
        ("1 step (Euler B)", b_euler, "euler"),
        ("1 step (RK4 B)", b_rk4, "rk4"),
    ):
        secs = median_seconds(lambda b=b: lin.sample_one_step(x0, b), 9)
        x = lin.sample_one_step(x0, b)
        extra = {}
        if method == "euler":
            extra = {"nll_bpd": nll, **coverage(noise, mid, x, data, clf)}
        rows.append(
            {
                "model": label,
                "sampler": sampler,
                **quality(x, data, clf),
                "samples/s": n / secs,
                "speedup vs base-100": base_100 / secs,
                **extra,
                "cost_over_floor": secs / floor,
                "psnr_vs_multi": exact[method],
                "collapse_s": collapse_s,
                "train_steps": lin_steps,
            }
        )
    for method in ("euler", "rk4") if multi_step else ():
        secs = median_seconds(lambda m=method: lin.sample(x0, STEPS, m), 1)
        rows.append(
            {
                "model": label,
                "sampler": f"{STEPS} steps {method}",
                **quality(lin.sample(x0, STEPS, method), data, clf),
                "samples/s": n / secs,
                "speedup vs base-100": base_100 / secs,
            }
        )
    return rows


def flow_rows(
    flow: MaximumLikelihoodFlow,
    data: Data,
    clf: FeatureClassifier | None,
    x0: Tensor,
    *,
    base_100: float,
    steps: int,
) -> list[dict]:
    flow.eval()
    n = len(x0)
    with torch.no_grad():
        nll = bits_per_dim(
            flow.log_prob(data.test), math.prod(flow.event_shape), bins=bins_of(data)
        )
        xa, xb = pairs(data)
        mid = flow.sample(slerp(flow.invert(xa), flow.invert(xb), 0.5))
        x = flow.sample(x0)
    secs = median_seconds(lambda: flow.sample(x0), 9)
    return [
        {
            "model": "plain flow (same g, max. likelihood)",
            "sampler": "1 pass of g^-1",
            **quality(x, data, clf),
            "samples/s": n / secs,
            "speedup vs base-100": base_100 / secs,
            "nll_bpd": nll,
            **coverage(flow.invert(data.test), mid, x, data, clf),
            "train_steps": steps,
        }
    ]


OLD = "linearizer (original rank-only A_t, its own objective)"


def run_dataset(name: str, seconds: float, log: Callable[[str], None]) -> list[dict]:
    """Every model trained for the same wall-clock ``seconds``, then scored on held-out data."""
    data = load(name)
    lin = build_linearizer(data)
    old = build_linearizer(data, "low_rank", LossWeights.paper(data_likelihood=1.0))
    budget = n_params(lin)
    models: dict[str, torch.nn.Module] = {
        "linearizer": lin,
        OLD: old,
        "plain flow": build_flow(data),
        "flow matching": build_baseline(data, budget),
        "meanflow": build_meanflow(data, budget),
    }
    lr = {"flow matching": 2e-3, "meanflow": 1e-3}
    steps = {}
    for label, model in models.items():
        log(f"[{name}] training {label} ({n_params(model):,} params) for {seconds:.0f} s")
        steps[label] = len(
            fit(model, data.train, seconds=seconds, lr=lr.get(label, 3e-3), batch_size=512)
        )
    clf = None
    if data.train_labels is not None:
        clf = fit_classifier(data.train, data.train_labels, steps=1500)
    torch.set_grad_enabled(False)  # everything below is evaluation (restored in main)
    n = len(data.test)
    x0 = torch.randn(n, *data.train.shape[1:], generator=torch.Generator().manual_seed(1))
    base, mean = models["flow matching"], models["meanflow"]
    base.eval()
    mean.eval()
    base_100 = median_seconds(lambda: base.sample(x0, 100), 3)
    rows = linearizer_rows(
        lin,
        "linearizer (isotropic_psd A_t)",
        data,
        clf,
        x0,
        base_100=base_100,
        lin_steps=steps["linearizer"],
    )
    rows += linearizer_rows(
        old, OLD, data, clf, x0, base_100=base_100, lin_steps=steps[OLD], multi_step=False
    )
    rows += flow_rows(
        models["plain flow"], data, clf, x0, base_100=base_100, steps=steps["plain flow"]
    )
    for k in (1, 10, 100):
        secs = median_seconds(lambda k=k: base.sample(x0, k), 3)
        rows.append(
            {
                "model": "flow matching (MLP velocity)",
                "sampler": f"{k} steps euler",
                **quality(base.sample(x0, k), data, clf),
                "samples/s": n / secs,
                "speedup vs base-100": base_100 / secs,
                "train_steps": steps["flow matching"],
            }
        )
    for k in (1, 2):
        secs = median_seconds(lambda k=k: mean.sample(x0, k), 3)
        rows.append(
            {
                "model": "MeanFlow (MLP u)",
                "sampler": f"{k} step(s)",
                **quality(mean.sample(x0, k), data, clf),
                "samples/s": n / secs,
                "speedup vs base-100": base_100 / secs,
                "train_steps": steps["meanflow"],
            }
        )
    rows.append(
        {
            "model": "held-out data",
            "sampler": "-",
            **quality(load(name, seed=7).test if name != "digits" else data.train[:n], data, clf),
        }
    )
    return [{"data": name, **r} for r in rows]


ABLATION = {
    "rank-only, data likelihood (old default)": (
        "low_rank",
        LossWeights.paper(data_likelihood=1.0),
    ),
    "rank-only, paper objective": ("low_rank", LossWeights.paper()),
    "rank-only, data + one-step likelihood": ("low_rank", DEFAULT_WEIGHTS),
    "isotropic_low_rank, data + one-step likelihood": ("isotropic_low_rank", DEFAULT_WEIGHTS),
    "isotropic_psd, data + one-step likelihood (default)": ("isotropic_psd", DEFAULT_WEIGHTS),
    "isotropic_psd, data likelihood": ("isotropic_psd", LossWeights.paper(data_likelihood=1)),
    "isotropic_psd, paper objective": ("isotropic_psd", LossWeights.paper()),
    "isotropic_psd, one-step likelihood only": (
        "isotropic_psd",
        LossWeights.paper(one_step_likelihood=1),
    ),
}


def ablation(seconds: float, log: Callable[[str], None]) -> list[dict]:
    """Digits: the kind of operator x the likelihood terms, each for the same wall clock."""
    data = load("digits")
    clf = fit_classifier(data.train, data.train_labels, steps=1500)
    x0 = torch.randn(len(data.test), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    rows = []
    for label, (kind, weights) in ABLATION.items():
        torch.set_grad_enabled(True)
        lin = build_linearizer(data, kind, weights)
        log(f"[ablation] {label}: {n_params(lin):,} params, {seconds:.0f} s")
        steps = len(fit(lin, data.train, seconds=seconds, lr=3e-3, batch_size=512))
        torch.set_grad_enabled(False)
        row = linearizer_rows(
            lin, label, data, clf, x0, base_100=float("nan"), lin_steps=steps, multi_step=False
        )[0]
        rows.append({k: v for k, v in row.items() if k not in ("sampler", "speedup vs base-100")})
    torch.set_grad_enabled(True)
    return rows


# --- table 2: the collapse: shared basis, factored and dense ------------------------------------
def _collapse_case(dim: int, form: str, steps: int, rank: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    kind = "isotropic_psd" if form == "shared basis" else "low_rank"
    op = time_operator(kind, dim, rank, hidden=64).double().requires_grad_(False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    b = collapse(op, steps, "euler", form=form if kind == "low_rank" else "auto")  # type: ignore
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    z = torch.randn(64, dim, dtype=torch.float64)
    apply_s = median_seconds(lambda: b.apply(z), 3)
    stored = (
        sum(t.numel() for t in (b.matrix.W, b.matrix.Y)) * 8 if b.factored else b.matrix.numel() * 8
    )
    queue.put(
        {
            "D": dim,
            "operator": kind,
            "form": form,
            "collapse_s": secs,
            "apply_64_ms": 1e3 * apply_s,
            "stored_MB": stored / 2**20,
            "peak_rss_MB": peak / 1024,
        }
    )


def fresh_process(target: Callable[..., None], *args: object) -> dict:
    """``target(*args, queue)`` in a fresh (spawned) process: its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        return queue.get()
    finally:
        proc.join()


def collapse_table(dims: list[int], steps: int = STEPS, rank: int = 8) -> list[dict]:
    forms = ("shared basis", "factored", "dense")
    return [fresh_process(_collapse_case, d, f, steps, rank) for d in dims for f in forms]


# --- table 3: memory of one training step at CelebA size ------------------------------------------
def _memory_case(
    kind: str, batch: int, one_step: float, shape: tuple[int, ...], queue: mp.Queue
) -> None:
    torch.set_num_threads(2)
    weights = dataclasses.replace(DEFAULT_WEIGHTS, one_step_likelihood=one_step)
    model = OneStepFlowMatching.build(
        shape,
        rank=8,
        depth=6,
        hidden=128,
        operator_hidden=128,
        operator=kind,
        flow="image",
        weights=weights,
    )
    x = torch.rand(batch, *shape)
    model.initialize_from(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(2):  # the second step holds Adam's state too
        loss = model(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    secs = (time.perf_counter() - t0) / 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    queue.put(
        {
            "operator": kind,
            "one_step_likelihood": one_step,
            "shape": "x".join(map(str, shape)),
            "batch": batch,
            "operator_params": n_params(model.operator),
            "all_params": n_params(model),
            "step_peak_MB": peak / 1024,
            "step_s": secs,
        }
    )


def memory_table(shape: tuple[int, ...] = (3, 64, 64)) -> list[dict]:
    cases = [
        ("low_rank", 16, 0.0),
        ("isotropic_psd", 16, 0.0),
        ("isotropic_psd", 16, 1.0),
        ("isotropic_psd", 64, 1.0),
    ]
    return [fresh_process(_memory_case, *case, shape) for case in cases]


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
    p.add_argument("--ablation", action="store_true", help="also table 4: operator x likelihood")
    p.add_argument("--memory", action="store_true", help="also table 3: one step at 3x64x64")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    seconds = args.seconds or (20.0 if args.quick else 180.0)
    torch.set_num_threads(2)

    quality_rows: list[dict] = []
    for name in args.datasets.split(","):
        quality_rows += run_dataset(name.strip(), seconds, print)
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
