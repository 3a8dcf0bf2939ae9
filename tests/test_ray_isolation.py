"""Two local pipelines at once on one machine each talk only to their own Ray (issue 17).

Two processes start a local Ray each with ``ray_runtime.init`` (as the train stage does, each
with a temp folder of its own) and, while both Rays are up, resolve "the" Ray cluster the way
Ray's State API does with no address given (``canonicalize_bootstrap_address_or_die(None)``):
in the driver, in a task and inside a Ray Train worker, whose ``TorchTrainer`` run also starts
the placement-group cleaner, a detached actor that calls the State API every second. Each must
name its own GCS, and no process may fall back to scanning the machine for raylets: Ray warns
"Found multiple active Ray instances" when that scan sees the other pipeline's Ray.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from test_pipeline_e2e import clean_env

from pipelines.config import ROOT

WARNING = "Found multiple active Ray instances"

PIPELINE = r"""
import json, logging, os, sys, time
from pathlib import Path

from pipelines import ray_runtime

ray_runtime.init(num_cpus=1)

import ray
from ray._private import services

meet, me = Path(sys.argv[1]), sys.argv[2]
own = ray.get_runtime_context().gcs_address
print("tmp", os.environ["RAY_TMPDIR"], flush=True)


def together(step):  # both pipelines' Rays are up past this point
    (meet / f"{me}.{step}").touch()
    deadline = time.monotonic() + 120
    while len(list(meet.glob(f"*.{step}"))) < 2:
        assert time.monotonic() < deadline, f"the other pipeline never reached {step}"
        time.sleep(0.2)


def resolve():
    # the State API's lookup with no address (dashboard.utils.ray_address_to_api_server_url),
    # and what Ray logs while doing it
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("ray._private.services")
    log.addHandler(handler)
    try:
        address = services.canonicalize_bootstrap_address_or_die(None)
    finally:
        log.removeHandler(handler)
    return {"address": address, "env": os.environ.get("RAY_ADDRESS"), "log": seen}


def train_loop():
    time.sleep(1)  # the cleaner has checked its controller every second since the run began
    (meet / f"{me}.worker.json").write_text(json.dumps(resolve()))


together("up")
said = {"own": own, "driver": resolve(), "task": ray.get(ray.remote(num_cpus=0)(resolve).remote())}
from ray.train.torch import TorchTrainer

TorchTrainer(
    train_loop,
    scaling_config=ray.train.ScalingConfig(num_workers=1),
    run_config=ray.train.RunConfig(name=me, storage_path=str(meet / me)),
).fit()
said["train_worker"] = json.loads((meet / f"{me}.worker.json").read_text())
together("trained")
time.sleep(1)  # the last lines of the cleaner's log reach this driver
print("said", json.dumps(said), flush=True)
ray.shutdown()
"""


@pytest.mark.slow
def test_two_local_pipelines_at_once_each_talk_only_to_their_own_ray(tmp_path):
    env = {k: v for k, v in clean_env().items() if k != "RAY_TMPDIR"}
    env["PYTHONPATH"] = str(ROOT)
    procs = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()  # each its own working folder, as two clones would be
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", PIPELINE, str(tmp_path), name],
            cwd=tmp_path / name,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outs = {}
    try:
        for name, proc in procs.items():
            outs[name] = proc.communicate(timeout=150)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    said = {}
    for name, out in outs.items():
        lines = dict(
            ln.split(" ", 1) for ln in out.splitlines() if ln.startswith(("tmp ", "said "))
        )
        if lines.get("tmp", "").startswith("/tmp/lzr-"):
            shutil.rmtree(lines["tmp"], ignore_errors=True)
        assert procs[name].returncode == 0 and "said" in lines, out[-4000:]
        said[name] = json.loads(lines["said"])
        print(name, json.dumps(said[name], indent=1))
    assert said["a"]["own"] != said["b"]["own"]  # two Rays, at the same time
    for name, out in outs.items():
        own = said[name]["own"]
        for where in ("driver", "task", "train_worker"):
            got = said[name][where]
            assert got["address"] == own, (name, where, got)
            assert got["env"] == own, (name, where, got)  # named, not looked for
            assert not got["log"], (name, where, got)
        assert WARNING not in out, out[-4000:]  # nor by the placement-group cleaner
