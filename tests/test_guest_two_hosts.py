# SPDX-License-Identifier: MIT
"""Live migration between two hosts that own the same address (KubeVirt's shape, issue 15).

Four network namespaces: hosts A and B, each with 10.201.15.2/24 (and the same MAC) on ``up0``,
a switch holding the bridge (gateway 10.201.15.1), and a peer at 10.201.15.10 on that bridge.
Only one host is on the bridge at a time: A until the migration completes, then B, as if the
address moved with the VM (a pod with a stable IP). Each host runs its own QEMU and back-end,
both with ``-t 10001``; the source's back-end lingers with its frozen sockets (no
--migrate-exit: the hosts are separate, so nothing on B collides with them). A back-end that
exits after a migration instead (the real passt before 2025-08, e.g. Debian 13's) would leave
A's kernel to reset what the peer still sends there before the switch-over; for it A leaves
the bridge when the guest stops (QEMU's pause-before-switchover), B still joins at the end.

Two connections run both ways during the migration: the peer's to A:10001, forwarded into the
guest (inbound), and the guest's to the peer (outbound). After the move both must go on from the
same 4-tuples on B, every byte checked with SHA-256 both ways, close cleanly (no socket left
open on the peer), no RST may reach or leave the peer (an AF_PACKET sniffer on its interface),
and the target's log must say the connections were restored. passt-py runs as root (it keeps
CAP_NET_ADMIN for TCP_REPAIR) or with the real passt-repair; the real passt as a reference.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests import netns as netns_mod
from tests.conftest import qemu_unavailable
from tests.guest.boot import BackendFactory, Guest, migrate, wait_running
from tests.netns import in_netns
from tests.test_guest_migrate import HostWriter
from tests.procs import stop

pytestmark = pytest.mark.qemu

HOST_ADDR = "10.201.15.2"          # both hosts' address: it moves with the VM
GATEWAY = "10.201.15.1"
PEER_ADDR = "10.201.15.10"
PREFIX = 24
HOST_MAC = "02:00:0a:c9:0f:02"     # the same on both hosts, like the address
UPLINK = "up0"                     # the host-side interface name in A, B and the peer
FORWARDED_PORT = 10001             # -t 10001 on both back-ends; the guest listens there
PEER_PORT = 20001                  # the peer's listener for the guest's connection
BLOCK = 256 << 10                  # the guest sends its data in blocks of this size
BLOCKS = 64                        # ... this many per connection
BLOCK_INTERVAL_US = 300_000        # ... one every 0.3 s
STREAM_SIZE = BLOCK * BLOCKS       # bytes per direction per connection (16 MiB)
STREAM_SECONDS = BLOCKS * BLOCK_INTERVAL_US / 1e6   # both ends pace: the streams span the move
AFTER_MIN = 1 << 20                # bytes each way that must still flow after the switch-over
MIGRATE_AFTER = 3.0                # seconds of traffic before the migration starts
MIGRATE_TIMEOUT = 120.0
_counter = itertools.count()


# ---- topology ----

def _ip(*args: str) -> None:
    """One ``ip`` command; raises with its stderr on failure."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


