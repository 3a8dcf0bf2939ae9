"""The EMA of the weights: warm-up, what a training state hands on, and resume."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

from pipelines.training.schedule import EmaWithWarmup
from pipelines.training.state import final_weights

DECAY = 0.9


def ema_of(net: torch.nn.Module, averager: EmaWithWarmup) -> AveragedModel:
    """The training loop's EMA: ``AveragedModel(raw, multi_avg_fn=averager)``."""
    return AveragedModel(net, multi_avg_fn=averager)


def fill(net: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)


def lag(net: torch.nn.Module, ema: AveragedModel) -> float:
    """How far the EMA is behind the weights (one number: every parameter holds one value)."""
    return float(net.weight) - float(ema.module.weight)


def test_the_ema_of_constant_weights_is_those_weights_at_every_step():
    """An average of a constant is that constant, whatever the decay and the warm-up do; from
    the first update on, not the weights the EMA was built from (it copies, then averages)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    averager = EmaWithWarmup(DECAY)
    ema = ema_of(net, averager)  # built from the random initial weights
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.3, -1.7, 2.5], [1e-3, 7.0, -0.1]]))
        net.bias.copy_(torch.tensor([0.7, -3.3]))
    for step in range(200):
        averager.update_parameters(ema, net)
        for name, w in net.named_parameters():
            torch.testing.assert_close(
                getattr(ema.module, name), w, atol=1e-6, rtol=1e-6, msg=f"{name} @ {step}"
            )


def test_the_ema_of_a_ramp_lags_it_by_what_its_decay_implies():
    """Weights on a ramp ``w_t = s t``. An EMA step ``e_t = d_t e_{t-1} + (1 - d_t) w_t`` moves
    the lag ``L_t = w_t - e_t`` to ``L_t = d_t (L_{t-1} + s)``. With ``L_1 = 0`` (the first
    update copies) and every ``d_t <= d`` (warm-up only lowers the decay), induction gives
    ``0 <= L_t <= s d / (1 - d)`` at every step, the fixed point of ``L -> d (L + s)``. Once
    the warm-up is over (``d_t = d``), ``L_t`` approaches that fixed point geometrically, as
    ``d^k``: after ``k`` steps at full decay the gap is at most ``d^k`` times the lag bound
    (``0.9^200 ~ 7e-10``), so the lag then equals ``s d / (1 - d)`` to float tolerance. A
    wrong decay (``1 - d`` for ``d``, say) gives a lag of ``s (1 - d) / d`` instead."""
    slope = 0.01
    bound = slope * DECAY / (1 - DECAY)  # 0.09
    net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)  # no round-off in the lag
    averager = EmaWithWarmup(DECAY)
    ema = ema_of(net, averager)
    lags = []
    for t in range(1, 401):
        fill(net, slope * t)
        averager.update_parameters(ema, net)
        lags.append(lag(net, ema))
        assert -1e-12 <= lags[-1] <= bound + 1e-12, (t, lags[-1])
    assert lags[0] == 0.0  # the first update copies
    assert abs(lags[-1] - bound) < 1e-8, (lags[-1], bound)
    assert lags[200] > 0.99 * bound  # converged well before the end, not only at the last step


def test_the_warm_up_follows_the_first_weights_more_closely_than_a_plain_ema():
    """Warm-up exists so that a short run's average is not dominated by its first, untrained
    weights: on the same ramp, during the first steps the EMA stays much closer to the
    current weights than torch's plain EMA at the full decay (lag ``s d (1 - d^(t-1)) /
    (1 - d)``: ``0.9 s`` after the second step), and after one update it is the weights."""
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    slope = 1.0
    net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    averager = EmaWithWarmup(DECAY)
    warm = ema_of(net, averager)
    plain = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
    for t in range(1, 11):
        fill(net, slope * t)
        averager.update_parameters(warm, net)
        plain.update_parameters(net)
        if t == 1:
            assert lag(net, warm) == 0.0 == lag(net, plain)  # both copy the first weights
            continue
        assert 0 < lag(net, warm) < 0.5 * lag(net, plain), (t, lag(net, warm), lag(net, plain))
    assert int(warm.n_averaged) == t


def test_final_weights_prefer_the_ema_and_strip_its_prefix():
    net = torch.nn.Linear(2, 1)
    ema = AveragedModel(net, multi_avg_fn=EmaWithWarmup(0.5))
    ema.update_parameters(net)
    net.weight.data.add_(1.0)
    ema.update_parameters(net)
    state = {"model": net.state_dict(), "ema_state": ema.state_dict()}
    weights = final_weights(state)
    assert set(weights) == set(net.state_dict())
    assert torch.equal(weights["weight"], ema.module.weight)
    assert not torch.equal(weights["weight"], net.weight)
    raw_only = {"model": net.state_dict()}
    assert final_weights(raw_only) is raw_only["model"]
