"""Table 1: the one-step Linearizer against the baselines a user would pick instead, each trained
for the same wall clock on one data set, then scored on held-out data."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.one_step_models import (
    build_baseline,
    build_flow,
    build_linearizer,
    build_meanflow,
    load,
    n_params,
)
from benchmarks.one_step_scores import flow_rows, linearizer_rows, quality
from lincore.classifier import fit_classifier
from lincore.fit import fit
from lincore.generators import LossWeights
from lincore.metrics import median_seconds

OLD = "linearizer (original rank-only A_t, its own objective)"


SPLINE = "linearizer (spline g)"
SPLINE_FLOW = "plain flow (spline g, max. likelihood)"


def run_dataset(
    name: str, seconds: float, log: Callable[[str], None], *, spline: bool = True, old: bool = True
) -> list[dict]:
    """Every model trained for the same wall-clock ``seconds``, then scored on held-out data.
    ``spline``: also the Linearizer and the plain flow with rational-quadratic couplings;
    ``old``: also the original rank-only operator."""
    data = load(name)
    lin = build_linearizer(data)
    budget = n_params(lin)
    models: dict[str, torch.nn.Module] = {
        "linearizer": lin,
        "plain flow": build_flow(data),
        "flow matching": build_baseline(data, budget),
        "meanflow": build_meanflow(data, budget),
    }
    if old:
        models[OLD] = build_linearizer(data, "low_rank", LossWeights.paper(data_likelihood=1.0))
    if spline:
        models[SPLINE] = build_linearizer(data, coupling="spline")
        models[SPLINE_FLOW] = build_flow(data, coupling="spline")
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
    torch.set_grad_enabled(False)  # everything below is evaluation (restored by the caller)
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
    if old:
        rows += linearizer_rows(
            models[OLD],
            OLD,
            data,
            clf,
            x0,
            base_100=base_100,
            lin_steps=steps[OLD],
            multi_step=False,
        )
    rows += flow_rows(
        models["plain flow"], data, clf, x0, base_100=base_100, steps=steps["plain flow"]
    )
    if spline:
        rows += linearizer_rows(
            models[SPLINE],
            SPLINE,
            data,
            clf,
            x0,
            base_100=base_100,
            lin_steps=steps[SPLINE],
            multi_step=False,
        )
        rows += flow_rows(
            models[SPLINE_FLOW],
            data,
            clf,
            x0,
            base_100=base_100,
            steps=steps[SPLINE_FLOW],
            label=SPLINE_FLOW,
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
