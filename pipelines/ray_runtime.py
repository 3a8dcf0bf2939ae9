"""Starting or joining Ray, safely: loopback by default, clear errors for bad addresses.

No ``RAY_ADDRESS``: a local one-node Ray in-process, bound to 127.0.0.1, that every one of its
processes (this driver, its workers, Ray Train's detached helpers) finds by ``RAY_ADDRESS``
alone, never by looking for Rays on the machine; its workers find the code through
``PYTHONPATH``. With ``RAY_ADDRESS`` (or inside ``ray job submit``): join that cluster, and let
it decide the resources; the code travels with the job (``cluster_runtime_env``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from pipelines import requirements, storage, tracking
from pipelines.config import ROOT
from pipelines.errors import ConfigError, ServiceError

PACKAGES = ("lincore", "pipelines", "sweeps")
"""The project's code a Ray worker imports: shipped to a joined cluster as ``py_modules``."""
PIP_ENV = "LINEARIZER_RUNTIME_PIP"
"""``1``: a joined cluster also installs the project's pinned dependencies in each worker's
runtime env (Ray's ``pip`` plugin; minutes on first use per node). Off by default: the nodes'
own Python is expected to hold them."""

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


# The GCS address that init() put into os.environ["RAY_ADDRESS"] for its local Ray: a later init()
# in this process, after ray.shutdown(), drops it instead of joining a cluster long gone.
_exported_address: str | None = None


def _own_cluster_hook() -> Callable[[], None]:
    """A ``worker_process_setup_hook`` that sets ``RAY_ADDRESS`` in each Ray worker to the GCS it
    is connected to.

    Without it, Ray's State API (``get_address_for_submission_client(None)``, which Ray Train's
    ``PlacementGroupCleaner`` calls from inside its detached actor every second, and its
    ``TrainStateActor`` every 30 s) resolves the cluster in
    ``services.get_ray_address_from_environment``: RAY_ADDRESS, else a psutil scan of every
    raylet on the machine (``find_gcs_addresses``) and the address file under RAY_TMPDIR; with
    a second local pipeline running, the scan finds two GCSes and warns "Found multiple active
    Ray instances ... Connecting to latest cluster" on each call. RAY_TMPDIR keeps the file
    ours, but nothing but RAY_ADDRESS skips the scan. The GCS port is only known once ray.init()
    has started the node, after the raylet (whose environment the workers inherit) has started:
    so each worker sets it itself, as it starts. A nested function, so that Ray pickles it by
    value: workers run it without importing this module (and torch with it).
    """

    def pin_own_gcs_address() -> None:
        import os

        import ray

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address

    return pin_own_gcs_address


CLIENT_ENV = (*tracking.MLFLOW_ENV, *storage.S3_ENV)
"""The client settings (credentials included) that Ray workers on other nodes need and do not
inherit: the MLflow client's (rank 0 logs each epoch to a server behind auth) and the S3
client's (the data and the checkpoints under ``train.storage_path``)."""


def client_env() -> dict[str, str]:
    """The ones of ``CLIENT_ENV`` set in this process."""
    return {k: os.environ[k] for k in CLIENT_ENV if k in os.environ}


def cluster_runtime_env() -> dict[str, Any]:
    """The runtime env of a driver joining a cluster through ``RAY_ADDRESS``.

    Code: ``lincore``, ``pipelines`` and ``sweeps`` as ``py_modules``: Ray zips each folder
    (``__pycache__`` left out), uploads it to the cluster's GCS once per content hash, and puts it
    on every worker's ``sys.path``; a ``PYTHONPATH`` naming this checkout would mean nothing on
    another node. Settings: workers on other nodes do not inherit this process's environment, so
    it hands them the MLflow client's settings (rank 0 logs each epoch to a server behind auth)
    and the S3 ones (the endpoint of ``train.storage_path`` and of the prepared data)."""
    env: dict[str, Any] = {
        "py_modules": [str(ROOT / name) for name in PACKAGES],
        "excludes": ["__pycache__/", "*.pyc"],
        "env_vars": client_env(),
    }
    if os.environ.get(PIP_ENV) == "1":
        env["pip"] = requirements.pinned()
    return env


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
    cleaner cannot see a dead controller and leaks resources.
    """
    import ray

    global _exported_address
    if ray.is_initialized():
        return
    if _exported_address is not None and os.environ.get("RAY_ADDRESS") == _exported_address:
        del os.environ["RAY_ADDRESS"]  # ours, for a local Ray since shut down: start a new one
    _exported_address = None
    address = os.environ.get("RAY_ADDRESS")
    runtime_env: dict[str, Any] | None = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    if address:
        runtime_env = cluster_runtime_env()
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
            raise ServiceError(
                f"cannot join the Ray cluster at {address}: {' '.join(str(err).split())} (a "
                "cluster with token auth also needs RAY_AUTH_MODE=token and its token in "
                "RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from None
        return
    # A temp folder of its own (inherited by every Ray process it starts): two local pipelines on
    # one machine, or one after a `ray start` cluster, then never read each other's address
    # file (/tmp/ray/ray_current_cluster), see below.
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="lzr-", dir="/tmp"))
    # ... and every worker (Ray Train's placement-group cleaner among them) names its own GCS in
    # RAY_ADDRESS, so that Ray's State API never scans the machine for Rays (_own_cluster_hook)
    runtime_env["worker_process_setup_hook"] = _own_cluster_hook()
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count() or 1,
        resources=resources or None,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    gcs_address = ray.get_runtime_context().gcs_address
    # Ray's State API, which Ray Train's placement-group cleaner calls from inside its actors,
    # finds the cluster through <RAY_TMPDIR>/ray/ray_current_cluster when RAY_ADDRESS is unset,
    # and only `ray start` writes that file: another cluster's address there kills the cleaner,
    # placement groups of stopped trials leak and the next trial waits forever.
    # Ray's CLI (`ray status` with this RAY_TMPDIR) reads it too.
    from ray._private.utils import write_ray_address

    write_ray_address(gcs_address)
    # this driver, too, then resolves its own Ray without a scan (`ray.util.state` calls here)
    os.environ["RAY_ADDRESS"] = _exported_address = gcs_address


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
