"""How a trained model becomes table rows: sample quality against held-out data, and for the
invertible models the likelihood and inversion checks. Shared so that the quality table and the
ablation score the Linearizer the same way."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from benchmarks.one_step_models import STEPS, Data
from lincore.classifier import FeatureClassifier
from lincore.generators import MaximumLikelihoodFlow, OneStepFlowMatching, bits_per_dim, slerp
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


def quality(x: Tensor, data: Data, clf: FeatureClassifier | None, prefix: str = "") -> dict:
    """Distances of ``x`` to the test split (and the Fréchet distance in ``clf``'s features)."""
    ref = data.test
    row = {f"{prefix}mmd": mmd(x, ref)}
    if not prefix:
        row |= {"swd": sliced_wasserstein(x, ref), "energy": energy_distance(x, ref)}
    if clf is not None:
        with torch.no_grad():
            row[f"{prefix}fd"] = frechet_distance(clf.features(x), clf.features(ref))
    return row


def bins_of(data: Data) -> int | None:
    """Grey levels for a per-bin NLL, ``None`` for continuous data."""
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
    label: str = "plain flow (same g, max. likelihood)",
) -> list[dict]:
    """The row of the plain flow: the likelihood reference the Linearizer's NLL is read against."""
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
            "model": label,
            "sampler": "1 pass of g^-1",
            **quality(x, data, clf),
            "samples/s": n / secs,
            "speedup vs base-100": base_100 / secs,
            "nll_bpd": nll,
            **coverage(flow.invert(data.test), mid, x, data, clf),
            "train_steps": steps,
        }
    ]
