"""Table 4 (``--ablation``): on digits, the kind of operator x the likelihood terms, to show which
of the two changes to the original Linearizer buys what."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.one_step_models import DEFAULT_WEIGHTS, build_linearizer, load, n_params
from benchmarks.one_step_scores import linearizer_rows
from lincore.classifier import fit_classifier
from lincore.fit import fit
from lincore.generators import LossWeights

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
