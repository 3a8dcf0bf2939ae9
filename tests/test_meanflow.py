"""MeanFlow in our time convention (noise at 0, data at 1): its JVP, its target, its sampler."""

from __future__ import annotations

import pytest
import torch

from lincore.generators import MeanFlow, MeanVelocityMLP
from lincore.generators.meanflow import mean_flow_target, path_derivative

F64 = torch.float64


def gaussian_mean_velocity(m: float, s: float):
    """Exact ``u(z, r, t)`` from N(0, 1) to N(m, s^2) (independent coupling), and ``v(z, r)``.

    The marginal at time ``a`` is N(a m, sig_a^2), ``sig_a^2 = (1-a)^2 + a^2 s^2``, and the flow
    from ``r`` to ``t`` is affine: ``z -> t m + sig_t / sig_r (z - r m)``.
    """

    def sig(a):
        return ((1 - a) ** 2 + (a * s) ** 2).sqrt()

    def u(z, r, t):
        r, t = r[:, None], t[:, None]
        return (t * m + sig(t) / sig(r) * (z - r * m) - z) / (t - r)

    def v(z, a):
        a = a[:, None]
        return m + (a * s * s - (1 - a)) / sig(a) ** 2 * (z - a * m)

    return u, v


def test_jvp_is_the_total_derivative_along_the_path():
    """``d/dr u(z_r, r, t)`` with ``z_r = (1-r) x0 + r x1`` and ``t`` fixed, by central FD."""
    torch.manual_seed(0)
    net = MeanVelocityMLP((3,), hidden=16, depth=2, embed_dim=8).double()
    x0, x1 = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    r = 0.6 * torch.rand(6, dtype=F64)
    t = r + 0.1 + 0.3 * torch.rand(6, dtype=F64)

    def along(rr):
        return net((1 - rr[:, None]) * x0 + rr[:, None] * x1, rr, t)

    u, du_dr = path_derivative(net, (1 - r[:, None]) * x0 + r[:, None] * x1, r, t, x1 - x0)
    eps = 1e-6
    fd = (along(r + eps) - along(r - eps)) / (2 * eps)
    torch.testing.assert_close(u, along(r), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(du_dr, fd, atol=1e-7, rtol=1e-6)
    assert du_dr.abs().max() > 1e-2  # not trivially zero


def test_the_exact_average_velocity_is_the_fixed_point_of_the_target():
    """The sign convention: ``u = v + (t - r) du/dr`` holds for the closed-form Gaussian flow.

    With the marginal velocity in place of ``x1 - x0`` (the target is affine in it, so this is
    the conditional mean of the training target), the exact ``u`` reproduces itself; the paper's
    sign taken literally (``v - (t - r) du``), or a slightly wrong ``u``, does not.
    """
    torch.manual_seed(0)
    u, v = gaussian_mean_velocity(2.0, 0.5)
    z = 1 + torch.randn(16, 1, dtype=F64)
    r = 0.8 * torch.rand(16, dtype=F64)
    t = r + 0.05 + (0.95 - r) * torch.rand(16, dtype=F64)
    u_pred, target = mean_flow_target(u, z, r, t, v(z, r))
    torch.testing.assert_close(target, u_pred, atol=1e-10, rtol=1e-10)
    _, du_dr = path_derivative(u, z, r, t, v(z, r))
    assert (v(z, r) - (t - r)[:, None] * du_dr - u_pred).abs().max() > 0.1
    u_off, _ = gaussian_mean_velocity(2.0, 0.6)
    off, off_target = mean_flow_target(u_off, z, r, t, v(z, r))
    assert (off_target - off).abs().max() > 1e-2


def test_with_r_equal_t_the_loss_is_flow_matching():
    """All pairs on the diagonal: the target is ``x1 - x0`` and the loss is FM's squared error."""
    torch.manual_seed(0)
    net = MeanVelocityMLP((2,), hidden=16, depth=2).double()
    x1 = torch.randn(32, 2, dtype=F64)
    for p in (0.0, 1.0):
        mf = MeanFlow(net, flow_fraction=1.0, adaptive_p=p)
        torch.manual_seed(1)
        loss = mf(x1)["loss"]
        torch.manual_seed(1)  # replay forward's draws: x0, then the times
        x0 = torch.randn_like(x1)
        r, t = mf.sample_times(32, x1)
        assert torch.equal(r, t)
        zt = (1 - t[:, None]) * x0 + t[:, None] * x1
        err = (net(zt, t, t) - (x1 - x0)).pow(2).sum(1)
        torch.testing.assert_close(loss, (err / (err + 1e-3) ** p).mean())


def test_one_step_samples_of_a_briefly_trained_meanflow_match_a_gaussian():
    """N(2, 0.5^2) from N(0, 1): an untrained net gives mean 0 and std 1; one jump must do it.

    ``embed_dim=2`` (one frequency) on purpose: the 32-rad top frequency of the default
    embedding enters the target through ``du/dr`` and makes 300 steps erratic.
    """
    torch.manual_seed(0)
    m, s, steps = 2.0, 0.5, 300
    mf = MeanFlow(MeanVelocityMLP((1,), hidden=64, depth=2, embed_dim=2), time_dist="uniform")
    opt = torch.optim.Adam(mf.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    for _ in range(steps):
        loss = mf(m + s * torch.randn(256, 1))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    x0 = torch.randn(20000, 1)
    one = mf.sample(x0)
    assert abs(one.mean().item() - m) < 0.2
    assert abs(one.std().item() - s) < 0.3  # a collapsed one-step FM map would give std ~0.15
    four = mf.sample(x0, 4)
    assert abs(four.mean().item() - m) < 0.2
    assert abs(four.std().item() - s) < 0.3


def test_sampler_jumps_forward_and_rejects_zero_steps():
    torch.manual_seed(0)
    mf = MeanFlow(MeanVelocityMLP((2,), hidden=8, depth=1)).double()
    x0 = torch.randn(5, 2, dtype=F64)
    zero, one = torch.zeros(5, dtype=F64), torch.ones(5, dtype=F64)
    torch.testing.assert_close(mf.sample(x0), x0 + mf.mean_velocity(x0, zero, one))
    half = x0 + 0.5 * mf.mean_velocity(x0, zero, one / 2)
    torch.testing.assert_close(mf.sample(x0, 2), half + 0.5 * mf.mean_velocity(half, one / 2, one))
    with pytest.raises(ValueError, match="steps"):
        mf.sample(x0, 0)