@dataclass
class TwoHosts:
    """Names of the namespaces; ``leave_a()`` then ``join_b()`` move the address to B."""

    host_a: str
    host_b: str
    switch: str
    peer: str

    def leave_a(self) -> None:
        """A's port leaves the bridge (its forwarding entries go with it)."""
        _ip("-n", self.switch, "link", "set", "port-a", "nomaster")

    def join_b(self) -> None:
        """B's port joins the bridge (forwarding at once: no STP)."""
        _ip("-n", self.switch, "link", "set", "port-b", "master", "br0")


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    """Creates the four namespaces with A on the bridge and B off it; deletes them on exit.

    B's uplink is up and configured all along (its back-end must find its address and default
    route at start); only its port on the bridge is missing until the switch-over.
    """
    base = f"pp2h-{os.getpid()}-{next(_counter)}"
    net = TwoHosts(f"{base}-a", f"{base}-b", f"{base}-sw", f"{base}-peer")
    made: list[str] = []
    try:
        for ns in (net.switch, net.host_a, net.host_b, net.peer):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", net.switch, "addr", "add", f"{GATEWAY}/{PREFIX}", "dev", "br0")
        _ip("-n", net.switch, "link", "set", "br0", "up")
        for ns, port, addr, mac in ((net.host_a, "port-a", HOST_ADDR, HOST_MAC),
                                    (net.host_b, "port-b", HOST_ADDR, HOST_MAC),
                                    (net.peer, "port-peer", PEER_ADDR, None)):
            _ip("-n", ns, "link", "add", UPLINK, "type", "veth", "peer", "name", port,
                "netns", net.switch)
            if mac:
                _ip("-n", ns, "link", "set", UPLINK, "address", mac)
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", UPLINK)
            _ip("-n", ns, "link", "set", UPLINK, "up")
            _ip("-n", net.switch, "link", "set", port, "up")
            _ip("-n", ns, "route", "add", "default", "via", GATEWAY, "dev", UPLINK)
        for port in ("port-a", "port-peer"):
            _ip("-n", net.switch, "link", "set", port, "master", "br0")
        yield net
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _ss(ns: str, *filters: str) -> str:
    """``ss -tn`` in the namespace (no header), with optional state/port filters."""
    res = netns_mod.run_in(ns, ["ss", "-tnH", *filters], timeout=10)
    return res.stdout


# ---- RST sniffer ----

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
TCP_RST = 0x04


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


# Classic BPF: IPv4, TCP, RST flag set (Ethernet frames); everything else is not even queued.
_RST_FILTER = [
    (0x28, 0, 0, 12),          # ldh [12]            EtherType
    (0x15, 0, 6, 0x0800),      # jeq IPv4 ? next : drop
    (0x30, 0, 0, 23),          # ldb [23]            IP protocol
    (0x15, 0, 4, 6),           # jeq TCP ? next : drop
    (0xB1, 0, 0, 14),          # ldxb 4*([14]&0xf)   IP header length
    (0x50, 0, 0, 14 + 13),     # ldb [x+27]          TCP flags
    (0x45, 0, 1, TCP_RST),     # jset RST ? accept : drop
    (0x06, 0, 0, 0x40000),     # ret: accept
    (0x06, 0, 0, 0),           # ret: drop
]


@dataclass(frozen=True)
class Rst:
    """One TCP segment with RST seen on the peer's interface."""

    src: str
    sport: int
    dst: str
    dport: int
    outgoing: bool
    at: float                      # time.monotonic() when seen

    def __str__(self) -> str:
        way = "from the peer" if self.outgoing else "to the peer"
        return f"RST {self.src}:{self.sport} -> {self.dst}:{self.dport} ({way})"


class RstSniffer(threading.Thread):
    """Records every TCP RST crossing one interface of a namespace (AF_PACKET, both ways)."""

    def __init__(self, ns: str, ifname: str) -> None:
        super().__init__(daemon=True)
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, ETH_P_ALL))
        prog = (_SockFilter * len(_RST_FILTER))(*(_SockFilter(*ins) for ins in _RST_FILTER))
        fprog = _SockFprog(len(_RST_FILTER), prog)
        self._prog = prog            # keep the instructions alive while the kernel copies them
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
        self.sock.settimeout(0.2)
        self.seen: list[Rst] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                frame, addr = self.sock.recvfrom(256)
            except socket.timeout:
                continue
            except OSError:
                return
            rst = self._parse(frame, addr[2] == socket.PACKET_OUTGOING)
            if rst is not None:
                self.seen.append(rst)

    @staticmethod
    def _parse(frame: bytes, outgoing: bool) -> Rst | None:
        """The RST in an Ethernet frame (the filter already chose IPv4 TCP with RST)."""
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            return None
        ihl = (frame[14] & 0x0F) * 4
        tcp = frame[14 + ihl:]
        if frame[23] != 6 or len(tcp) < 14 or not tcp[13] & TCP_RST:
            return None
        sport, dport = struct.unpack("!HH", tcp[:4])
        return Rst(socket.inet_ntoa(frame[26:30]), sport, socket.inet_ntoa(frame[30:34]),
                   dport, outgoing, time.monotonic())

    def stop(self) -> list[Rst]:
        """Stops the thread, closes the socket; returns what was seen."""
        self._halt.set()
        self.join(5)
        self.sock.close()
        return list(self.seen)


