"""What a lost training worker costs: Ray Train on a two-node Ray cluster on this machine, the
training worker process SIGKILLed mid-training, against the same run undisturbed.

    python -m benchmarks.faults [--epochs 6] [--kill-after 2] [--json out.json]

Both runs use a local multi-node cluster (``ray.cluster_utils.Cluster`` on 127.0.0.1): a head with
no CPUs and a 1-CPU worker node that holds the one training worker. In the disturbed run the
worker process is killed without warning once epoch ``--kill-after`` is checkpointed; Ray Train
(``FailureConfig``) restarts the worker group from the latest checkpoint. Prints the epochs
trained, the wall-clock cost, and how far the final metrics are from the undisturbed run (each
epoch's randomness depends only on (seed, rank, epoch), so a resume retraces the run).
(Removing the whole worker node and adding a replacement left Ray Train 2.60 timing out on
worker-group start-up here; see the closing note of issue 8.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # nodes on 127.0.0.1


def _parent(pid: int) -> int:
    """The parent PID from ``/proc/<pid>/stat`` (0 once the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces


def _train_worker_pids(root: int) -> list[int]:
    """PIDs of live Ray Train worker processes (``ray::RayTrainWorker``) under process ``root``
    (this cluster's worker-node raylet): another Ray on the machine (a test beside this one)
    keeps its workers."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" not in cmdline:
            continue
        pid = ancestor = int(proc.name)
        while ancestor > 1 and ancestor != root:
            ancestor = _parent(ancestor)
        if ancestor == root:
            pids.append(pid)
    return pids


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_once(cfg: Any, data: Path, storage: Path, kill_after: int | None) -> dict[str, Any]:
    """One training run on a fresh two-node cluster; kills the training worker if asked."""
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.training.driver import run as run_training
    from pipelines.training.driver import unique_run_name
    from pipelines.training.state import load_result_state, load_state_dir

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": _free_port(),
        },
    )
    node = cluster.add_node(num_cpus=1)
    raylet = node.all_processes["raylet"][0].process.pid  # the training worker's ancestor
    os.environ["RAY_ADDRESS"] = cluster.address  # Ray's own helpers must not pick another Ray
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    name = unique_run_name("faults")
    events: dict[str, float] = {}

    def reached(run_dir: Path) -> bool:
        for ckpt in run_dir.glob("checkpoint_*"):
            try:
                if int(load_state_dir(ckpt)["epoch"]) >= kill_after:
                    return True
            except (OSError, RuntimeError, KeyError, EOFError):
                continue  # being written
        return False

    def killer() -> None:
        while not reached(storage / name) and "done" not in events:
            time.sleep(0.2)
        if "done" in events:
            return
        events["killed_at"] = time.perf_counter()
        pids = _train_worker_pids(raylet)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the worker dies mid-training, without warning
        events["workers_killed"] = len(pids)

    watcher = threading.Thread(target=killer, daemon=True) if kill_after is not None else None
    t0 = time.perf_counter()
    if watcher:
        watcher.start()
    try:
        result = run_training(cfg, data / "train.parquet", data / "val.parquet", run_name=name)
    finally:
        events["done"] = time.perf_counter()
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
    state = load_result_state(result)
    history = state["history"]
    trained = sorted((storage / name).glob("checkpoint_*"))
    return {
        "wall_s": events["done"] - t0,
        "killed": "killed_at" in events,
        "workers_killed": int(events.get("workers_killed", 0)),
        "epochs": len(history),
        "final": {k: float(history[-1][k]) for k in ("train_loss", "val_loss", "val_mmd")},
        "checkpoints_kept": len(trained),
        "epoch_seconds": [float(h["epoch_seconds"]) for h in history],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--kill-after", type=int, default=2, help="epoch (0-based) checkpointed first")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    from pipelines import config as config_mod
    from pipelines import data as data_mod

    raw = {
        "data": {"name": "moons", "n_samples": 2000},
        "model": {"rank": 2, "depth": 3, "hidden": 32, "operator_hidden": 32},
        "train": {"epochs": args.epochs, "batch_size": 128, "num_workers": 1, "max_failures": 3},
        "evaluate": {"steps": 20},
    }
    cfg = config_mod.parse(raw)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for name, part in data_mod.split(data_mod.build(cfg.data), cfg.data).items():
            data_mod.write_split(data / f"{name}.parquet", part, seed=0)
        storage = Path(tmp) / "ray"
        train = dataclasses.replace(cfg.train, storage_path=str(storage))
        cfg = dataclasses.replace(cfg, train=train)
        clean = train_once(cfg, data, storage, None)
        hit = train_once(cfg, data, storage, args.kill_after)
    gap = max(abs(hit["final"][k] - v) / max(abs(v), 1e-12) for k, v in clean["final"].items())
    out = {
        "clean": clean,
        "disturbed": hit,
        "max_relative_metric_gap": gap,
        "extra_wall_s": hit["wall_s"] - clean["wall_s"],
    }
    print("\ntraining worker killed after epoch", args.kill_after, "of", args.epochs, "\n")
    print("| run | worker killed | epochs in history | wall s | final val_loss | final val_mmd |")
    print("|---|---|---|---|---|---|")
    for label, r in (("undisturbed", clean), ("worker killed", hit)):
        print(
            f"| {label} | {r['killed']} | {r['epochs']} | {r['wall_s']:.1f} | "
            f"{r['final']['val_loss']:.6f} | {r['final']['val_mmd']:.6f} |"
        )
    print(
        f"\nextra wall clock: {out['extra_wall_s']:.1f} s; work lost: at most the epoch in "
        "flight (checkpoint every epoch)"
    )
    print(f"max relative gap in final metrics: {gap:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
