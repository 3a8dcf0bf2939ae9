"""The evaluation of a trained one-step generator on the test split.

Its cost and memory are fixed by ``n_samples`` (samples drawn, and test rows they are compared
with: the first ``n``, read in batches; 0 = the test split, at most ``MAX_REFERENCE``), not by
the test set's size: every pass runs ``batch_size`` rows at a time and the kernel metrics sum
``batch_size x batch_size`` blocks, so peak memory is ``O(batch_size^2 + n D)`` (the samples,
midpoints and reference rows are held for the distances). The classifier and the midpoints'
pairs use a bounded head of the training split (``TRAIN_POOL`` rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lincore.classifier import fit_classifier
from lincore.generators import bits_per_dim
from lincore.metrics import (
    RunningError,
    RunningMoments,
    frechet_distance,
    max_error,
    median_bandwidths,
    median_seconds,
    mmd,
    outside_count,
    psnr,
    typicality_from_energies,
)
from lincore.sampling import CollapsedSampler
from lincore.spectrum import SamplerSVD
from pipelines.data import iter_rows, split_info
from pipelines.evaluation import directions
from pipelines.evaluation.quality import sample_quality
from pipelines.model.sampler import default_device

STEP_GRID = (2, 5, 10, 20, 50, 100)
"""The sampler steps ``T`` at which one-step and multi-step samples are compared."""
MAX_REFERENCE = 10_000
"""Samples drawn and test rows compared with when ``n_samples`` is 0."""
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
    ``n_samples`` test rows. The one-step-vs-multi-step exactness checks and the timings run on
    the first batch of noise only: the multi-step sampler costs ``T`` forward passes.

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
    x0 = torch.randn(n, *model.event_shape, generator=torch.Generator().manual_seed(1))  # CPU
    head = x0[:batch_size].to(dev)  # the exactness checks' and timings' batch
    lo, hi = float(ref_rows.min()), float(ref_rows.max())

    model.double()  # the exactness checks, inversion and NLL in float64
    be = model.collapse(steps, "euler")
    try:  # its SVD, once: the conditioning below and the principal directions
        svd: SamplerSVD | None = directions.decompose(be, model.dim)
    except directions.NoDirections:  # a dense B too large: nan, and no directions
        svd = None
    metrics, rows = exactness(model, head.double(), steps, be, svd, data_range=hi - lo)
    metrics |= inversion(model, x0, xt, be, bins=bins, batch_size=batch_size)
    mid = midpoints(model, torch.from_numpy(train), n, be, batch_size=batch_size)
    model.float()
    metrics["g_roundtrip_error_f32"] = max(
        model.roundtrip_error(xt[s]) for s in _spans(len(xt), batch_size)
    )
    samples = torch.empty(n, *model.event_shape, device=dev)
    for s in _spans(n, batch_size):
        samples[s] = model.sample_one_step(x0[s].to(dev), be)
    hs = median_bandwidths(xt)  # fixed by the reference: the same for every MMD
    for prefix, v in (("", samples), ("interpolation_", mid)):
        quality = sample_quality(v, xt, bandwidths=hs, block=batch_size)
        metrics |= {f"{prefix}{k}": q for k, q in quality.items()}
    metrics |= {
        "samples_outside_range": outside_fraction(samples, lo, hi, batch_size),
        "interpolation_outside_range": outside_fraction(mid, lo, hi, batch_size),
    }
    clf = None
    if (labels >= 0).all() and len(np.unique(labels)) > 1:  # labelled: a feature classifier
        clf = fit_classifier(torch.from_numpy(train), torch.from_numpy(labels), steps=800)
        metrics |= classifier_frechet(clf, samples, mid, xt, batch_size=batch_size)
    metrics |= throughput(model, head, steps, be)
    extra = principal_directions(model, be, svd, clf) if svd is not None else {}
    for r in rows:  # the one-step samples at each T against the whole reference
        r["mmd_one_step"] = mmd(r.pop("one").float(), xt, hs, block=batch_size)

    alphas = torch.linspace(0, 1, 9)
    path = model.interpolate(xt[:4], xt[4:8], alphas, be)
    images = {"samples": samples.cpu().numpy(), "interpolation": path.cpu().numpy()}
    metrics |= extra.pop("metrics", {})
    return metrics, rows, images | extra


def principal_directions(
    model: torch.nn.Module, be: CollapsedSampler, svd: SamplerSVD, clf: Any | None
) -> dict[str, Any]:
    """The generator's principal directions (``directions``, from the SVD ``svd`` of ``be``):
    their effect on samples (in the classifier's features when there is one) as ``metrics``,
    the edit strips, the rank-``k`` samples and the spectrum."""
    ref = next(model.parameters())

    def features(x: torch.Tensor) -> torch.Tensor:
        return clf.features(x.cpu().float()).to(ref.device)

    ks, rank_k = directions.rank_k_samples(model, be, svd)
    return {
        "metrics": directions.direction_effects(model, be, svd, features if clf else None),
        "directions": directions.edit_strips(model, be, svd).cpu().numpy(),
        "direction_values": svd.S[: directions.TOP].cpu().numpy(),
        "rank_k": rank_k.cpu().numpy(),
        "rank_ks": np.array(ks),
        "spectrum": directions.spectrum_rows(svd),
    }


def exactness(
    model: torch.nn.Module,
    head64: torch.Tensor,
    steps: int,
    be: CollapsedSampler,
    svd: SamplerSVD | None,
    *,
    data_range: float,
) -> tuple[dict[str, float], list[dict]]:
    """The collapse against the multi-step sampler it replaces (Euler and RK4, float64, one
    batch of noise), and the rows by steps (``STEP_GRID``: PSNR, and the one-step samples for
    their MMD); the collapsed sampler's conditioning, from ``svd`` (``None``: nan)."""
    b = {"euler": be, "rk4": model.collapse(steps, "rk4")}
    multi = {k: model.sample(head64, steps, k) for k in b}
    one = {k: model.sample_one_step(head64, b[k]) for k in b}
    singular = torch.full((1,), math.nan) if svd is None else svd.values()
    metrics = {
        "psnr_one_vs_multi_euler": psnr(one["euler"], multi["euler"], data_range=data_range),
        "psnr_one_vs_multi_rk4": psnr(one["rk4"], multi["rk4"], data_range=data_range),
        "max_err_one_vs_multi_euler": max_error(one["euler"], multi["euler"]),
        "max_err_one_vs_multi_rk4": max_error(one["rk4"], multi["rk4"]),
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
        psnr_t = min(psnr(one_t, multi_t, data_range=data_range), 400.0)
        rows.append({"steps": t, "psnr_one_vs_multi": psnr_t, "one": one_t})
    return metrics, rows


def inversion(
    model: torch.nn.Module,
    x0: torch.Tensor,
    xt: torch.Tensor,
    be: CollapsedSampler,
    *,
    bins: int,
    batch_size: int,
) -> dict[str, float]:
    """Noise -> sample -> noise and test data -> noise -> data round trips, whether test data
    invert to typical noise, and their NLL (bits per dimension; per bin of ``bins`` grey
    levels when the data were dequantised). In the model's dtype (float64 here)."""
    dev, rng = xt.device, float(xt.max() - xt.min())
    noise_back = RunningError()
    for s in _spans(len(x0), batch_size):
        x64 = x0[s].to(dev).double()
        noise_back.update(model.invert(model.sample_one_step(x64, be), be), x64)
    test_back, energies, log_p = RunningError(), [], []
    for s in _spans(len(xt), batch_size):
        xb = xt[s].double()
        test_noise = model.invert(xb, be)
        energies.append(test_noise.flatten(1).pow(2).sum(1))
        test_back.update(model.sample_one_step(test_noise, be), xb)
        log_p.append(model.log_prob(xb, be))
    typical = typicality_from_energies(torch.cat(energies), model.dim)
    return {
        "psnr_inversion_roundtrip": test_back.psnr(data_range=rng),
        "noise_inversion_max_err": noise_back.max,
        "nll_bits_per_dim": bits_per_dim(torch.cat(log_p), model.dim, bins=bins or None),
        "nll_bins": float(bins),
        "inversion_median_energy": typical["median_energy"],
        "inversion_median_expected": typical["median_expected"],  # of N(0, I) noise
        "inversion_inside_shell": typical["inside_shell"],
    }


def outside_fraction(v: torch.Tensor, lo: float, hi: float, batch_size: int) -> float:
    """The fraction of values of ``v`` outside the data's range ``[lo, hi]``."""
    return sum(outside_count(v[s], lo, hi) for s in _spans(len(v), batch_size)) / v.numel()


def classifier_frechet(
    clf: Any, samples: torch.Tensor, mid: torch.Tensor, xt: torch.Tensor, *, batch_size: int
) -> dict[str, float]:
    """Fréchet distances of the samples' and the midpoints' features from the reference's, in
    the features of a classifier trained on the labelled training rows."""
    feats = {k: RunningMoments() for k in ("s", "m", "r")}
    for k, v in (("s", samples), ("m", mid), ("r", xt)):
        for s in _spans(len(v), batch_size):
            feats[k].update(clf.features(v[s].cpu()))
    return {
        "frechet_classifier": frechet_distance(feats["s"], feats["r"]),
        "interpolation_frechet_classifier": frechet_distance(feats["m"], feats["r"]),
    }


def throughput(
    model: torch.nn.Module, head: torch.Tensor, steps: int, be: CollapsedSampler
) -> dict[str, float]:
    """Samples per second of the one-step and the ``steps``-step sampler on one batch."""
    dev = head.device

    def finished(fn: Callable[[], object]) -> Callable[[], None]:
        """``fn`` timed to its end: a GPU runs asynchronously, so wait for it."""

        def run() -> None:
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return run

    one_s = median_seconds(finished(lambda: model.sample_one_step(head, be)), 5)
    multi_s = median_seconds(finished(lambda: model.sample(head, steps, "euler")), 1)
    return {
        "samples_per_s_one_step": len(head) / one_s,
        "samples_per_s_multi_step": len(head) / multi_s,
        "speedup_one_vs_multi": multi_s / one_s,
    }


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
