"""One-step flow matching: collapse = multi-step, inversion, exact likelihood, a kept g."""

from __future__ import annotations

import math

import pytest
import torch

from lincore import CouplingFlow, ImageFlow
from lincore.fit import fit
from lincore.generators import (
    FlowMatchingBaseline,
    LossWeights,
    MaximumLikelihoodFlow,
    OneStepFlowMatching,
    VelocityMLP,
    bits_per_dim,
)
from lincore.operators import OPERATOR_KINDS, TimeLowRank, time_operator
from lincore.testing import far_from_identity, far_from_zero
from lincore.toys import toy

F64 = torch.float64
TOL = {"atol": 1e-9, "rtol": 1e-9}


def model(
    dim: int = 4,
    rank: int = 2,
    *,
    two_networks: bool = False,
    seed: int = 0,
    kind: str = "low_rank",
):
    torch.manual_seed(seed)
    op = far_from_zero(time_operator(kind, dim, rank, hidden=32), seed=seed)
    if two_networks:
        g = far_from_identity(CouplingFlow(dim, 4, 32), seed=seed)
        g_data = far_from_identity(CouplingFlow(dim, 4, 32), seed=seed + 1)
        m = OneStepFlowMatching(g, op, g_data=g_data)
    else:
        g = far_from_identity(CouplingFlow(dim, 4, 32, conditional=True), seed=seed)
        m = OneStepFlowMatching(g, op)
    return m.double()


