"""``linearizer cluster-check``: what a running local Ray listens on, and is it loopback only?

A Ray head runs whatever code reaches its GCS, dashboard or client server, so every one of its
listening sockets should be on 127.0.0.1 unless the machine sits on a trusted private network
(docs/cluster.md). This lists the TCP/UDP listening sockets of every local Ray process (and
of its children: workers, agents) and exits 1 naming any that listens elsewhere.

Exit status: 0 all on loopback, 1 something listens outside loopback, 2 no Ray is running.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from pipelines.entry import cli
from pipelines.errors import ServiceError

# Executables Ray starts by name (the C++ servers, and Redis for an external-storage GCS).
RAY_PROCESS_NAMES: tuple[str, ...] = ("gcs_server", "raylet", "plasma_store", "redis-server")
# Python processes of Ray, found by a path or module in their command line: the dashboard and
# its agents, log monitor, autoscaler monitor, client server, runtime-env agent, workers and
# `ray start --block` itself.
RAY_CMDLINE_MARKERS: tuple[str, ...] = (
    "ray/dashboard/",
    "ray/_private/",
    "ray/autoscaler/",
    "ray/util/client/server",
    "ray.util.client.server",
    "ray/scripts/scripts.py",
)


@dataclass(frozen=True)
class Listener:
    """One listening socket: which process holds it, and where it listens."""

    pid: int
    name: str
    address: str
    port: int
    proto: str = "tcp"

    @property
    def endpoint(self) -> str:
        """``address:port``, IPv6 in brackets."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 and ::1 (also as ``::ffff:127.x.y.z``); a wildcard or LAN address is not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def non_loopback(found: Iterable[Listener]) -> list[Listener]:
    """The listeners reachable from another machine (0.0.0.0, ::, or a network address)."""
    return [entry for entry in found if not is_loopback(entry.address)]


def _is_ray(proc: psutil.Process, names: tuple[str, ...]) -> bool:
    try:
        name = proc.name()
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if name in names or name.startswith("ray::"):  # workers rename themselves ray::*
        return True
    if cmdline and (cmdline[0].startswith("ray::") or os.path.basename(cmdline[0]) in names):
        return True
    if any(os.path.basename(arg) == "ray" for arg in cmdline[:2]):  # the `ray` CLI (ray start)
        return True
    return any(marker in arg for arg in cmdline for marker in RAY_CMDLINE_MARKERS)


def _driver_of(proc: psutil.Process) -> int | None:
    """The Python process that started this GCS with ``ray.init()``, if any: it is a Ray core
    worker too (a gRPC listener of its own), though nothing in its command line says Ray."""
    try:
        parent = proc.parent()
        if parent is None or parent.pid == 1:
            return None
        cmdline = parent.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return parent.pid if cmdline and os.path.basename(cmdline[0]).startswith("python") else None


def find_ray_processes(process_names: Iterable[str] = RAY_PROCESS_NAMES) -> list[int]:
    """Pids of this machine's Ray processes (this user's; others' need root to inspect), with
    the driver of an in-process ``ray.init()`` head."""
    names = tuple(process_names)
    me = os.getpid()
    found = {p.pid: p for p in psutil.process_iter() if p.pid != me and _is_ray(p, names)}
    drivers = {_driver_of(p) for p in found.values() if _name(p) == "gcs_server"}
    return sorted((found.keys() | drivers) - {None, me})


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _tree(pids: Iterable[int]) -> dict[int, str]:
    tree: dict[int, str] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for proc in procs:
            try:
                tree[proc.pid] = proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return tree


def _sockets(proc: psutil.Process) -> list:
    method = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
    return method(kind="inet")


def listeners(
    pids: Iterable[int] | None = None, *, process_names: Iterable[str] = RAY_PROCESS_NAMES
) -> list[Listener]:
    """Listening TCP sockets (and bound, unconnected UDP ones) of ``pids`` and their children.

    ``pids=None``: every local Ray process (``find_ray_processes(process_names)``). Sockets a
    process inherited from its parent are listed once, under the lowest pid.
    """
    tree = _tree(find_ray_processes(process_names) if pids is None else pids)
    seen: dict[tuple[str, str, int], Listener] = {}
    for pid, name in sorted(tree.items()):
        try:
            conns = _sockets(psutil.Process(pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for conn in conns:
            tcp = conn.type == socket.SOCK_STREAM
            if (tcp and conn.status != psutil.CONN_LISTEN) or (not tcp and conn.raddr):
                continue
            proto = "tcp" if tcp else "udp"
            key = (proto, conn.laddr.ip, conn.laddr.port)
            seen.setdefault(key, Listener(pid, name, conn.laddr.ip, conn.laddr.port, proto))
    return sorted(seen.values(), key=lambda e: (e.name, e.pid, e.port, e.address))


def table(found: Iterable[Listener]) -> str:
    """A plain-text table of ``found``; ``!`` marks a listener outside loopback."""
    rows = [("", "PID", "PROCESS", "PROTO", "LISTENS ON")]
    rows += [
        ("!" if not is_loopback(e.address) else "", str(e.pid), e.name, e.proto, e.endpoint)
        for e in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cluster-check`` (shared by ``linearizer`` and ``python -m``)."""
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        default=None,
        help="audit this process tree instead of every local Ray (repeatable)",
    )


def check(args: argparse.Namespace) -> int:
    """Print what the local Ray listens on; 1 if anything is outside loopback, else 0.

    No Ray at all is a ``ServiceError`` (exit 2): an audit of nothing must not pass.
    """
    pids = args.pid if args.pid else find_ray_processes()
    found = listeners(pids) if pids else []
    if not found:
        raise ServiceError(
            "no running Ray process found on this machine (gcs_server, raylet, dashboard, ...); "
            "start the head first (docs/cluster.md, `ray start --head ...`) or pass --pid"
        )
    print(table(found))
    exposed = non_loopback(found)
    if not exposed:
        print(f"ok: all {len(found)} listening sockets of the local Ray are on loopback")
        return 0
    for e in exposed:
        print(
            f"not loopback: {e.name} (pid {e.pid}) listens on {e.endpoint}/{e.proto}",
            file=sys.stderr,
        )
    print(
        f"{len(exposed)} of {len(found)} listening sockets can be reached from other machines; "
        "restart the head with the loopback recipe of docs/cluster.md "
        "(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
        "ray start --head --node-ip-address=127.0.0.1 ...), or keep a multi-node cluster on a "
        "firewalled private network",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.commands.cluster_check``: the same as ``linearizer cluster-check``."""
    parser = argparse.ArgumentParser(
        prog="linearizer cluster-check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    code = check(parser.parse_args(argv))
    if code:
        raise SystemExit(code)


run = cli(main)

if __name__ == "__main__":
    run()