# ---- the peer's ends of the two connections ----

class SocketReader(threading.Thread):
    """Reads a connected socket to EOF, hashing; leaves it open (the guest paces its side)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                self.digest.update(chunk)
                self.size += len(chunk)
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.done.set()


@dataclass
class PeerEnd:
    """The peer's socket of one connection, written (then shut down) and read to EOF."""

    name: str
    sock: socket.socket
    writer: HostWriter = field(init=False)
    reader: SocketReader = field(init=False)

    def __post_init__(self) -> None:
        self.sock.settimeout(90)
        self.writer = HostWriter(self.sock, STREAM_SIZE, STREAM_SIZE / STREAM_SECONDS)
        self.reader = SocketReader(self.sock)
        self.writer.start()
        self.reader.start()

    def wait(self, timeout: float) -> bool:
        """Both directions finished (bounded); False on timeout or an error."""
        deadline = time.monotonic() + timeout
        for ev in (self.writer.done, self.reader.done):
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                return False
        return self.writer.error is None and self.reader.error is None

    def progress(self) -> str:
        return (f"{self.name}: sent {self.writer.sent}/{STREAM_SIZE} ({self.writer.error}), "
                f"received {self.reader.size}/{STREAM_SIZE} ({self.reader.error})")


# ---- back-ends ----

@dataclass
class Backend:
    """How to run one kind of back-end on both hosts and what its target log must say."""

    factory: BackendFactory
    repair_helper: list[str] | None     # passt-repair argv prefix, started per back-end
    restored: Callable[[str], str | None]  # target log -> None if both restored, else why
    # Whether the source keeps its frozen sockets after the migration. One that exits instead
    # (passt before 2025-08) leaves A's kernel to reset whatever the peer still sends there,
    # so for it the address leaves A as soon as the guest stops, before the device state goes.
    source_lingers: bool = True


def _passt_py_restored(log: str) -> str | None:
    m = re.search(r"migration: \d+ bytes of state loaded .*?(\d+) TCP flows restored, "
                  r"(\d+) failed", log)
    if m is None:
        return "no 'state loaded ... TCP flows restored' line"
    if (m.group(1), m.group(2)) != ("2", "0"):
        return f"log says: {m.group(0)!r}"
    if "migration: 2 of 2 restored TCP connections handed to the guest" not in log:
        return "no '2 of 2 restored TCP connections handed to the guest' line"
    return None


def _passt_restored(log: str) -> str | None:
    section = log.partition("Target side migration stage: transfer flows")[2]
    if not section:
        return "no 'Target side migration stage: transfer flows' line"
    section = section.partition("Closing migration channel")[0]
    flows = section.count("Extended migration data")
    active = section.count("TYPED -> ACTIVE")
    if (flows, active) != (2, 2):
        return f"{flows} flows with migration data, {active} activated (want 2 and 2)"
    bad = [ln for ln in section.splitlines() if re.search(r"(?i)fail|error|reset", ln)]
    return f"while loading: {bad}" if bad else None


def _backend(kind: str, request: pytest.FixtureRequest) -> Backend:
    """The back-end setup for one parametrization."""
    forward = ["-t", str(FORWARDED_PORT)]
    if kind == "passt":
        passt = request.getfixturevalue("real_passt")
        repair = request.getfixturevalue("real_passt_repair")
        # Lingering became the default together with the options that turn it off.
        usage = subprocess.run([*passt, "--help"], capture_output=True, text=True, timeout=10)
        lingers = "--migrate-exit" in usage.stdout + usage.stderr
        return Backend(lambda sock: [*passt, "-f", "-d", "--vhost-user", "-s", str(sock),
                                     *forward], repair, _passt_restored, lingers)
    py = [sys.executable, "-m", "passt_py", "-f", "-d", "--vhost-user"]
    if kind == "passt-py":
        # As root passt-py keeps CAP_NET_ADMIN for TCP_REPAIR (README, "Running as root").
        return Backend(lambda sock: [*py, "-s", str(sock), *forward], None,
                       _passt_py_restored)
    assert kind == "passt-py+passt-repair"
    repair = request.getfixturevalue("real_passt_repair")
    return Backend(lambda sock: [*py, "-s", str(sock), "--repair-path", f"{sock}.repair",
                                 *forward], repair, _passt_py_restored)


