# SPDX-License-Identifier: MIT
"""Load: 10,000 UDP flows through one guest link, memory bounded, the flow limit refusing cleanly.

Handler level (tap.GuestLink with the service's handlers, tests/fuzz/targets.FrameRig) in a
private network namespace, host side a UDP echo socket on 127.0.0.1. The numbers (RSS growth per
flow, descriptors) are printed; run with -s to see them. PASST_PY_LOAD_FLOWS changes the count.
"""
from __future__ import annotations

import gc
import os
import resource
import socket
import struct
import time

import pytest

from tests.conftest import qemu_unavailable
from tests.frames import tcp4_frame, udp4_frame
from tests.fuzz import netns_guard, targets

FLOWS = int(os.environ.get("PASST_PY_LOAD_FLOWS", "10000"))
ECHO = 9


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds() -> int:
    """Open descriptors of this process (after collecting garbage other tests left behind)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def netns():
    if not netns_guard.available():
        qemu_unavailable("needs a private network namespace (root or a user namespace)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOWS + 512
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        with netns_guard.private_netns():
            yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_ten_thousand_udp_flows_then_all_cleaned_up(netns):
    """10,000 guest UDP tuples become 10,000 flows reaching the host; memory per flow stays
    small; closing them releases every socket."""
    rig = targets.FrameRig(max_flows=FLOWS + 100)
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", ECHO))
    echo.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    echo.setblocking(False)
    try:
        fd0, rss0 = fds(), rss_kib()
        start = time.monotonic()
        received = 0
        for base in range(0, FLOWS, 256):
            batch = [udp4_frame(10000 + i, ECHO, b"load")
                     for i in range(base, min(FLOWS, base + 256))]
            rig.feed(batch, spins=1)
            while True:
                try:
                    echo.recvfrom(64)
                    received += 1
                except BlockingIOError:
                    break
        elapsed = time.monotonic() - start
        fd1, rss1 = fds(), rss_kib()
        per_flow = (rss1 - rss0) * 1024 / FLOWS
        print(f"\n{FLOWS} UDP flows in {elapsed:.2f} s; datagrams at host {received}; "
              f"fds +{fd1 - fd0}; RSS {rss0} -> {rss1} KiB ({per_flow:.0f} B/flow)")
        assert len(rig.flows) == FLOWS
        assert received >= FLOWS * 0.99
        assert abs(fd1 - fd0 - FLOWS) <= 8       # one socket per flow (give or take strays)
        assert per_flow < 8192, "more than 8 KiB of memory per UDP flow"
        rig.udp.close_all()
        assert len(rig.flows) == 0
        assert fds() <= fd0
    finally:
        echo.close()
        rig.close()


def test_flow_limit_refuses_new_flows_cleanly(netns):
    """At --max-flows the next tuples are refused with an ICMP error to the guest; flows that
    exist keep working and nothing leaks."""
    limit = 100
    rig = targets.FrameRig(max_flows=limit)
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", ECHO))
    echo.setblocking(False)
    try:
        fd0 = fds()
        out: list[bytes] = []
        for base in range(0, 1000, 100):
            out += rig.feed([udp4_frame(30000 + i, ECHO, b"load")
                             for i in range(base, base + 100)], spins=1)
        assert len(rig.flows) == limit
        assert rig.flows.refused_total == 900
        icmp_errors = [f for f in out if f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 3]
        assert len(icmp_errors) == 900
        assert abs(fds() - fd0 - limit) <= 8
        drained = 0
        while True:
            try:
                echo.recvfrom(64)
                drained += 1
            except BlockingIOError:
                break
        assert drained == limit
        # an existing flow still carries traffic
        rig.feed([udp4_frame(30000, ECHO, b"load")], spins=1)
        assert echo.recvfrom(64)[0] == b"load"
    finally:
        echo.close()
        rig.close()


def test_ten_thousand_tcp_connections(netns):
    """10,000 guest connections to one host listener get established (SYN, SYN-ACK, ACK),
    memory per connection stays small, and closing them releases every socket."""
    try:
        with open("/proc/sys/net/core/somaxconn", "w") as f:   # this namespace's only
            f.write(str(FLOWS + 1024))
    except OSError:
        pass
    rig = targets.FrameRig(max_flows=FLOWS + 100)
    assert rig.tcp is not None
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", ECHO))
    lsock.listen(FLOWS + 1024)     # connections complete in the backlog, never accepted
    try:
        fd0, rss0 = fds(), rss_kib()
        start = time.monotonic()
        synacks: dict[int, int] = {}
        for base in range(0, FLOWS, 256):
            batch = [tcp4_frame(10000 + i, ECHO, 0x02, 1000 * i)
                     for i in range(base, min(FLOWS, base + 256))]
            out = rig.feed(batch, spins=2)
            for f in out:
                if f[47] & 0x12 == 0x12:
                    synacks[struct.unpack_from("!H", f, 36)[0]] = struct.unpack_from("!I", f,
                                                                                     38)[0]
        deadline = time.monotonic() + 30
        while len(synacks) < FLOWS and time.monotonic() < deadline:
            rig.out = []
            rig.loop.run_once(0.05)
            rig.loop.run_once(0)
            for f in rig.out:
                if len(f) >= 54 and f[47] & 0x12 == 0x12:
                    synacks[struct.unpack_from("!H", f, 36)[0]] = struct.unpack_from("!I", f,
                                                                                     38)[0]
        assert len(synacks) == FLOWS, f"only {len(synacks)} SYN-ACKs"
        acks = [tcp4_frame(port, ECHO, 0x10, 1000 * (port - 10000) + 1, isn + 1)
                for port, isn in synacks.items()]
        for base in range(0, len(acks), 256):
            rig.feed(acks[base:base + 256], spins=1)
        elapsed = time.monotonic() - start
        fd1, rss1 = fds(), rss_kib()
        from passt_py.tcp.handler import Phase
        established = sum(1 for flow in rig.tcp.connections()
                          if flow.data.st.phase == Phase.ESTABLISHED)
        per_conn = (rss1 - rss0) * 1024 / FLOWS
        print(f"\n{FLOWS} TCP connections in {elapsed:.2f} s, {established} established; "
              f"fds +{fd1 - fd0}; RSS {rss0} -> {rss1} KiB ({per_conn:.0f} B/connection)")
        assert established == FLOWS
        assert abs(fd1 - fd0 - FLOWS) <= 8
        assert per_conn < 16384, "more than 16 KiB of memory per TCP connection"
        rig.tcp.close_all()
        assert len(rig.flows) == 0
        assert fds() <= fd0
    finally:
        lsock.close()
        rig.close()
