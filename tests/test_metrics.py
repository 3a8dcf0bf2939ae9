"""Metrics on distributions with known answers: identical sets give 0, shifted Gaussians the
closed form."""

from __future__ import annotations

import math

import pytest
import torch

from lincore import CouplingFlow
from lincore.classifier import accuracy, fit_classifier
from lincore.metrics import (
    RunningError,
    RunningMoments,
    distances,
    energy_distance,
    frechet_distance,
    max_error,
    median_bandwidths,
    mmd,
    mmd2,
    outside_count,
    outside_range,
    pair_mean,
    psnr,
    roundtrip_error,
    sliced_wasserstein,
    typicality,
    typicality_from_energies,
)
from lincore.testing import far_from_identity

F64 = torch.float64


def gaussian(n, d, shift=0.0, std=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return std * torch.randn(n, d, generator=gen, dtype=F64) + shift


def test_psnr_and_max_error():
    a = torch.zeros(10, 3, dtype=F64)
    assert psnr(a, a) == math.inf
    b = a + 0.1  # MSE 0.01 -> 20 dB at range 1, 26.02 dB at range 2
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, b, data_range=2.0) == pytest.approx(20 + 20 * math.log10(2))
    assert max_error(a, b) == pytest.approx(0.1)


def test_identical_sets_give_zero():
    x = gaussian(300, 4)
    assert mmd(x, x) == 0.0
    assert sliced_wasserstein(x, x) == 0.0
    assert abs(energy_distance(x, x)) < 1e-12
    assert abs(frechet_distance(x, x)) < 1e-9


def test_mmd_of_shifted_gaussians_matches_the_closed_form():
    """x~N(0,I), y~N(m,I): E k(x,y) = (h^2/(h^2+2))^(d/2) exp(-|m|^2 / (2(h^2+2)))."""
    d, h, shift = 2, 1.5, torch.tensor([1.0, 0.5], dtype=F64)
    x, y = gaussian(3000, d, seed=1), gaussian(3000, d, shift, seed=2)
    c = (h * h / (h * h + 2)) ** (d / 2)
    expected = 2 * c * (1 - math.exp(-float(shift.pow(2).sum()) / (2 * (h * h + 2))))
    # the V-statistic is biased upwards by ~2(1 - c)/n
    bias = 2 * (1 - c) / 3000
    assert mmd(x, y, [h]) ** 2 == pytest.approx(expected + bias, rel=0.08)


def test_sliced_wasserstein_of_shifted_gaussians():
    """Along a unit direction u the shift is u.m, so SW_2^2 = E (u.m)^2 = |m|^2 / d."""
    d, shift = 3, torch.tensor([2.0, 0.0, 1.0], dtype=F64)
    x, y = gaussian(4000, d, seed=1), gaussian(4000, d, shift, seed=2)
    expected = math.sqrt(5.0 / d)
    assert sliced_wasserstein(x, y, projections=2000) == pytest.approx(expected, rel=0.05)
    # unequal sample sizes go through quantiles
    assert sliced_wasserstein(x[:3000], y, projections=2000) == pytest.approx(expected, rel=0.05)


def test_energy_distance_of_shifted_normals_in_one_dimension():
    """X~N(0,1), Y~N(mu,1): 2 E|N(mu,2)| - 2 E|N(0,2)|, with E|N(mu,s^2)| in closed form."""
    mu = 1.0

    def mean_abs(m, s):
        phi = 0.5 * (1 + math.erf(-m / (s * math.sqrt(2))))
        return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * phi)

    s = math.sqrt(2)
    expected = 2 * mean_abs(mu, s) - 2 * mean_abs(0, s)
    x, y = gaussian(4000, 1, seed=1), gaussian(4000, 1, mu, seed=2)
    assert energy_distance(x, y) == pytest.approx(expected, rel=0.05)


def test_frechet_distance_of_gaussians():
    """N(0, I) vs N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d."""
    d = 3
    x, y = gaussian(20000, d, seed=1), gaussian(20000, d, 1.0, std=2.0, seed=2)
    assert frechet_distance(x, y) == pytest.approx(3.0 + d, rel=0.05)


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="sample shapes differ"):
        mmd(gaussian(10, 2), gaussian(10, 3))
    with pytest.raises(ValueError, match="paired"):
        from lincore.metrics import _check_pair

        _check_pair("psnr", gaussian(10, 2), gaussian(9, 2), same_n=True)


def test_bandwidths_follow_the_reference_scale():
    x = gaussian(500, 2)
    assert median_bandwidths(3 * x)[2] == pytest.approx(3 * median_bandwidths(x)[2])


def test_roundtrip_error_of_a_flow_is_round_off():
    g = far_from_identity(CouplingFlow(5, 4, 16)).double()
    assert roundtrip_error(g, gaussian(50, 5)) < 1e-12


def test_feature_classifier_separates_two_gaussians():
    x = torch.cat([gaussian(500, 2, -2.0, seed=1), gaussian(500, 2, 2.0, seed=2)]).float()
    labels = torch.cat([torch.zeros(500), torch.ones(500)]).long()
    clf = fit_classifier(x, labels, steps=200)
    assert accuracy(clf, x, labels) > 0.95
    assert clf.features(x).shape == (1000, 64)


