# SPDX-License-Identifier: MIT
"""Migration costs: state save/load time for 1/100/1000 TCP flows with queued data, and the
downtime QEMU reports for a live migration with passt-py next to the real passt, same run.

Save = source pre (freeze, repair mode) + building the stream; load = reading, validating and
rebuilding every connection (TCP_REPAIR restore + adoption by the TCP handler). Each connection
carries 4 KiB the guest has not acknowledged and 4 KiB the host has not read. Run with:
    sudo python -m pytest bench/bench_migrate.py -q
(root: TCP_REPAIR and network namespaces).
"""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from l4_helpers import GW4  # noqa: E402
from tcp_peer import GuestPeer, TcpEnv  # noqa: E402

import passt_py.udp  # noqa: E402,F401 - registers the ping and UDP sections every stream has
from passt_py.migrate import repair as tcp_repair  # noqa: E402
from passt_py.migrate.context import MigrationContext  # noqa: E402
from passt_py.migrate.source import Source  # noqa: E402
from passt_py.migrate.target import load_bytes  # noqa: E402

QUEUED = 4096


def _ctx(env: TcpEnv) -> MigrationContext:
    return MigrationContext(loop=env.loop, view=env.view, guest=env.guest,
                            flows=env.flows, tcp=env.tcp,
                            repair=tcp_repair.RepairControl(), migrate_exit=True)


def _connections(n: int) -> tuple[TcpEnv, list[GuestPeer], list[socket.socket]]:
    """``n`` established connections, each with unacked data to the guest and unread data
    for the host."""
    env = TcpEnv(max_flows=n + 64)
    lst = env.listener(4)
    port = lst.getsockname()[1]
    peers = [GuestPeer(env, 4, 20000 + i, GW4, port) for i in range(n)]
    for p in peers:
        p.syn()
    hosts: list[socket.socket] = []

    def accept_all() -> bool:
        while True:
            try:
                s, _ = lst.accept()
            except BlockingIOError:
                break
            s.setblocking(False)
            hosts.append(s)
        return len(hosts) == n and all(p.established for p in peers)
    assert env.pump(accept_all, 120), f"{len(hosts)} of {n} accepted"
    env.socks += hosts
    for p in peers:
        p.auto_ack = False
        p.drop = lambda rec: True
        p.send_stream(b"g" * QUEUED)
    for s in hosts:
        s.sendall(b"h" * QUEUED)
    env.pump(lambda: False, 0.3 + n / 2000)
    return env, peers, hosts


def _save_load(n: int) -> dict:
    src, peers, hosts = _connections(n)
    dst = TcpEnv(max_flows=n + 64)
    try:
        t0 = time.perf_counter()
        source = Source(_ctx(src))
        source.pre()
        data = b"".join(source.sections())
        t1 = time.perf_counter()
        source.post()
        for key, peer in list(src.peers.items()):
            peer.env = dst
            dst.peers[key] = peer
        t2 = time.perf_counter()
        report = load_bytes(_ctx(dst), data)
        t3 = time.perf_counter()
        assert report.tcp == source.report.tcp == n and report.failed == 0
        return {"flows": n, "save_ms": round((t1 - t0) * 1e3, 2),
                "load_ms": round((t3 - t2) * 1e3, 2), "stream_bytes": len(data)}
    finally:
        dst.close()
        src.close()
        for s in hosts:
            s.close()


@pytest.mark.skipif(not tcp_repair.direct_repair_allowed(), reason="needs CAP_NET_ADMIN")
@pytest.mark.parametrize("flows", [1, 100, 1000])
def test_state_save_load_tcp_flows(benchmark, flows: int) -> None:
    """Save + load of ``flows`` TCP connections with queued data both ways."""
    results: list[dict] = []

    def run() -> None:
        results.append(_save_load(flows))
    benchmark.pedantic(run, rounds=3 if flows < 1000 else 2, iterations=1)
    best = min(results, key=lambda r: r["save_ms"] + r["load_ms"])
    benchmark.extra_info.update(best)
    print(f"\n{flows} TCP flows: save {best['save_ms']} ms, load {best['load_ms']} ms, "
          f"stream {best['stream_bytes']} bytes")


# ---- QEMU-reported downtime, passt-py and the real passt in the same run ----

def _guest_downtime(factory, netns: str, image) -> dict:
    from tests.guest.boot import boot_guest
    from tests.guest.boot import migrate as qmp_migrate
    with boot_guest(factory, netns, image=image, name="src") as src:
        src.wait_dhcp(timeout=60)
        uri = f"unix:{src.workdir / 'migrate.sock'}"
        with boot_guest(factory, netns, image=image, name="dst", incoming=uri) as dst:
            info = qmp_migrate(src, dst, uri, timeout=120)
            dst.connect_agent(timeout=60)
            rc, _ = dst.run("ping -c1 -W5 10.200.0.1", timeout=15)
            assert rc == 0
            return {"downtime_ms": info.get("downtime"), "total_ms": info.get("total-time"),
                    "setup_ms": info.get("setup-time")}


@pytest.fixture(scope="module")
def guest_env():
    from tests import netns as netns_mod
    from tests.conftest import qemu_problem
    problem = qemu_problem()
    if problem:
        pytest.skip(problem)
    from tests.guest.image import build_image
    image = build_image()
    with netns_mod.netns() as ns:
        netns_mod.run_in(ns, ["sh", "-c", "echo '0 2147483647' > "
                                          "/proc/sys/net/ipv4/ping_group_range"])
        yield ns, image


@pytest.mark.parametrize("backend", ["passt-py", "passt"])
def test_qemu_downtime(benchmark, guest_env, backend: str) -> None:
    """query-migrate's downtime for an idle guest (lease, no flows) on each back-end."""
    ns, image = guest_env
    if backend == "passt":
        from tests.guest.real_passt import real_passt_command
        cmd = real_passt_command()
        if cmd is None:
            pytest.skip("real passt not available")
        factory = lambda sock: [*cmd, "-f", "--vhost-user", "-s", str(sock)]  # noqa: E731
    else:
        factory = lambda sock: [sys.executable, "-m", "passt_py", "-f",  # noqa: E731
                                "--vhost-user", "-s", str(sock), "--migrate-exit"]
    results: list[dict] = []
    benchmark.pedantic(lambda: results.append(_guest_downtime(factory, ns, image)),
                       rounds=3, iterations=1)
    downtimes = sorted(r["downtime_ms"] for r in results)
    benchmark.extra_info.update({"downtime_ms_median": downtimes[len(downtimes) // 2],
                                 "downtime_ms_all": downtimes,
                                 "total_ms_all": [r["total_ms"] for r in results]})
    print(f"\n{backend}: downtime {downtimes} ms, total {[r['total_ms'] for r in results]} ms")