@pytest.fixture
def network() -> Iterator[TwoHosts]:
    """The two hosts, the switch and the peer (torn down after the guests)."""
    if not netns_mod.available():
        qemu_unavailable("network namespaces need root and iproute2")
    with two_hosts() as net:
        yield net


@pytest.fixture
def helpers() -> Iterator[list[subprocess.Popen]]:
    """passt-repair processes started by the test, stopped by PID afterwards."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            stop(proc)


def _start_repair_helper(argv: list[str], ns: str, guest: Guest,
                         procs: list[subprocess.Popen]) -> None:
    """passt-repair for ``guest``'s back-end, in its namespace; it serves one migration."""
    assert guest.backend is not None
    path = f"{guest.backend.socket}.repair"
    deadline = time.monotonic() + 10
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(guest.workdir / "passt-repair.log", "wb") as log:
        procs.append(netns_mod.popen_in(ns, [*argv, path], stdout=log,
                                        stderr=subprocess.STDOUT))
    time.sleep(0.3)
    assert procs[-1].poll() is None, (
        f"passt-repair exited with {procs[-1].returncode}: "
        f"{(guest.workdir / 'passt-repair.log').read_text(errors='replace')}")


def _full_log(guest: Guest) -> str:
    """The back-end's whole log (``output()`` keeps only the tail; passt -d writes a lot)."""
    assert guest.backend is not None
    return guest.backend.log.read_text(errors="replace")


def _migration_log(guest: Guest) -> str:
    """What a back-end said about migration, TCP and repair (for failure messages)."""
    if guest.backend is None:
        return ""
    keys = ("igrat", "TCP flow", "repair", "rror", "arning", "restor", "reset", "ACTIVE")
    lines = [ln for ln in _full_log(guest).splitlines() if any(k in ln for k in keys)]
    return f"--- {guest.backend.log.name} ---\n" + "\n".join(lines[-40:])


def _migrate(source: Guest, target: Guest, uri: str,
             at_pause: Callable[[], None] | None = None) -> dict:
    """Migrates over QMP like tests.guest.boot.migrate; with ``at_pause``, the source pauses
    after the guest stopped and before the device state goes (pause-before-switchover), runs
    it, and continues. Returns the final query-migrate result."""
    if at_pause is None:
        return migrate(source, target, uri, timeout=MIGRATE_TIMEOUT)
    source.qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "pause-before-switchover", "state": True}]})
    source.qmp.execute("migrate", {"uri": uri})
    deadline = time.monotonic() + MIGRATE_TIMEOUT
    paused = False
    while True:
        info = source.qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            assert paused, "the migration never paused before the switch-over"
            wait_running(target, max(1.0, deadline - time.monotonic()))
            return info
        if status == "pre-switchover" and not paused:
            at_pause()
            paused = True
            source.qmp.execute("migrate-continue", {"state": "pre-switchover"})
        assert status not in ("failed", "cancelled"), (
            f"migration {status}: {info.get('error-desc', info)}\n{source.diagnostics()}\n"
            f"{target.diagnostics()}")
        assert time.monotonic() < deadline, f"migration not complete: {info}"
        time.sleep(0.02)


