"""Does Optuna TPE + ASHA find as good a model as random search with fewer trial-epochs?

    python -m benchmarks.sweep_efficiency [--trials 12] [--max-epochs 4] [--seeds 0 1 2]
                                          [--concurrent 2] [--grace 1] [--reduction-factor 2]
                                          [--arms ...]
                                          [--data digits] [--json out.json] [--md out.md]

Every arm searches ``sweep.space`` from params.yaml with the same trial budget, the same
``max_epochs``, the same seed and the same concurrency, trials in process
(``workers_per_trial: 0``), exactly as ``python -m sweeps`` runs them (``sweeps.search.fit``):

- ``tpe+asha``: Optuna TPE (``BudgetOptunaSearch``: stopped trials told PRUNED) with ASHA
  (grace ``--grace`` epochs, reduction factor ``--reduction-factor``, default the sweep's);
- ``random``: Ray Tune's random search, every trial runs all its epochs;
- ``random+asha``: random search with ASHA;
- ``tpe``: TPE, every trial runs all its epochs.

Trial-epochs are counted in the order their results reach the driver (a Tune callback), so
concurrent trials are counted as they really ran. For each seed the table gives each arm's best
``val_mmd`` (one-step samples vs validation data), the trial-epochs it spent, and the
trial-epochs it needed to come within 5% of the best value any arm found, and of random search's
best. Aim: TPE + ASHA within 5% of random search's best with at most 40% of random search's
trial-epochs, and a final best no worse than random's, in the median seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

ARMS = {
    "tpe+asha": ("optuna", "asha"),
    "random": ("random", "none"),
    "random+asha": ("random", "asha"),
    "tpe": ("optuna", "none"),
}
TARGET_SHARE = 0.4


class Recorder(Callback):
    """A Tune callback (in the driver) that keeps every result's objective in the order the
    results arrive: ``(time, trial id, epochs done, val_mmd)``."""

    def __init__(self) -> None:
        self.values: list[tuple[float, str, int, float]] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict) -> None:
        self.values.append(
            (time.perf_counter(), trial.trial_id, int(result["epochs_done"]), result["val_mmd"])
        )


def run_arm(
    cfg: Any,
    arm: str,
    seed: int,
    args: argparse.Namespace,
    data: Path,
    storage: Path,
) -> dict[str, Any]:
    """One search; returns its per-epoch objective values in the order they were reported."""
    from sweeps.search import fit

    search, scheduler = ARMS[arm]
    sweep = dataclasses.replace(
        cfg.sweep,
        search=search,
        scheduler=scheduler,
        num_samples=args.trials,
        max_epochs=args.max_epochs,
        max_concurrent_trials=args.concurrent,
        workers_per_trial=0,
        grace_period=args.grace,
        seed=seed,
        objectives="single",
    )
    c = dataclasses.replace(cfg, sweep=sweep)
    rec = Recorder()
    t0 = time.perf_counter()
    fit(c, storage / f"{arm}-{seed}", data / "train.parquet", data / "val.parquet", callbacks=[rec])
    wall = time.perf_counter() - t0
    values = [float(v) for *_, v in sorted(rec.values)]
    trials = {tid for _, tid, _, _ in rec.values}
    finals: dict[str, int] = {}
    for _, tid, epochs, _ in rec.values:
        finals[tid] = max(finals.get(tid, 0), epochs)
    full = sum(1 for e in finals.values() if e >= args.max_epochs)
    return {"values": values, "trials": len(trials), "full_trials": full, "wall_s": wall}


def epochs_to_within(values: list[float], target: float) -> int | None:
    """Trial-epochs spent until the running best first came within ``target``."""
    best = float("inf")
    for i, v in enumerate(values, 1):
        best = min(best, v)
        if best <= target:
            return i
    return None


def table(rows: list[dict[str, Any]], arms: list[str]) -> str:
    """The raw per-seed rows, then the median over seeds per arm."""
    lines = [
        "| seed | arm | trials (all epochs) | trial-epochs | best val_mmd | trial-epochs to "
        "within 5% of the best of any arm | trial-epochs to within 5% of random's best | "
        "wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def reach(n: int | None) -> str:
        return "never" if n is None else str(n)

    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['arm']} | {r['trials']} ({r['full_trials']}) | "
            f"{r['trial_epochs']} | {r['best_val_mmd']:.4f} | {reach(r['epochs_to_5pct'])} | "
            f"{reach(r['epochs_to_random_5pct'])} | {r['wall_s']:.0f} |"
        )

    def median(values: list[Any]) -> str:
        if any(v is None for v in values):  # "never" counts as more than any number
            known = sorted(v for v in values if v is not None)
            n_never = len(values) - len(known)
            ordered = known + [None] * n_never
            mid = ordered[(len(ordered) - 1) // 2]
            return reach(mid) if len(ordered) % 2 else f"{reach(mid)}+"
        return f"{statistics.median(values):g}"

    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        lines.append(
            f"| median | {arm} | | {median([r['trial_epochs'] for r in mine])} | "
            f"{statistics.median(r['best_val_mmd'] for r in mine):.4f} | "
            f"{median([r['epochs_to_5pct'] for r in mine])} | "
            f"{median([r['epochs_to_random_5pct'] for r in mine])} | "
            f"{statistics.median(r['wall_s'] for r in mine):.0f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    """Per seed, TPE + ASHA against random search; then the aim, judged on the median seed."""
    out, shares, gaps = [], [], []
    for seed in seeds:
        mine = {r["arm"]: r for r in rows if r["seed"] == seed}
        if "tpe+asha" not in mine or "random" not in mine:
            continue
        a, b = mine["tpe+asha"], mine["random"]
        reach = a["epochs_to_random_5pct"]
        share = (reach if reach is not None else float("inf")) / b["trial_epochs"]
        gap = a["best_val_mmd"] / b["best_val_mmd"] - 1
        shares.append(share)
        gaps.append(gap)
        came = "never came" if reach is None else f"came after {share:.0%} of them"
        out.append(
            f"seed {seed}: tpe+asha spent {a['trial_epochs'] / b['trial_epochs']:.0%} of random "
            f"search's trial-epochs and {came} within 5% of random's best; best "
            f"{a['best_val_mmd']:.4f} vs {b['best_val_mmd']:.4f} ({gap:+.1%})"
        )
    if shares:
        share, gap = statistics.median(shares), statistics.median(gaps)
        met = share <= TARGET_SHARE and gap <= 0
        came = "never" if share == float("inf") else f"after {share:.0%} of its trial-epochs"
        out.append(
            f"median over seeds: tpe+asha within 5% of random's best {came} "
            f"(aim <= {TARGET_SHARE:.0%}), best {gap:+.1%} vs random's (aim <= 0): "
            + ("aim met" if met else "aim NOT met")
        )
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--grace", type=int, default=1, help="ASHA's grace period, epochs")
    p.add_argument(
        "--reduction-factor", type=float, help="ASHA's (default: sweeps.search.REDUCTION_FACTOR)"
    )
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--data", default="digits", help="a data.name from params.yaml")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--md", help="also write the table here")
    args = p.parse_args(argv)

    from pipelines import config as config_mod
    from pipelines import data as data_mod
    from pipelines import ray_runtime
    from sweeps import search

    if args.reduction_factor:
        search.REDUCTION_FACTOR = args.reduction_factor

    cfg = config_mod.load()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=args.data))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        for name, part in data_mod.split(data_mod.build(cfg.data), cfg.data).items():
            data_mod.write_split(folder / f"{name}.parquet", part, seed=cfg.data.seed)
        ray_runtime.init()
        for seed in args.seeds:
            runs = {}
            for arm in args.arms:
                runs[arm] = run_arm(cfg, arm, seed, args, folder, Path(tmp) / "ray")
                print(
                    f"seed {seed} {arm}: {len(runs[arm]['values'])} trial-epochs, best "
                    f"{min(runs[arm]['values']):.4f}, {runs[arm]['wall_s']:.0f} s",
                    flush=True,
                )
            best = min(min(r["values"]) for r in runs.values())
            random_best = min(runs["random"]["values"]) if "random" in runs else best
            for arm, r in runs.items():
                rows.append(
                    {
                        "seed": seed,
                        "arm": arm,
                        "trials": r["trials"],
                        "full_trials": r["full_trials"],
                        "trial_epochs": len(r["values"]),
                        "best_val_mmd": min(r["values"]),
                        "epochs_to_5pct": epochs_to_within(r["values"], 1.05 * best),
                        "epochs_to_random_5pct": epochs_to_within(r["values"], 1.05 * random_best),
                        "wall_s": r["wall_s"],
                        "values": r["values"],
                    }
                )
            if args.json:  # after every seed: a long run interrupted keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=2))
    head = (
        f"sweep efficiency: {args.data}, {args.trials} trials x <= {args.max_epochs} epochs, "
        f"{args.concurrent} at a time, ASHA grace {args.grace} and reduction factor "
        f"{search.REDUCTION_FACTOR:g}, seeds {args.seeds}"
    )
    text = "\n".join([head, "", table(rows, args.arms), "", *verdict(rows, args.seeds)])
    print("\n" + text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
