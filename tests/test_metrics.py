"""Metrics on distributions with known answers: identical sets give 0, shifted Gaussians the
closed form."""

from __future__ import annotations

import math

import pytest
import torch

from lincore import CouplingFlow
from lincore.classifier import accuracy, fit_classifier
from lincore.metrics import (
    energy_distance,
    frechet_distance,
    max_error,
    median_bandwidths,
    mmd,
    psnr,
    roundtrip_error,
    sliced_wasserstein,
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