def _wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Polls ``check`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# The guest's ends: socat reads what it sends from a pacer (a dual address: left for reading,
# right for writing) and writes what it receives to a file; each direction ends with a FIN.
GUEST_PACER = ("i=0; while [ $i -lt $2 ]; do dd if=$1 bs=$3 skip=$i count=1 2>/dev/null; "
               "i=$((i+1)); usleep $4; done")
GUEST_INBOUND = (f"socat -t 300 TCP4-LISTEN:{FORWARDED_PORT},reuseaddr "
                 f"'SYSTEM:sh /tmp/pace.sh /tmp/in_tx {BLOCKS} {BLOCK} {BLOCK_INTERVAL_US}"
                 "!!OPEN:/tmp/in_rx,creat,trunc'")
GUEST_OUTBOUND = (f"socat -t 300 'SYSTEM:sh /tmp/pace.sh /tmp/out_tx {BLOCKS} {BLOCK} "
                  f"{BLOCK_INTERVAL_US}!!OPEN:/tmp/out_rx,creat,trunc' "
                  f"TCP4:{PEER_ADDR}:{PEER_PORT}")
OPEN_STATES = ("state", "established", "state", "syn-sent", "state", "syn-recv",
               "state", "fin-wait-1", "state", "fin-wait-2", "state", "close-wait",
               "state", "last-ack", "state", "closing")


def _background(guest: Guest, name: str, cmd: str) -> None:
    """Runs ``cmd`` in the guest in the background; its exit status lands in /tmp/NAME.rc."""
    guest.check(f"( ({cmd}; echo $? >/tmp/{name}.rc) >/tmp/{name}.log 2>&1 & )")


@pytest.mark.parametrize("kind", ["passt-py", "passt-py+passt-repair", "passt"])
def test_connections_survive_migration_to_a_host_with_the_same_address(
        kind: str, network: TwoHosts, guest_boot, helpers: list[subprocess.Popen],
        request: pytest.FixtureRequest) -> None:
    """An inbound (peer -> A:10001 -> guest) and an outbound (guest -> peer) TCP connection
    carry on from the same 4-tuples on host B, every byte intact both ways, then close
    cleanly, with no RST seen by the peer and the target saying both were restored."""
    backend = _backend(kind, request)
    net = network
    source = guest_boot(backend.factory, net.host_a, name="src")
    if backend.repair_helper:
        _start_repair_helper(backend.repair_helper, net.host_a, source, helpers)
    lease = source.wait_dhcp(timeout=30)
    assert lease.get("ip") == HOST_ADDR, lease
    for name in ("in_tx", "out_tx"):
        source.check(f"head -c {STREAM_SIZE} /dev/urandom > /tmp/{name}", timeout=60)
    source.check(f"cat > /tmp/pace.sh <<'EOF'\n{GUEST_PACER}\nEOF")
    guest_sent = {name: source.check(f"sha256sum /tmp/{name}").split()[0]
                  for name in ("in_tx", "out_tx")}

    sniffer = RstSniffer(net.peer, UPLINK)
    sniffer.start()
    ends: list[PeerEnd] = []
    guests = [source]
    try:
        with in_netns(net.peer):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((PEER_ADDR, PEER_PORT))
            listener.listen(1)
            listener.settimeout(30)
            _background(source, "in", GUEST_INBOUND)
            time.sleep(0.5)
            inbound = socket.create_connection((HOST_ADDR, FORWARDED_PORT), timeout=20)
        ends.append(PeerEnd("inbound", inbound))
        _background(source, "out", GUEST_OUTBOUND)
        outbound, _ = listener.accept()
        listener.close()
        ends.append(PeerEnd("outbound", outbound))
        # The 4-tuples seen from the host side: the target must carry on with the same ones.
        tuples = {"inbound": (f"{HOST_ADDR}:{FORWARDED_PORT}",
                              "{}:{}".format(*inbound.getsockname())),
                  "outbound": ("{}:{}".format(*outbound.getpeername()),
                               f"{PEER_ADDR}:{PEER_PORT}")}
        time.sleep(MIGRATE_AFTER)

        moments: dict[str, float] = {}     # when the migration and switch-over happened
        on_b_at_switch = ""

        def leave_a() -> None:
            net.leave_a()
            moments["A left"] = time.monotonic()

        def evidence() -> str:
            t0 = moments.get("switch-over", time.monotonic())
            when = ", ".join(f"{k} at {v - t0:+.3f} s" for k, v in moments.items())
            rsts = [f"{r} at {r.at - t0:+.3f} s" for r in sniffer.seen]
            return "\n".join([*(e.progress() for e in ends),
                              f"expected 4-tuples on B (local, peer): {tuples}",
                              f"times relative to the switch-over: {when}",
                              "RSTs seen by the peer: " + (", ".join(rsts) or "none"),
                              f"--- ss on B at the switch-over ---\n{on_b_at_switch}",
                              f"--- ss on B ---\n{_ss(net.host_b)}",
                              f"--- ss on the peer ---\n{_ss(net.peer)}",
                              *(_migration_log(g) for g in guests)])

        assert all(e.writer.sent < STREAM_SIZE and e.reader.size < STREAM_SIZE for e in ends), \
            "streams ended before the migration:\n" + evidence()

        uri = f"unix:{source.workdir / 'migrate.sock'}"
        target = guest_boot(backend.factory, net.host_b, name="dst", incoming=uri)
        guests.append(target)
        if backend.repair_helper:
            _start_repair_helper(backend.repair_helper, net.host_b, target, helpers)
        moments["migration start"] = time.monotonic()
        info = _migrate(source, target, uri, None if backend.source_lingers else leave_a)
        moments["migration completed"] = time.monotonic()
        if backend.source_lingers:
            leave_a()                # the address moves: A off the bridge, then B on
        net.join_b()
        moments["switch-over"] = time.monotonic()
        at_switch = [(e.writer.sent, e.reader.size) for e in ends]
        on_b_at_switch = _ss(net.host_b)
        assert info["status"] == "completed"
        assert all(STREAM_SIZE - n >= AFTER_MIN for pair in at_switch for n in pair), (
            f"too little left to send after the switch-over (sent, received): {at_switch}\n"
            + evidence())
        target.timings["migration_downtime_ms"] = info.get("downtime", -1)
        target.timings["migration_total_ms"] = info.get("total-time", -1)
        target.connect_agent(timeout=60)
        if kind == "passt-py+passt-repair":
            assert "in repair mode through the helper" in _full_log(source), \
                "the source must have used passt-repair, not CAP_NET_ADMIN\n" + evidence()

        assert _wait_for(lambda: backend.restored(_full_log(target)) is None, 10), (
            f"target log: {backend.restored(_full_log(target))}\n" + evidence())
        on_b = _ss(net.host_b, "state", "established")
        missing = [f"{name} {local} <-> {peer}" for name, (local, peer) in tuples.items()
                   if not re.search(rf"\s{re.escape(local)}\s+{re.escape(peer)}(\s|$)", on_b,
                                    re.M)]
        assert not missing, f"not on B with the same 4-tuple: {missing}\n" + evidence()

        assert all(e.wait(120) for e in ends), "streams did not complete:\n" + evidence()
        for end, name in zip(ends, ("in", "out")):
            assert end.reader.size == STREAM_SIZE, evidence()
            assert end.reader.digest.hexdigest() == guest_sent[f"{name}_tx"], \
                f"{end.name}: guest -> peer bytes differ\n" + evidence()
        for name in ("in", "out"):
            assert _wait_for(lambda: target.run(f"cat /tmp/{name}.rc", timeout=10)[0] == 0,
                             60, 0.5), f"guest socat {name} did not finish\n" + evidence()
            rc = target.check(f"cat /tmp/{name}.rc").strip()
            assert rc == "0", (f"guest socat {name} exited {rc}: "
                               f"{target.run(f'cat /tmp/{name}.log')[1]}\n" + evidence())
        for end, name in zip(ends, ("in", "out")):
            got = target.check(f"sha256sum /tmp/{name}_rx").split()[0]
            assert got == end.writer.digest.hexdigest(), \
                f"{end.name}: peer -> guest bytes differ\n" + evidence()

        for end in ends:
            end.sock.close()
        assert _wait_for(lambda: not _ss(net.peer, *OPEN_STATES).strip(), 15), (
            "sockets left open on the peer after closing:\n" + evidence())
        assert _wait_for(lambda: not _ss(net.host_b, *OPEN_STATES).strip(), 15), (
            "the target's back-end left sockets open after both ends closed:\n" + evidence())
        time.sleep(0.5)                  # a late RST would come now
        rsts = sniffer.stop()
        assert not rsts, "RST reached or left the peer:\n" + evidence()
    finally:
        sniffer.stop()
        for end in ends:
            end.sock.close()
