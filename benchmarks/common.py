"""What every benchmark shares: a markdown table of its rows, and a measurement in a fresh
process (so that a peak RSS belongs to one case, not to whatever ran before it)."""

from __future__ import annotations

import math
import multiprocessing as mp
import queue as queue_mod
from collections.abc import Callable


def fresh_process(target: Callable[..., None], *args: object) -> dict:
    """``target(*args, queue)`` in a fresh (spawned) process: its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        while True:
            try:
                return queue.get(timeout=5)
            except queue_mod.Empty:
                if not proc.is_alive():  # killed (out of memory) or crashed: say so, not hang
                    raise RuntimeError(
                        f"the measurement process died (exit code {proc.exitcode}; -9: killed, "
                        "usually for memory)"
                    ) from None
    finally:
        proc.join()


def table(rows: list[dict]) -> str:
    """Rows as a markdown table, columns in order of first appearance: rows may differ in keys."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def fmt(v: object) -> str:
        if isinstance(v, float):
            if math.isinf(v):
                return "inf"
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
