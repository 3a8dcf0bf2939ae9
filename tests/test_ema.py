"""The EMA of the weights: warm-up, what a training state hands on, and resume."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

from pipelines.training.schedule import EmaWithWarmup
from pipelines.training.state import final_weights


def test_the_ema_warms_up_then_decays_at_its_rate():
    net = torch.nn.Linear(1, 1, bias=False)
    averager = EmaWithWarmup(0.9)
    ema = AveragedModel(net, multi_avg_fn=averager)
    values, expected = [1.0, 2.0, 4.0, 8.0, 16.0], 1.0
    for i, v in enumerate(values):
        net.weight.data.fill_(v)
        ema.update_parameters(net)
        if i > 0:  # the first update copies; then decay min(0.9, (1 + n) / (10 + n))
            decay = min(0.9, (1 + (i - 1)) / (10 + (i - 1)))
            expected = decay * expected + (1 - decay) * v
        assert abs(float(ema.module.weight) - expected) < 1e-6
    assert averager.updates == len(values) - 1
    assert values[-2] < float(ema.module.weight) < values[-1]  # it averages, it does not copy


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
