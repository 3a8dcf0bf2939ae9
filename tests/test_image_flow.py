"""The image flow built for images (issue 23) against its definitions: the multi-scale flow and
the logit pixels are exact bijections with exact log-determinants, recomputed activations give
the stored-activation gradients, and NLL in bits/dim is the change of variables of 8-bit data."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from lincore.generators import MaximumLikelihoodFlow, OneStepConfig, OneStepFlowMatching
from lincore.generators.likelihood import bits_per_dim
from lincore.inn import LogitPixels, MultiScaleImageFlow, max_levels, set_recompute
from lincore.testing import far_from_identity, far_from_zero, relative_deviation


def multiscale(shape: tuple[int, int, int], levels: int, depth: int, **kw) -> MultiScaleImageFlow:
    torch.manual_seed(0)
    g = MultiScaleImageFlow(*shape, levels=levels, depth=depth, hidden=8, **kw)
    g.initialize_from(torch.rand(16, *shape), **({"cond": 1.0} if kw.get("conditional") else {}))
    return far_from_identity(g).double()


@pytest.mark.parametrize(
    ("shape", "levels", "depth"),
    [((1, 28, 28), 2, 2), ((1, 28, 28), 2, 24), ((3, 64, 64), 3, 3), ((3, 64, 64), 3, 24)],
    ids=["1x28x28-depth2", "1x28x28-depth24", "3x64x64-depth3", "3x64x64-depth24"],
)
def test_multiscale_round_trip_float64_at_depth(shape, levels, depth):
    g = multiscale(shape, levels, depth, conditional=True)
    x = torch.rand(2, *shape, dtype=torch.float64)
    z = g(x, cond=1.0).detach()
    assert float((z - x).norm() / x.norm()) > 0.5, "the network must be far from the identity"
    assert relative_deviation(g, x, cond=1.0) > 0.05, "the network must be non-linear"
    torch.testing.assert_close(g.inverse(z, cond=1.0), x, atol=1e-10, rtol=0)
    w = torch.randn_like(x)
    torch.testing.assert_close(g(g.inverse(w, cond=0.0), cond=0.0), w, atol=1e-10, rtol=0)


def test_multiscale_factors_out_half_per_level_and_keeps_it():
    """The latent of a 2-level flow on 1x4x4: level 1 keeps half of its 4 squeezed channels;
    zeroing the level-2 steps' effect would leave that half as it is. Here: the kept half of the
    latent depends on the input only through level 1 (changing level 2's weights leaves it)."""
    g = multiscale((1, 4, 4), 2, 2)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    kept = torch.nn.functional.pixel_unshuffle(g(x), 2)[:, :2]
    inner = g.body.blocks[0].inner
    with torch.no_grad():
        for p in inner.parameters():
            p.add_(0.3)
    kept_after = torch.nn.functional.pixel_unshuffle(g(x), 2)[:, :2]
    torch.testing.assert_close(kept, kept_after, atol=0, rtol=0)
    assert not torch.allclose(g(x), torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize(
    ("shape", "levels"), [((1, 8, 8), 3), ((3, 8, 8), 2), ((1, 28, 28), 2)], ids=str
)
def test_multiscale_log_det_matches_autograd(shape, levels):
    g = multiscale(shape, levels, levels + 1)
    x = torch.rand(2, *shape, dtype=torch.float64)
    out = g.forward_and_log_det(x)
    d = math.prod(shape)
    for i in range(2):
        jac = torch.func.jacrev(lambda v: g(v.unsqueeze(0))[0].flatten())(x[i]).reshape(d, d)
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(out.log_det[i], expected, atol=1e-8, rtol=0)


def test_levels_follow_the_image_and_bad_levels_are_clear():
    assert max_levels(1, 28, 28) == 2  # 28 -> 14 -> 7
    assert max_levels(3, 64, 64) == 6
    with pytest.raises(ValueError, match=r"allows 1\.\.2 levels"):
        MultiScaleImageFlow(1, 28, 28, levels=3, depth=3, hidden=8)
    with pytest.raises(ValueError, match="at least one coupling each"):
        MultiScaleImageFlow(1, 28, 28, levels=2, depth=1, hidden=8)


def test_logit_pixels_round_trip_log_det_and_range():
    t = LogitPixels().double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    out = t.forward_and_log_det(x)
    torch.testing.assert_close(t.inverse(out.out), x, atol=1e-12, rtol=0)
    for i in range(4):
        jac = jacobian(lambda v: t(v.unsqueeze(0))[0].flatten(), x[i]).reshape(16, 16)
        torch.testing.assert_close(
            out.log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-10, rtol=0
        )
    # whatever the latent, a pixel lands within a / (1 - 2a) of [0, 1]
    wild = t.inverse(torch.linspace(-1e3, 1e3, 101, dtype=torch.float64))
    bound = t.alpha / (1 - 2 * t.alpha)
    assert float(wild.min()) >= -bound and float(wild.max()) <= 1 + bound
    edge = t.inverse(torch.linspace(-30, 30, 101, dtype=torch.float64)[:, None])  # beyond [0, 1]
    assert float(edge.min()) < 0 and float(edge.max()) > 1
    torch.testing.assert_close(t.inverse(t(edge)), edge, atol=1e-12, rtol=0)  # re-encodes
    with pytest.raises(ValueError, match=r"model\.pixels: raw"):
        t(torch.tensor([[1.5]], dtype=torch.float64))


def tiny_model(**changes) -> OneStepFlowMatching:
    torch.manual_seed(0)
    cfg = OneStepConfig(flow="image", rank=3, depth=3, hidden=8, operator_hidden=8, **changes)
    model = OneStepFlowMatching.build((1, 4, 4), cfg, steps=10)
    model.initialize_from(torch.rand(32, 1, 4, 4))
    far_from_zero(model.operator)
    return far_from_identity(model).double()


def test_image_default_is_multiscale_with_logit_pixels():
    model = tiny_model()
    assert isinstance(model.g, MultiScaleImageFlow)
    assert isinstance(model.pixels, LogitPixels)
    single = tiny_model(levels=1, pixels="raw")
    assert single.pixels is None and not isinstance(single.g, MultiScaleImageFlow)


def test_nll_in_bits_per_dim_is_the_change_of_variables_of_the_whole_map():
    """``log p(x)`` of the one-step generator with logit pixels equals ``log N(e) + log|det de/dx|``
    for ``e = g^-1(B^-1 g(logit(x); 1); 0)``, the Jacobian taken by autograd through every
    piece; and bits/dim of 8-bit data is ``(-log p + D log 256) / (D log 2)``."""
    model = tiny_model()
    sampler = model.collapse(10)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    log_p = model.log_prob(x, sampler)

    def to_noise(v):
        return model.invert(v.reshape(1, 1, 4, 4), sampler).flatten()

    with torch.enable_grad():
        for i in range(3):
            e = to_noise(x[i])
            jac = torch.func.jacrev(
                lambda v: model.decode(
                    sampler.solve(model.encode(v.reshape(1, 1, 4, 4), 1)), 0
                ).flatten()
            )(x[i])
            direct = (
                -0.5 * (e.pow(2).sum() + 16 * math.log(2 * math.pi))
                + torch.linalg.slogdet(jac.reshape(16, 16)).logabsdet
            )
            torch.testing.assert_close(log_p[i], direct, atol=1e-8, rtol=0)
    expected_bpd = float((-log_p.mean() + 16 * math.log(256)) / (16 * math.log(2)))
    assert bits_per_dim(log_p, 16, bins=256) == pytest.approx(expected_bpd, abs=1e-12)


def test_samples_land_in_pixel_range_by_construction():
    model = tiny_model()
    sampler = model.collapse(10)
    x = model.sample_one_step(50 * torch.randn(64, 1, 4, 4, dtype=torch.float64), sampler)
    bound = model.pixels.alpha / (1 - 2 * model.pixels.alpha)
    assert float(x.min()) >= -bound and float(x.max()) <= 1 + bound


def test_plain_flow_with_logit_pixels_round_trips():
    torch.manual_seed(0)
    g = MultiScaleImageFlow(1, 4, 4, levels=2, depth=2, hidden=8)
    flow = MaximumLikelihoodFlow(g, pixels=LogitPixels())
    x = torch.rand(8, 1, 4, 4)
    g.initialize_from(flow.pixels(x))
    torch.testing.assert_close(flow.sample(flow.invert(x)), x, atol=1e-5, rtol=0)
    assert torch.isfinite(flow.log_prob(x)).all()


def loss_grads(model, x, recompute: bool, autocast: bool = False):
    set_recompute(model, recompute)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the loss draws noise: the same draws for both
    x0 = torch.randn_like(x)
    t = torch.rand(x.shape[0], dtype=x.dtype)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.enable_grad()
    with ctx:
        loss = model(x, x0, t)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_recomputed_gradients_equal_stored_ones_float64():
    model = tiny_model()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    assert set_recompute(model, True) > 0
    loss_a, stored = loss_grads(model, x, recompute=False)
    loss_b, recomputed = loss_grads(model, x, recompute=True)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-12, rtol=0)
    assert stored.keys() == recomputed.keys()
    for name, grad in stored.items():
        assert grad.abs().max() > 0 or "initialized" in name
        torch.testing.assert_close(recomputed[name], grad, atol=1e-10, rtol=1e-10)


def test_recomputed_gradients_equal_stored_ones_under_autocast():
    model = tiny_model().float()
    x = torch.rand(8, 1, 4, 4)
    _, stored = loss_grads(model, x, recompute=False, autocast=True)
    _, recomputed = loss_grads(model, x, recompute=True, autocast=True)
    for name, grad in stored.items():
        torch.testing.assert_close(recomputed[name], grad, atol=1e-5, rtol=1e-4)
