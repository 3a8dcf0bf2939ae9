"""Table 3 (``--memory``): one training step (forward, backward, Adam) at CelebA size, per
operator: what a training run's memory costs, each case in a fresh process."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import resource
import time

import torch

from benchmarks.common import fresh_process
from benchmarks.one_step_models import DEFAULT_WEIGHTS, n_params
from lincore.generators import OneStepFlowMatching


def _memory_case(
    kind: str, batch: int, one_step: float, shape: tuple[int, ...], queue: mp.Queue
) -> None:
    torch.set_num_threads(2)
    weights = dataclasses.replace(DEFAULT_WEIGHTS, one_step_likelihood=one_step)
    model = OneStepFlowMatching.build(
        shape,
        rank=8,
        depth=6,
        hidden=128,
        operator_hidden=128,
        operator=kind,
        flow="image",
        weights=weights,
    )
    x = torch.rand(batch, *shape)
    model.initialize_from(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(2):  # the second step holds Adam's state too
        loss = model(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    secs = (time.perf_counter() - t0) / 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    queue.put(
        {
            "operator": kind,
            "one_step_likelihood": one_step,
            "shape": "x".join(map(str, shape)),
            "batch": batch,
            "operator_params": n_params(model.operator),
            "all_params": n_params(model),
            "step_peak_MB": peak / 1024,
            "step_s": secs,
        }
    )


def memory_table(shape: tuple[int, ...] = (3, 64, 64)) -> list[dict]:
    """The rank-only operator, then ``isotropic_psd`` without and with the one-step likelihood."""
    cases = [
        ("low_rank", 16, 0.0),
        ("isotropic_psd", 16, 0.0),
        ("isotropic_psd", 16, 1.0),
        ("isotropic_psd", 64, 1.0),
    ]
    return [fresh_process(_memory_case, *case, shape) for case in cases]
