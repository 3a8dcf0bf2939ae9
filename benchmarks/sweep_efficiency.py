"""Does Optuna TPE + ASHA find as good a model as random search with fewer trial-epochs?

    python -m benchmarks.sweep_efficiency [--trials 8] [--max-epochs 6] [--seeds 0 1]
                                          [--data digits] [--json out.json]

Both arms search ``sweep.space`` from params.yaml with the same trial budget, the same
``max_epochs`` and the same seed, one trial at a time (so "trial-epochs so far" is well defined):

- ``tpe+asha``: Optuna's TPE sampler, ASHA stopping (grace 1 epoch, reduction factor 2);
- ``random``: Ray Tune's random search, every trial runs all its epochs.

For each seed it prints the best ``val_mmd`` (one-step samples vs validation data) each arm
reached, the trial-epochs it spent, and the trial-epochs it needed to come within 5% of the best
value either arm found. Aim: the same best value with at most 40% of the trial-epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

ARMS = {"tpe+asha": ("optuna", "asha"), "random": ("random", "none")}


def run_arm(
    cfg: Any, arm: str, seed: int, trials: int, epochs: int, data: Path, storage: Path
) -> dict[str, Any]:
    """One search; returns its per-epoch objective values in the order they were reported."""
    from sweeps.search import fit

    search, scheduler = ARMS[arm]
    sweep = dataclasses.replace(
        cfg.sweep,
        search=search,
        scheduler=scheduler,
        num_samples=trials,
        max_epochs=epochs,
        max_concurrent_trials=1,
        workers_per_trial=0,
        seed=seed,
        objectives="single",
    )
    c = dataclasses.replace(cfg, sweep=sweep)
    t0 = time.perf_counter()
    grid = fit(c, storage / f"{arm}-{seed}", data / "train.parquet", data / "val.parquet")
    wall = time.perf_counter() - t0
    frames = [r.metrics_dataframe for r in grid if r.metrics_dataframe is not None]
    frames.sort(key=lambda df: float(df["timestamp"].min()))  # one trial at a time: start order
    values = [float(v) for df in frames for v in df.sort_values("training_iteration")[sweep.metric]]
    return {"values": values, "trials": len(frames), "wall_s": wall}


def epochs_to_within(values: list[float], target: float) -> int | None:
    """Trial-epochs spent until the running best first came within ``target``."""
    best = float("inf")
    for i, v in enumerate(values, 1):
        best = min(best, v)
        if best <= target:
            return i
    return None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", default="digits", help="a data.name from params.yaml")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    from pipelines.common import config as config_mod
    from pipelines.common import data as data_mod
    from pipelines.common import ray_runtime

    cfg = config_mod.load()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=args.data))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        for name, part in data_mod.split(data_mod.build(cfg.data), cfg.data).items():
            data_mod.write_split(folder / f"{name}.parquet", part, seed=cfg.data.seed)
        ray_runtime.init()
        for seed in args.seeds:
            runs = {
                arm: run_arm(
                    cfg, arm, seed, args.trials, args.max_epochs, folder, Path(tmp) / "ray"
                )
                for arm in ARMS
            }
            best = min(min(r["values"]) for r in runs.values())
            for arm, r in runs.items():
                rows.append(
                    {
                        "seed": seed,
                        "arm": arm,
                        "trials": r["trials"],
                        "trial_epochs": len(r["values"]),
                        "best_val_mmd": min(r["values"]),
                        "epochs_to_5pct": epochs_to_within(r["values"], 1.05 * best),
                        "wall_s": r["wall_s"],
                    }
                )
    print(
        f"\nsweep efficiency: {args.data}, {args.trials} trials x <= {args.max_epochs} epochs, "
        "one trial at a time\n"
    )
    print(
        "| seed | arm | trials | trial-epochs | best val_mmd | trial-epochs to within 5% "
        "of best | wall s |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        reach = r["epochs_to_5pct"] if r["epochs_to_5pct"] is not None else "never"
        print(
            f"| {r['seed']} | {r['arm']} | {r['trials']} | {r['trial_epochs']} | "
            f"{r['best_val_mmd']:.4f} | {reach} | {r['wall_s']:.0f} |"
        )
    for seed in args.seeds:
        a, b = (next(r for r in rows if r["seed"] == seed and r["arm"] == arm) for arm in ARMS)
        share = a["trial_epochs"] / b["trial_epochs"]
        print(
            f"seed {seed}: tpe+asha used {share:.0%} of random search's trial-epochs; "
            f"best {a['best_val_mmd']:.4f} vs {b['best_val_mmd']:.4f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
