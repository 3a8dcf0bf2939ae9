"""Two gloo ranks train one Linearizer under DDP: replicas must stay identical (STYLE G12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lincore import CouplingFlow, Dense, Linearizer


class RegressionObjective(nn.Module):
    """Every direction (g_x, A, g_y^-1) and the loss run inside one ``forward`` (G12)."""

    def __init__(self, f: Linearizer) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.f(x) - y).square().mean()


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    torch.manual_seed(0)  # same architecture on every rank ...
    f = Linearizer(CouplingFlow(3, 3, 16, actnorm=True), Dense(3, 3))
    gen = torch.Generator().manual_seed(100 + rank)  # ... but different data per rank
    f.g_x.initialize_from(torch.randn(64, 3, generator=gen) * (1 + rank))
    model = nn.parallel.DistributedDataParallel(RegressionObjective(f))  # broadcasts rank 0
    torch.save(f.state_dict(), f"{folder}/init{rank}.pt")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        x = torch.randn(32, 3, generator=gen)
        loss = model(x, torch.tanh(x) * 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(f.state_dict(), f"{folder}/final{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_replicas_stay_identical(tmp_path: Path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    init0, init1, final0, final1 = (
        load(n) for n in ("init0.pt", "init1.pt", "final0.pt", "final1.pt")
    )
    assert bool(final0["g_x.body.blocks.0.initialized"])
    moved = 0.0
    for key in final0:
        torch.testing.assert_close(init0[key], init1[key], atol=0, rtol=0)  # broadcast at wrap
        torch.testing.assert_close(final0[key], final1[key], atol=1e-6, rtol=0)
        if final0[key].is_floating_point():
            moved = max(moved, float((final0[key] - init0[key]).abs().max()))
    assert moved > 1e-3, "training did not change the parameters"
