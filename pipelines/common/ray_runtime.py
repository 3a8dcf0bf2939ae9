"""Starting or joining Ray, safely: loopback by default, clear errors for bad addresses.

No ``RAY_ADDRESS``: a local one-node Ray in-process, bound to 127.0.0.1. With ``RAY_ADDRESS``
(or inside ``ray job submit``): join that cluster, and let it decide the resources.
"""

from __future__ import annotations

import os
import socket
import tempfile
from urllib.parse import urlparse

from pipelines.common import tracking
from pipelines.common.config import ROOT
from pipelines.common.errors import ConfigError, ServiceError

# What keeps a Ray head started on this machine (ray.init() here, or the README's `ray start
# --head --node-ip-address=127.0.0.1`) on 127.0.0.1 only. With it, services.get_node_ip_address()
# answers 127.0.0.1, so `ray start` no longer rewrites --node-ip-address=127.0.0.1 into the
# eth0 address (scripts.py: resolve_ip_for_localhost), and every server then binds loopback:
# GCS, raylet and object manager (C++: listen_to_localhost_only = node ip == "127.0.0.1"),
# client server, dashboard agent, runtime-env agent and the metrics exporters (is_localhost).
# Its price: such a head takes no other node (its GCS is on loopback), see README.
LOOPBACK_ENV: dict[str, str] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# Ray reads these when it is first imported (ray_constants.ENABLE_RAY_CLUSTER), so they are set
# here, at import, not inside init().
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
for _key, _value in LOOPBACK_ENV.items():
    os.environ.setdefault(_key, _value)


def _reachable(address: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        return True  # "auto" and friends: let Ray resolve them
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            return True
    except OSError:
        return False


def init(*, num_cpus: int | None = None, dashboard: bool = True, **resources: float) -> None:
    """Start (or join) Ray once per process.

    The dashboard stays on (127.0.0.1 only): without its State API, Ray Train's placement-group
    cleaner cannot see a dead controller and leaks resources (STACK.md §9.7).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    if address:
        # workers on other nodes do not inherit this process's environment: hand them the
        # MLflow client's settings, so that rank 0 can log each epoch to a server behind auth
        runtime_env["env_vars"].update(tracking.client_env())
        if not _reachable(address):
            raise ServiceError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={address}; check `ray status` on "
                "the head node, or unset RAY_ADDRESS to run on a local Ray"
            )
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:  # a `ray job submit` driver: keep the
            runtime_env = None  # job's own runtime env (its --working-dir reaches every node)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ServiceError(f"cannot join the Ray cluster at {address}: {err}") from None
        return
    # A temp folder of its own (inherited by every Ray process it starts): two local pipelines on
    # one machine, or one after a `ray start` cluster, then never read each other's address
    # file (/tmp/ray/ray_current_cluster), see below.
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="lzr-", dir="/tmp"))
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count() or 1,
        resources=resources or None,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    # Ray's State API, which Ray Train's placement-group cleaner calls from inside its actors,
    # finds the cluster through <RAY_TMPDIR>/ray/ray_current_cluster, and only `ray start`
    # writes that file: another cluster's address there kills the cleaner, placement groups of
    # stopped trials leak and the next trial waits forever (STACK.md §9.7).
    from ray._private.utils import write_ray_address

    write_ray_address(ray.get_runtime_context().gcs_address)


def check_workers(num_workers: int, use_gpu: bool) -> None:
    """``num_workers`` Ray Train workers need as many CPUs (and GPUs) as Ray has."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    if num_workers > cpus:
        raise ConfigError(
            f"train.num_workers={num_workers} but Ray has {cpus} CPUs; lower train.num_workers "
            "or add nodes to the cluster"
        )
    if use_gpu and num_workers > gpus:
        raise ConfigError(
            f"train.use_gpu is true with {num_workers} workers but Ray sees {gpus} GPUs; "
            "set use_gpu: false or lower num_workers"
        )
