# SPDX-License-Identifier: MIT
"""Throw-away network namespaces for tests: a "host" with a default route, and its gateway.

``with netns() as ns:`` creates namespace ``ns`` holding ``veth0`` with the host addresses
(10.200.0.2/24, fd00:200::2/64 by default) and IPv4/IPv6 default routes via the gateway
addresses, which live on ``veth1`` in a second namespace ``ns + "-gw"``, so the gateway really
answers. Optionally ``/etc/netns/<ns>/resolv.conf`` is written, which ``ip netns exec`` mounts
over /etc/resolv.conf. Everything is deleted on exit, also when the body raises. These
addresses exist only inside the namespaces; nothing is added to the caller's namespace.

Requires root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2's ``ip``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from typing import Any, Iterator, Sequence

IP = "ip"
HOST_IF = "veth0"
GW_IF = "veth1"
NETNS_ETC = "/etc/netns"
_counter = itertools.count()


def available() -> bool:
    """Whether this process can create network namespaces (root and iproute2 present)."""
    return os.geteuid() == 0 and shutil.which(IP) is not None


def _ip(*args: str) -> None:
    """Run one ``ip`` command, raising with its stderr on failure."""
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed to run inside namespace ``ns``."""
    return [IP, "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``ns`` and wait for it (text mode, output captured)."""
    return subprocess.run(exec_argv(ns, argv), capture_output=True, text=True, timeout=timeout)


def popen_in(ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` inside ``ns``; the caller stops it by PID (terminate/kill + wait)."""
    return subprocess.Popen(exec_argv(ns, argv), **kwargs)


def _delete(ns: str) -> None:
    """Remove a namespace if it exists; never raises."""
    subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=10)


@contextlib.contextmanager
def netns(
    name: str | None = None,
    host4: str | None = "10.200.0.2/24",
    gw4: str | None = "10.200.0.1",
    host6: str | None = "fd00:200::2/64",
    gw6: str | None = "fd00:200::1",
    mtu: int = 1500,
    resolv_conf: str | None = None,
) -> Iterator[str]:
    """Create the namespace pair; yields the host namespace's name. None skips a family."""
    ns = name or f"pptest-{os.getpid()}-{next(_counter)}"
    gw_ns = f"{ns}-gw"
    etc_dir = os.path.join(NETNS_ETC, ns)
    made_etc = not os.path.isdir(NETNS_ETC)
    try:
        _ip("netns", "add", ns)
        _ip("netns", "add", gw_ns)
        _ip("-n", ns, "link", "add", HOST_IF, "mtu", str(mtu), "type", "veth",
            "peer", "name", GW_IF, "netns", gw_ns, "mtu", str(mtu))
        for space, ifname in ((ns, HOST_IF), (gw_ns, GW_IF)):
            _ip("-n", space, "link", "set", "lo", "up")
        if host4:
            _ip("-n", ns, "addr", "add", host4, "dev", HOST_IF)
        if host6:
            _ip("-n", ns, "addr", "add", host6, "dev", HOST_IF, "nodad")
        if gw4 and host4:
            plen = host4.partition("/")[2] or "24"
            _ip("-n", gw_ns, "addr", "add", f"{gw4}/{plen}", "dev", GW_IF)
        if gw6 and host6:
            plen = host6.partition("/")[2] or "64"
            _ip("-n", gw_ns, "addr", "add", f"{gw6}/{plen}", "dev", GW_IF, "nodad")
        _ip("-n", ns, "link", "set", HOST_IF, "up")
        _ip("-n", gw_ns, "link", "set", GW_IF, "up")
        if gw4 and host4:
            _ip("-n", ns, "route", "add", "default", "via", gw4, "dev", HOST_IF)
        if gw6 and host6:
            _ip("-n", ns, "-6", "route", "add", "default", "via", gw6, "dev", HOST_IF)
        if resolv_conf is not None:
            os.makedirs(etc_dir, exist_ok=True)
            with open(os.path.join(etc_dir, "resolv.conf"), "w", encoding="utf-8") as f:
                f.write(resolv_conf)
        yield ns
    finally:
        _delete(gw_ns)
        _delete(ns)
        if resolv_conf is not None:
            shutil.rmtree(etc_dir, ignore_errors=True)
            if made_etc:
                with contextlib.suppress(OSError):
                    os.rmdir(NETNS_ETC)  # only succeeds while empty


def exists(ns: str) -> bool:
    """Whether namespace ``ns`` is currently present."""
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return any(line.split()[0] == ns for line in out.splitlines() if line.strip())


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Sockets made in the body (by this thread) belong to network namespace ``name``."""
    from pyroute2.netns import popns, pushns
    pushns(name)
    try:
        yield
    finally:
        popns()
