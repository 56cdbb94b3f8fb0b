# SPDX-License-Identifier: MIT
"""Live migration of a real guest between two QEMUs, each with its own passt-py.

The guest keeps its lease and reaches the gateway after the move; a UDP flow opened before the
migration still delivers replies on the target (its host socket re-created on the same port);
TCP connections both ways, opened before and running across the migration, carry on with every
byte verified (SHA-256), with TCP_REPAIR done by passt-py itself or by the real passt-repair;
the guest moves there and back again (A -> B -> A).

Both back-ends live in one network namespace, so the source exits after handing over
(--migrate-exit): a source lingering with the connections frozen would still hold their
addresses and ports, which the target on the same host must take.
"""
from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.guest.boot import BackendFactory, Guest, migrate
from tests.netns import in_netns
from tests.procs import stop

pytestmark = pytest.mark.qemu

MIGRATE_TIMEOUT = 120.0


def passt_py(*extra: str) -> BackendFactory:
    """passt-py in the foreground with debug logs, exiting after a migration as source."""
    def factory(sock: Path) -> list[str]:
        return [sys.executable, "-m", "passt_py", "-f", "-d", "--vhost-user", "-s", str(sock),
                "--migrate-exit", *extra]
    return factory



def _move(guest_boot, netns: str, source: Guest, name: str, factory: BackendFactory,
          on_backend=None) -> tuple[Guest, dict]:
    """Start a target QEMU + back-end and migrate ``source`` there; returns (target, info)."""
    uri = f"unix:{source.workdir / (name + '-migrate.sock')}"
    target = guest_boot(factory, netns, name=name, incoming=uri)
    if on_backend:
        on_backend(target)
    info = migrate(source, target, uri, timeout=MIGRATE_TIMEOUT)
    assert info["status"] == "completed"
    target.connect_agent(timeout=60)
    target.timings["migration_downtime_ms"] = info.get("downtime", -1)
    target.timings["migration_total_ms"] = info.get("total-time", -1)
    return target, info