# --- evaluation at scale: block sums and running moments equal the one-batch metrics ---------
@pytest.mark.parametrize("block", [6, 32, 1024])
def test_blocked_mmd_and_energy_equal_the_full_matrices(block):
    """Unequal sizes that no block divides: the block sums give the full-matrix values."""
    a, b = gaussian(157, 7, seed=1), gaussian(203, 7, 0.3, std=1.5, seed=2)
    x, y = a.reshape(157, 7, 1), b.reshape(203, 7, 1)  # (N, ...) rows, flattened
    hs = median_bandwidths(y)
    full_mmd = math.sqrt(float(mmd2(a, b, hs)))
    assert mmd(x, y, hs, block=block) == pytest.approx(full_mmd, rel=1e-12, abs=1e-12)
    assert mmd(x, y, block=block) == pytest.approx(full_mmd, rel=1e-12, abs=1e-12)
    # the full-matrix formula with exact distances: torch.cdist's default (a matrix product for
    # more than 25 rows) has its own round-off on the diagonal, about sqrt(eps) per self-pair,
    # which ``distances`` removes (1e-10 here, over 360 self-pairs)
    exact = "donot_use_mm_for_euclid_dist"

    def dist(p, q, mode=exact):
        return torch.cdist(p, q, compute_mode=mode).mean()

    full_energy = float(2 * dist(a, b) - dist(a, a) - dist(b, b))
    assert energy_distance(x, y, block=block) == pytest.approx(full_energy, rel=1e-12, abs=1e-12)
    mm = "use_mm_for_euclid_dist_if_necessary"  # the current one-batch function's
    assert energy_distance(x, y, block=block) == pytest.approx(
        float(2 * dist(a, b, mm) - dist(a, a, mm) - dist(b, b, mm)), abs=1e-9
    )
    assert mmd(x, x, block=block) == 0.0  # identical sets: still exactly 0
    assert abs(energy_distance(y, y, block=block)) < 1e-12
    assert float(pair_mean(a, b, torch.exp, block=block)) == pytest.approx(
        float(torch.exp(torch.cdist(a, b, compute_mode=exact)).mean()), rel=1e-12
    )


def test_distances_are_exact_for_duplicate_rows():
    """The matrix-product formula leaves ``sqrt(eps) |a|`` on equal rows; ``distances`` 0."""
    a = gaussian(64, 300, 5.0, seed=1)
    b = torch.cat([a[:10], gaussian(54, 300, 5.0, seed=2)])
    d = distances(a, b)
    assert float(torch.cdist(a, a).diagonal().max()) > 0  # what it corrects
    assert (d.diagonal()[:10] == 0).all() and (distances(a, a).diagonal() == 0).all()
    exact = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(d, exact, rtol=1e-12, atol=0)


def test_blocked_sums_hold_no_full_matrix(monkeypatch):
    seen: list[tuple[int, int]] = []
    cdist = torch.cdist

    def spy(p, q, *args, **kwargs):
        seen.append((p.shape[0], q.shape[0]))
        return cdist(p, q, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", spy)
    x, y = gaussian(300, 3, seed=1), gaussian(250, 3, seed=2)
    mmd(x, y, [1.0], block=64)
    energy_distance(x, y, block=64)
    assert seen and max(max(s) for s in seen) == 64


def test_sliced_wasserstein_does_not_depend_on_the_block():
    x, y = gaussian(301, 5, seed=1), gaussian(180, 5, 1.0, seed=2)
    whole = sliced_wasserstein(x, y, block=10_000)
    assert sliced_wasserstein(x, y, block=17) == pytest.approx(whole, rel=1e-12)


def test_running_moments_equal_the_batch_moments_and_frechet():
    """Chan's merge, batches of uneven size, a large common offset (raw sums would cancel):
    the batch mean, ``torch.cov`` and the batch Fréchet distance."""
    x = gaussian(1001, 6, 1e6, seed=1) + torch.linspace(0, 1, 6, dtype=F64)
    y = gaussian(777, 6, 1e6 + 0.5, std=2.0, seed=2)
    mx, my = RunningMoments(), RunningMoments()
    for i in range(0, len(x), 97):
        mx.update(x[i : i + 97].float().double())  # (float32 inputs are fine too)
    for i in range(0, len(y), 250):
        my.update(y[i : i + 250])
    xr = torch.cat([x[i : i + 97].float().double() for i in range(0, len(x), 97)])
    assert mx.count == 1001 and my.count == 777
    torch.testing.assert_close(mx.mean, xr.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(mx.cov, torch.cov(xr.T), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(my.cov, torch.cov(y.T), rtol=1e-9, atol=1e-9)
    whole = frechet_distance(xr, y)
    assert frechet_distance(mx, my) == pytest.approx(whole, rel=1e-9)
    assert frechet_distance(mx, y) == pytest.approx(whole, rel=1e-9)  # moments and rows mix
    small_x, small_y = gaussian(400, 4, seed=3), gaussian(300, 4, 1.0, std=2.0, seed=4)
    ms = RunningMoments().update(small_x[:1]).update(small_x[1:150]).update(small_x[150:])
    mt = RunningMoments().update(small_y)
    assert frechet_distance(ms, mt) == pytest.approx(frechet_distance(small_x, small_y), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(RunningMoments().update(small_x[:1]), mt)
    with pytest.raises(ValueError, match="features"):
        RunningMoments().update(small_x).update(gaussian(5, 3))


def test_running_error_typicality_and_range_equal_the_one_batch_values():
    a, b = gaussian(500, 8, seed=1), gaussian(500, 8, seed=1) + 0.01 * gaussian(500, 8, seed=2)
    err = RunningError()
    for i in range(0, 500, 64):
        err.update(a[i : i + 64], b[i : i + 64])
    assert err.psnr(data_range=2.0) == pytest.approx(psnr(a, b, data_range=2.0), rel=1e-12)
    assert err.max == max_error(a, b)
    energies = torch.cat([a[i : i + 64].pow(2).sum(1) for i in range(0, 500, 64)])
    assert typicality_from_energies(energies, 8) == typicality(a)
    count = sum(outside_count(a[i : i + 64], -1.0, 1.0) for i in range(0, 500, 64))
    assert count / a.numel() == outside_range(a, -1.0, 1.0)
