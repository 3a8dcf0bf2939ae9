"""Table 2: time and memory of collapsing ``T`` steps of a rank-8 ``A_t`` with random weights:
shared basis (``isotropic_psd``) against the rank-only operator, factored or dense. Each case
runs in a fresh process so that its peak RSS is its own."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time

import torch

from benchmarks.common import fresh_process
from benchmarks.one_step_models import STEPS
from lincore.metrics import median_seconds
from lincore.operators import time_operator
from lincore.sampling import collapse


def _collapse_case(dim: int, form: str, steps: int, rank: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    kind = "isotropic_psd" if form == "shared basis" else "low_rank"
    op = time_operator(kind, dim, rank, hidden=64).double().requires_grad_(False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    b = collapse(op, steps, "euler", form=form if kind == "low_rank" else "auto")  # type: ignore
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    z = torch.randn(64, dim, dtype=torch.float64)
    apply_s = median_seconds(lambda: b.apply(z), 3)
    stored = (
        sum(t.numel() for t in (b.matrix.W, b.matrix.Y)) * 8 if b.factored else b.matrix.numel() * 8
    )
    queue.put(
        {
            "D": dim,
            "operator": kind,
            "form": form,
            "collapse_s": secs,
            "apply_64_ms": 1e3 * apply_s,
            "stored_MB": stored / 2**20,
            "peak_rss_MB": peak / 1024,
        }
    )


def collapse_table(dims: list[int], steps: int = STEPS, rank: int = 8) -> list[dict]:
    """Every form at every ``D``, one fresh process each."""
    forms = ("shared basis", "factored", "dense")
    return [fresh_process(_collapse_case, d, f, steps, rank) for d in dims for f in forms]