def _log_has(guest: Guest, text: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if guest.backend is not None and text in guest.backend.output():
            return True
        time.sleep(0.1)
    return False


def test_ping_and_udp_flow_survive_migration(guest_boot, guest_netns: str) -> None:
    """After the move the guest pings the gateway, and a reply on a UDP flow opened before
    the migration reaches the guest through the target's re-created socket."""
    source = guest_boot(passt_py(), guest_netns, name="src")
    source.wait_dhcp(timeout=30)
    source.check("ping -c1 -W5 10.200.0.1", timeout=15)
    with in_netns(guest_netns):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(20)
    port = server.getsockname()[1]
    source.check("(socat -u UDP4-RECV:40000,reuseaddr OPEN:/tmp/udp_in,creat,append "
                 ">/tmp/socat_udp.log 2>&1 &) ; sleep 0.3")
    source.check(f"echo before | socat -u - UDP4:10.200.0.1:{port},sourceport=40000,reuseaddr")
    data, peer = server.recvfrom(100)
    assert data == b"before\n" and peer[1] == 40000

    target, info = _move(guest_boot, guest_netns, source, "dst", passt_py())
    assert _log_has(target, "1 UDP"), target.backend.output()[-2000:]
    rc, out = target.run("ping -c1 -W5 10.200.0.1", timeout=15)
    assert rc == 0, out
    server.sendto(b"after the move\n", peer)
    deadline = time.monotonic() + 15
    got = ""
    while time.monotonic() < deadline and "after the move" not in got:
        got = target.run("cat /tmp/udp_in", timeout=5)[1]
        time.sleep(0.2)
    assert "after the move" in got, target.diagnostics()
    server.close()


class HostReader(threading.Thread):
    """Accepts one connection and reads it to EOF at a paced rate (so the transfer spans
    the migrations), hashing everything."""

    def __init__(self, sock: socket.socket, rate: float) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.rate = rate
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(90)
            start = time.monotonic()
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                self.digest.update(chunk)
                self.size += len(chunk)
                ahead = self.size / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            conn.close()
        except OSError as e:
            self.error = str(e)
        finally:
            self.done.set()


class HostWriter(threading.Thread):
    """Writes ``size`` pseudo-random bytes to a connected socket at a paced rate, hashing."""

    def __init__(self, sock: socket.socket, size: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.size = size
        self.rate = rate
        self.digest = hashlib.sha256()
        self.sent = 0
        self.error: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            start = time.monotonic()
            block = bytes((i * 31 + 7) & 0xFF for i in range(1 << 16))
            while self.sent < self.size:
                chunk = block[:min(len(block), self.size - self.sent)]
                chunk = bytes([self.sent // len(block) & 0xFF]) + chunk[1:]
                self.sock.sendall(chunk)
                self.digest.update(chunk)
                self.sent += len(chunk)
                ahead = self.sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = str(e)
        finally:
            self.done.set()


def _sockets(netns: str) -> str:
    """TCP socket details in the namespace (windows, queues, timers), for failure messages."""
    res = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tinoe"], capture_output=True,
                         text=True, timeout=10)
    return res.stdout[-6000:]


def _migration_lines(guests: list[Guest]) -> str:
    """What every hop's back-end said about migration and TCP flows (failure messages)."""
    keys = ("migration", "TCP flow", "ERROR", "WARNING", "repair")
    out = []
    for g in guests:
        if g.backend is None:
            continue
        lines = [ln for ln in g.backend.output().splitlines() if any(k in ln for k in keys)]
        out.append(f"--- {g.backend.log.name} ---\n" + "\n".join(lines[-40:]))
    return "\n".join(out)


def _tcp_streams_across(guest_boot, netns: str, factory_src: BackendFactory,
                        factory_dst: BackendFactory, hops: int = 1,
                        on_backend=None) -> list[dict]:
    """Open a guest->host and a host->guest stream, migrate ``hops`` times while they run,
    and check every byte on both ends. Returns the query-migrate results."""
    source = guest_boot(factory_src, netns, name="hop0")
    if on_backend:
        on_backend(source)
    source.wait_dhcp(timeout=30)
    size_g2h, size_h2g = 24 << 20, 12 << 20
    source.check(f"head -c {size_g2h} /dev/urandom > /tmp/g2h")
    want_g2h = source.check("sha256sum /tmp/g2h").split()[0]
    with in_netns(netns):
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    reader = HostReader(lst, rate=size_g2h / (12.0 * hops))
    reader.start()
    port = lst.getsockname()[1]
    source.check(f"(socat -u OPEN:/tmp/g2h TCP4:10.200.0.1:{port} >/tmp/g2h.log 2>&1 &)")
    source.check("(socat -u TCP4-LISTEN:5001,reuseaddr OPEN:/tmp/h2g,creat,trunc "
                 ">/tmp/h2g.log 2>&1 &) ; sleep 0.5")
    with in_netns(netns):
        h2g = socket.create_connection(("127.0.0.1", 5001), timeout=20)
    h2g.settimeout(90)
    writer = HostWriter(h2g, size_h2g, rate=size_h2g / (12.0 * hops))
    writer.start()
    time.sleep(1.0)
    infos = []
    guest = source
    guests = [source]
    for hop in range(1, hops + 1):
        assert reader.size < size_g2h and writer.sent < size_h2g, "streams ended too early"
        guest, info = _move(guest_boot, netns, guest, f"hop{hop}",
                            factory_dst if hop % 2 else factory_src, on_backend)
        guests.append(guest)
        infos.append(info)
        time.sleep(0.5)
    ok = writer.done.wait(120) and writer.error is None
    ok = ok and reader.done.wait(120) and reader.error is None
    assert ok, (f"writer {writer.sent}/{size_h2g} ({writer.error}), reader "
                f"{reader.size}/{size_g2h} ({reader.error})\n{_sockets(netns)}\n"
                f"{_migration_lines(guests)}\n{guest.diagnostics()}")
    assert reader.size == size_g2h and reader.digest.hexdigest() == want_g2h
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rc, out = guest.run("stat -c %s /tmp/h2g", timeout=5)
        if rc == 0 and out.strip() == str(size_h2g):
            break
        time.sleep(0.5)
    got = guest.check("sha256sum /tmp/h2g").split()[0]
    assert got == writer.digest.hexdigest(), guest.diagnostics()
    unfrozen = [ln for g in guests if g.backend is not None
                for ln in g.backend.output().splitlines()
                if "could not be frozen" in ln or "no guard listener" in ln]
    assert not unfrozen, "every hop must freeze and guard its sockets:\n" + "\n".join(unfrozen)
    h2g.close()
    lst.close()
    return infos


def test_tcp_streams_both_ways_survive_migration(guest_boot, guest_netns: str) -> None:
    """A guest->host and a host->guest TCP stream, running during the migration, complete
    with matching SHA-256 on the target (TCP_REPAIR by passt-py itself)."""
    infos = _tcp_streams_across(guest_boot, guest_netns, passt_py("-t", "5001"), passt_py())
    assert infos[0]["status"] == "completed"


def test_two_migrations_in_a_row_there_and_back(guest_boot, guest_netns: str) -> None:
    """A -> B -> A with both streams running: still every byte intact."""
    infos = _tcp_streams_across(guest_boot, guest_netns, passt_py("-t", "5001"), passt_py(),
                                hops=2)
    assert [i["status"] for i in infos] == ["completed", "completed"]


def test_tcp_streams_survive_with_the_real_passt_repair(guest_boot, guest_netns: str,
                                                        real_passt_repair: list[str]) -> None:
    """Without CAP_NET_ADMIN in passt-py, the real passt-repair helper does TCP_REPAIR.

    passt-py runs as nobody without capabilities. Some kernels (this one) refuse
    classic socket filters without CAP_NET_ADMIN; the freeze and the same-host guard then use
    the eBPF filter loaded at start (passt_py.migrate.repair.DropFilter), and the check in
    _tcp_streams_across fails if any hop could not freeze or guard its sockets."""
    repair_cmd = real_passt_repair
    helpers: list[subprocess.Popen] = []
    served: list[Guest] = []

    def factory(*extra: str) -> BackendFactory:
        def make(sock: Path) -> list[str]:
            # With a helper path passt-py drops to nobody with no capabilities at all:
            # only the helper can set TCP_REPAIR.
            return passt_py("--repair-path", f"{sock}.repair", *extra)(sock)
        return make

    def start_helper(guest: Guest) -> None:
        served.append(guest)
        path = f"{guest.backend.socket}.repair"
        log = open(guest.workdir / "passt-repair.log", "wb")
        helpers.append(subprocess.Popen(["ip", "netns", "exec", guest_netns, *repair_cmd, path],
                                        stdout=log, stderr=subprocess.STDOUT))
        assert _log_has(guest, "repair helper connected", 10), guest.backend.output()[-2000:]

    try:
        infos = _tcp_streams_across(guest_boot, guest_netns, factory("-t", "5001"), factory(),
                                    on_backend=start_helper)
        assert infos[0]["status"] == "completed"
        source_log = served[0].backend.output()
        assert "in repair mode through the helper" in source_log, \
            "the source must have used the helper, not CAP_NET_ADMIN"
    finally:
        for proc in helpers:
            if proc.poll() is None:
                stop(proc)