def train(m: OneStepFlowMatching, data: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    return fit(m, data, steps=steps, batch_size=128, lr=lr)


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("two_networks", [False, True])
def test_one_step_sample_equals_the_multi_step_sampler(method, two_networks, kind):
    m = model(two_networks=two_networks, kind=kind)
    x0 = torch.randn(16, 4, dtype=F64)
    multi = m.sample(x0, steps=50, method=method)
    one = m.sample_one_step(x0, m.collapse(50, method))
    torch.testing.assert_close(one, multi, **TOL)
    assert (multi - x0).abs().max() > 0.1  # the sampler does move the noise


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_collapse_stays_exact_after_training(method):
    m = model(dim=2, rank=2).float()
    train(m, toy("moons", 2048).float(), steps=40)
    m = m.double()
    x0 = torch.randn(64, 2, dtype=F64)
    torch.testing.assert_close(
        m.sample_one_step(x0, m.collapse(100, method)), m.sample(x0, 100, method), **TOL
    )


def test_one_forward_reaches_every_parameter():
    """DDP only synchronises what one forward's loss touches: every parameter must get a grad."""
    m = model()
    m(torch.randn(8, 4, dtype=F64))["loss"].backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_loss_terms_and_weights():
    m = model()
    m.weights = LossWeights.paper(latent=2.0, noise_reconstruction=0.0, prediction=0.5)
    torch.manual_seed(3)
    terms = m(torch.randn(8, 4, dtype=F64))
    expected = 2 * terms["latent"] + terms["data_reconstruction"] + 0.5 * terms["prediction"]
    torch.testing.assert_close(terms["loss"], expected)
    assert all(float(v.detach()) > 0 for v in terms.values())


def test_perceptual_hook_is_added_to_the_data_terms():
    calls = []

    def perceptual(pred, target):
        calls.append(pred.shape)
        return (pred - target).abs().mean()

    m = model()
    m.perceptual = perceptual
    m(torch.randn(8, 4, dtype=F64))
    assert calls == [torch.Size([8, 4])] * 2


def test_the_objective_keeps_g_while_the_latent_term_alone_shrinks_it():
    """Latent MSE alone is minimised by shrinking every latent to 0; the pixel terms prevent it."""
    data = toy("checkerboard", 4096)
    probe = data[:512]
    scales = {}
    for name, weights in {
        "full": LossWeights.paper(),
        "latent_only": LossWeights.paper(
            noise_reconstruction=0, data_reconstruction=0, prediction=0
        ),
    }.items():
        torch.manual_seed(0)
        g = CouplingFlow(2, 4, 32, conditional=True)
        m = OneStepFlowMatching(g, TimeLowRank(2, 2, hidden=32), weights=weights).double()
        before = float(m.encode(probe, 1).std())
        train(m, data, steps=150, lr=1e-2)
        with torch.no_grad():
            scales[name] = float(m.encode(probe, 1).std()) / before
            roundtrip = (m.decode(m.encode(probe, 1), 1) - probe).abs().max()
        assert roundtrip < 1e-9
    assert scales["full"] > 0.5
    assert scales["latent_only"] < 0.5 * scales["full"]


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
def test_inversion_round_trips_and_interpolation_hits_both_ends(kind):
    m = model(dim=6, rank=2, kind=kind)
    b = m.collapse(30, "rk4")
    x0 = torch.randn(5, 6, dtype=F64)
    x1 = m.sample_one_step(x0, b)
    torch.testing.assert_close(m.invert(x1, b), x0, atol=1e-8, rtol=1e-8)
    path = m.interpolate(x1[:2], x1[2:4], torch.tensor([0.0, 0.5, 1.0]), b)
    assert path.shape == (3, 2, 6)
    torch.testing.assert_close(path[0], x1[:2], atol=1e-6, rtol=0)
    torch.testing.assert_close(path[-1], x1[2:4], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_exact_likelihood_matches_change_of_variables(method, kind):
    """log p(x) = log N(e) - log|det dF/de| with F the one-step map, its Jacobian by autograd."""
    m = model(dim=3, rank=2, seed=1, kind=kind)
    b = m.collapse(20, method)
    assert b.condition_number() < 1e6
    x1 = m.sample_one_step(torch.randn(6, 3, dtype=F64), b)
    log_p = m.log_prob(x1, b)
    for i in range(len(x1)):
        e = m.invert(x1[i : i + 1], b)[0]

        def one_step(v):
            return m.decode(b.apply(m.encode(v[None], 0)), 1)[0]

        jac = torch.autograd.functional.jacobian(one_step, e)
        direct = (
            -0.5 * (e.pow(2).sum() + 3 * math.log(2 * math.pi))
            - torch.linalg.slogdet(jac).logabsdet
        )
        assert abs(float(log_p[i] - direct)) < 1e-7


def test_likelihood_on_images_is_finite_and_bits_per_dim_converts():
    torch.manual_seed(0)
    g = ImageFlow(1, 4, 4, depth=2, hidden=8, conditional=True)
    x = torch.rand(8, 1, 4, 4, dtype=F64)
    g = g.double()
    g.initialize_from(x, cond=1.0)
    g.initialize_from(torch.randn_like(x), cond=0.0)
    m = OneStepFlowMatching(g, TimeLowRank(16, 4, hidden=16).double())
    b = m.collapse(10)
    lp = m.log_prob(x, b)
    assert lp.shape == (8,) and bool(torch.isfinite(lp).all())
    bpd = bits_per_dim(lp, 16, bins=256)
    assert bpd == pytest.approx((-lp.mean().item() + 16 * math.log(256)) / (16 * math.log(2)))


def test_constructor_errors_name_the_fix():
    with pytest.raises(ValueError, match="conditional=True"):
        OneStepFlowMatching(CouplingFlow(4, 2, 8), TimeLowRank(4, 2))
    with pytest.raises(ValueError, match=r"build the operator with dim=4"):
        OneStepFlowMatching(CouplingFlow(4, 2, 8, conditional=True), TimeLowRank(6, 2))
    with pytest.raises(ValueError, match="same event shape"):
        OneStepFlowMatching(CouplingFlow(4, 2, 8), TimeLowRank(4, 2), g_data=CouplingFlow(5, 2, 8))
    with pytest.raises(ValueError, match=r"rank must be in 1\.\.4"):
        TimeLowRank(4, 5)


def test_baseline_learns_and_its_one_step_sampler_is_one_euler_jump():
    torch.manual_seed(0)
    base = FlowMatchingBaseline(VelocityMLP((2,), hidden=64, depth=2)).double()
    data = toy("moons", 2048)
    losses = fit(base, data, steps=200, batch_size=128, lr=3e-3)
    assert sum(losses[-20:]) < 0.8 * sum(losses[:20])
    x0 = torch.randn(4, 2, dtype=F64)
    jump = x0 + base.velocity(x0, torch.zeros(4, dtype=F64))
    torch.testing.assert_close(base.sample(x0, 1), jump)


def test_fit_needs_one_budget_and_stops_on_a_non_finite_loss():
    m = model()
    with pytest.raises(ValueError, match="exactly one of steps= or seconds="):
        fit(m, torch.randn(16, 4, dtype=F64))
    bad = torch.full((16, 4), 1e300, dtype=F64)  # overflows the loss to inf
    m.g.check_finite = False
    with pytest.raises(FloatingPointError, match="at step 0; lower the learning rate"):
        fit(m, bad, steps=3, batch_size=4)


def test_initialisation_sets_each_side_from_its_own_domain():
    """With two image networks the noise network's ActNorm must see noise, not data."""
    torch.manual_seed(0)
    m = OneStepFlowMatching.build(  # raw pixels: the data here lie far outside [0, 1]
        (1, 4, 4), rank=4, depth=1, hidden=8, flow="image", two_networks=True, pixels="raw"
    )
    data = 5 + 0.01 * torch.rand(64, 1, 4, 4)  # far from N(0, I): a large log-scale
    m.initialize_from(data)
    first = {
        name: next(b for b in net.body.blocks if hasattr(b, "log_scale"))
        for name, net in (("noise", m.g), ("data", m.g_data))
    }
    assert float(first["data"].log_scale.mean()) > 3
    assert float(first["noise"].log_scale.abs().max()) < 0.5
    assert m.roundtrip_error(data) < 1e-4 and m.roundtrip_error(torch.randn(8, 1, 4, 4), 0) < 1e-4


@pytest.mark.parametrize("two_networks", [False, True])
def test_the_warm_up_trains_the_data_network_alone_as_a_plain_flow(two_networks):
    """``warmup=True``: the loss is ``g(.; 1)``'s own NLL of the data (the plain flow's, per
    dimension, without the ``log 2 pi`` constant), the same ``data_likelihood`` as the full
    objective's; the operator gets no gradient. One shared network also learns to keep noise
    Gaussian through ``g(.; 0)``; with two, the noise network is left alone."""
    m = model(two_networks=two_networks, kind="isotropic_psd")
    x1 = 2 * torch.randn(32, 4, dtype=F64) + 1
    warm = m(x1, warmup=True)
    torch.manual_seed(0)
    full = m(x1)
    torch.testing.assert_close(warm["data_likelihood"], full["data_likelihood"], **TOL)
    if two_networks:
        plain = MaximumLikelihoodFlow(m.g_data)(x1)["loss"]
        torch.testing.assert_close(warm["loss"] + 0.5 * math.log(2 * math.pi), plain, **TOL)
        assert set(warm) == {"data_likelihood", "loss"}
    else:
        assert warm["loss"] == warm["data_likelihood"] + warm["noise_likelihood"]
    warm["loss"].backward()
    assert all(p.grad is None for p in m.operator.parameters())
    data_net = m.g_data if two_networks else m.g
    assert all(p.grad is not None for p in data_net.parameters())
    if two_networks:
        assert all(p.grad is None for p in m.g.parameters())
