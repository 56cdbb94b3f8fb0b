# SPDX-License-Identifier: MIT
"""One whole two-process migration of a live TCP connection, run inside ``unshare -rn``.

tests/test_rootless_migrate.py runs ``unshare -rn python -m tests.rootless_migration_driver
--helper KIND``: root only inside its own user namespace, which owns a private network
namespace with nothing but loopback. Everything happens there:

- a source and a target ``passt-py --vhost-user`` start WITHOUT CAP_NET_ADMIN (``setpriv``
  drops it from the bounding and inheritable sets before exec), so they cannot set TCP_REPAIR
  themselves: only the repair helper (``--repair-path``) can, and without one no TCP
  connection moves;
- the test front-end (tests/frontend.py) plays QEMU and the guest: the guest opens a TCP
  connection to a host peer socket on 127.0.0.1 (through the gateway address) and both sides
  stream data; more is left in flight when the guest is migrated;
- the device state is saved on the source and loaded on the target as QEMU does
  (tests/frontend.py's ``save_state``/``load_state``), with the helper — the real passt-repair,
  the fake one of tests/fake_repair_helper.py, or none — connected to both back-ends just before;
- the streams then finish on the target, and the guest closes the connection.

The driver asserts nothing: it prints one JSON report (digests, sizes, resets, the back-ends'
migration log lines, capabilities, helper results) on its last stdout line, for the test to
judge. Every child is stopped by PID in ``finally``; every wait is bounded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from passt_py.link.ethernet import parse_header  # noqa: E402
from passt_py.link.ip import parse_ip  # noqa: E402
from passt_py.tcp.seg import ACK, FIN, RST, TcpSegment, parse_tcp, seq_add, seq_diff  # noqa: E402
from tests.frontend import Frontend  # noqa: E402
from tests.guest.real_passt import real_passt_repair_command  # noqa: E402
from tests.service_rig import ARGS, Guest  # noqa: E402

#: Runs a command as root-in-the-namespace minus CAP_NET_ADMIN (so no TCP_REPAIR of its own).
NO_NET_ADMIN = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]
CAP_NET_ADMIN = 12
MSS = 1460
#: Guest bytes sent but not yet acknowledged, at most (the rest waits).
GUEST_WINDOW = 64 << 10
#: No new acknowledgement for this long: the guest sends again from the last one (go-back-N).
GUEST_RTO = 0.3
RX_BUFFERS = 200
#: Payload sizes: before the migration, left in flight across it, after it.
SIZES = {"before": 256 << 10, "in_flight": 384 << 10, "after": 256 << 10}
HOST_IN_FLIGHT = 64 << 10
PHASE_TIMEOUT = 12.0


# ---- processes ----
@dataclass
class Backend:
    """One passt-py process and the files it uses."""

    name: str
    proc: subprocess.Popen
    sock: str
    repair: str
    log_path: str

    def log(self) -> str:
        """Everything the back-end printed so far."""
        with open(self.log_path, errors="replace") as f:
            return f.read()


def start_backend(workdir: str, name: str, *extra: str) -> Backend:
    """passt-py without CAP_NET_ADMIN, listening for the repair helper; waits for its socket."""
    sock = os.path.join(workdir, f"{name}.sock")
    repair = f"{sock}.repair"
    log_path = os.path.join(workdir, f"{name}.log")
    argv = [*NO_NET_ADMIN, sys.executable, "-m", "passt_py", "--vhost-user", "-f", "-d",
            "-s", sock, "--repair-path", repair, *ARGS, *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    backend = Backend(name, proc, sock, repair, log_path)
    deadline = time.monotonic() + 10
    while not (os.path.exists(sock) and os.path.exists(repair)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {backend.log()[-2000:]}")
        time.sleep(0.02)
    return backend


def helper_argv(kind: str, path: str, out: str) -> list[str]:
    """The command that connects helper ``kind`` ("real" or "fake") to ``path``."""
    if kind == "real":
        cmd = real_passt_repair_command(allow_download=False)
        if cmd is None:
            raise RuntimeError("the real passt-repair is not available")
        return [*cmd, path]
    return [sys.executable, "-m", "tests.rootless_migration_driver", "--fake-helper", path, out]


def start_helper(kind: str, backend: Backend, workdir: str) -> subprocess.Popen:
    """Start the helper for ``backend`` (root in the namespace, with CAP_NET_ADMIN) and wait
    until the back-end says it connected. Done just before the migration, as a migration
    manager does (and the fake helper gives up after 5 s without a command)."""
    out = os.path.join(workdir, f"{backend.name}-helper.json")
    log = open(os.path.join(workdir, f"{backend.name}-helper.log"), "wb")
    try:
        proc = subprocess.Popen(helper_argv(kind, backend.repair, out), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
    finally:
        log.close()
    deadline = time.monotonic() + 10
    while "repair helper connected" not in backend.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{kind} helper did not connect to {backend.name}")
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGTERM this one process (by PID), SIGKILL if it lingers; its exit status."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit status if ``proc`` ends by itself within ``timeout``, else None."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def cap_net_admin(pid: int) -> bool:
    """Whether process ``pid`` has CAP_NET_ADMIN in its effective set."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


# ---- the fake helper ----
def run_fake_helper(path: str, out: str) -> int:
    """tests/fake_repair_helper.py's FakeHelper as a process; writes the commands it served."""
    from tests.fake_repair_helper import FakeHelper
    helper = FakeHelper(path)
    helper.run()
    with open(out, "w") as f:
        json.dump(helper.commands, f)
    return 0


# ---- the guest's and the host's ends of the connection ----
@dataclass
class Peers:
    """Both ends of the connection and everything each was asked to send or received."""

    guest: Guest
    host: socket.socket
    listener: socket.socket
    guest_out: bytearray = field(default_factory=bytearray)
    host_out: bytearray = field(default_factory=bytearray)
    guest_got: bytearray = field(default_factory=bytearray)
    host_got: bytearray = field(default_factory=bytearray)
    acked: int = 0             # guest bytes the back-end acknowledged
    sent: int = 0              # guest bytes sent (rewound on a timeout)
    host_sent: int = 0
    last_ack: float = 0.0
    guest_reads: bool = True   # False: the guest ignores data (it stays unacknowledged)
    host_reads: bool = True
    guest_rst: bool = False
    host_error: str | None = None
    host_eof: bool = False

    @property
    def base(self) -> int:
        """Sequence number of the guest's first data byte."""
        return seq_add(self.guest.isn, 1)


def open_connection(fe: Frontend) -> Peers:
    """The guest connects to the gateway address; passt-py maps it to the host's 127.0.0.1."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(5)
    guest = Guest(fe, listener.getsockname()[1])
    guest.connect()
    host, _ = listener.accept()
    host.setblocking(False)
    listener.setblocking(False)      # kept open: a second connection would show up here
    return Peers(guest, host, listener, last_ack=time.monotonic())


def guest_segments(peers: Peers, timeout: float) -> list[TcpSegment]:
    """TCP segments for the guest's port that arrived on the current front-end's RX ring."""
    out = []
    for frame in peers.guest.fe.recv_frames(256, timeout=timeout):
        eth = parse_header(frame)
        pkt = parse_ip(frame, eth.ethertype) if eth else None
        seg = parse_tcp(pkt.l4) if pkt is not None and pkt.proto == 6 else None
        if seg is not None and seg.dport == peers.guest.tpl.sport:
            out.append(seg)
    return out


def guest_receive(peers: Peers, timeout: float) -> None:
    """Take ACKs and in-order data; acknowledge new data at once (if the guest reads)."""
    g = peers.guest
    new_data = False
    for seg in guest_segments(peers, timeout):
        peers.guest_rst |= bool(seg.flags & RST)
        if seg.flags & ACK:
            acked = seq_diff(seg.ack, peers.base)
            if acked > peers.acked:
                peers.acked, peers.last_ack = acked, time.monotonic()
        if peers.guest_reads and seg.payload and seg.seq == g.rcv:
            peers.guest_got += seg.payload
            g.rcv = seq_add(g.rcv, len(seg.payload))
            new_data = True
    if new_data:
        g.send(ACK, seq=seq_add(peers.base, peers.sent))


def guest_send(peers: Peers) -> None:
    """Send what the window allows, going back to the last ACK after GUEST_RTO of silence."""
    if peers.sent > peers.acked and time.monotonic() - peers.last_ack > GUEST_RTO:
        peers.sent, peers.last_ack = peers.acked, time.monotonic()
    batch = 0
    while (peers.sent < len(peers.guest_out) and peers.sent - peers.acked < GUEST_WINDOW
           and batch < 32):
        chunk = bytes(peers.guest_out[peers.sent:peers.sent + MSS])
        peers.guest.send(ACK, chunk, seq=seq_add(peers.base, peers.sent), kick=False)
        peers.sent += len(chunk)
        batch += 1
    if batch:
        peers.guest.fe.kick_tx()
        peers.guest.fe.wait_tx_used(1, 0.5)


def host_io(peers: Peers) -> None:
    """The host peer: read everything (if it reads), send what the socket takes."""
    try:
        while peers.host_reads and not peers.host_eof:
            chunk = peers.host.recv(1 << 20)
            peers.host_eof = not chunk
            peers.host_got += chunk
    except BlockingIOError:
        pass
    except OSError as e:
        peers.host_error = f"recv: {type(e).__name__}: {e}"
    try:
        while peers.host_sent < len(peers.host_out):
            peers.host_sent += peers.host.send(peers.host_out[peers.host_sent:])
    except BlockingIOError:
        pass
    except OSError as e:
        peers.host_error = f"send: {type(e).__name__}: {e}"


def pump(peers: Peers, done: Callable[[Peers], bool], timeout: float) -> bool:
    """Run both ends until ``done(peers)``, a reset, or ``timeout``; whether done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(peers):
            return True
        if peers.guest_rst or peers.host_error:
            return False
        guest_send(peers)
        host_io(peers)
        guest_receive(peers, 0.01)
    return done(peers)


def all_delivered(peers: Peers) -> bool:
    """Every byte asked for arrived at the other end, and the guest's data is acknowledged."""
    return (len(peers.host_got) >= len(peers.guest_out) and peers.acked >= len(peers.guest_out)
            and len(peers.guest_got) >= len(peers.host_out))


def stream(peers: Peers, name: str, guest_bytes: int, host_bytes: int,
           timeout: float = PHASE_TIMEOUT) -> dict:
    """Queue random payloads both ways and run until they arrived; the phase's summary."""
    t0 = time.monotonic()
    peers.guest_out += os.urandom(guest_bytes)
    peers.host_out += os.urandom(host_bytes)
    ok = pump(peers, all_delivered, timeout)
    return {"phase": name, "complete": ok, "seconds": round(time.monotonic() - t0, 3)}


def leave_in_flight(peers: Peers) -> dict:
    """Data both ways that is not delivered when the guest leaves: the host reads nothing
    (guest data fills the source's socket queues) and the guest acknowledges nothing (host
    data stays in the source's receive queue, only peeked)."""
    peers.host_reads = peers.guest_reads = False
    peers.guest_out += os.urandom(SIZES["in_flight"])
    peers.host_out += os.urandom(HOST_IN_FLIGHT)
    pump(peers, lambda p: False, 1.0)
    return {"phase": "in_flight", "guest_sent": peers.sent, "guest_acked": peers.acked,
            "host_sent": peers.host_sent, "host_got": len(peers.host_got),
            "guest_got": len(peers.guest_got)}


def close_from_guest(peers: Peers, timeout: float = 5.0) -> bool:
    """The guest sends FIN; True when the host reads end of file (not a reset)."""
    peers.host_reads = True
    fin_seq = seq_add(peers.base, len(peers.guest_out))
    deadline = time.monotonic() + timeout
    last = 0.0
    while not peers.host_eof and not peers.host_error and time.monotonic() < deadline:
        if time.monotonic() - last > GUEST_RTO:
            peers.guest.send(FIN | ACK, seq=fin_seq)
            last = time.monotonic()
        host_io(peers)
        guest_receive(peers, 0.01)
    return peers.host_eof


def host_tcp_state(sock: socket.socket) -> int:
    """tcpi_state of the host socket (1 = ESTABLISHED)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def second_connection(listener: socket.socket) -> bool:
    """Whether anything connected to the host peer's listener after the first connection."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


# ---- the migration ----
def migrate(peers: Peers, fe_a: Frontend, target: Backend) -> tuple[Frontend, dict]:
    """Save on the source, load into the target, start the target's rings (as QEMU does);
    the guest carries on over the target's front-end."""
    t0 = time.monotonic()
    state, check_save = fe_a.save_state()
    fe_b = Frontend(target.sock)
    fe_b.negotiate()
    check_load = fe_b.load_state(state)
    fe_b.start()
    fe_b.provide_rx(RX_BUFFERS, 4096)
    peers.guest.fe = fe_b
    fe_a.close()
    peers.host_reads = peers.guest_reads = True
    peers.last_ack = time.monotonic()
    return fe_b, {"state_bytes": len(state), "check_save": check_save, "check_load": check_load,
                  "seconds": round(time.monotonic() - t0, 3)}


def migration_lines(backend: Backend) -> list[str]:
    """The back-end's lines about migration, the repair helper and errors."""
    keys = ("migration", "repair", "ERROR", "WARNING", "--migrate-exit")
    return [ln for ln in backend.log().splitlines() if any(k in ln for k in keys)]


def helper_result(kind: str, proc: subprocess.Popen | None, name: str, workdir: str) -> dict:
    """How the helper ended (it exits when its back-end closes the connection)."""
    if proc is None:
        return {"kind": kind}
    code = wait_exit(proc, 5)
    if code is None:
        code = stop(proc)
        ended = False
    else:
        ended = True
    commands = None
    out = os.path.join(workdir, f"{name}-helper.json")
    if os.path.exists(out):
        with open(out) as f:
            commands = json.load(f)
    return {"kind": kind, "exit": code, "ended_by_itself": ended, "commands": commands,
            "output": tail(os.path.join(workdir, f"{name}-helper.log"))}


def tail(path: str, size: int = 3000) -> str:
    """The end of a text file ("" if it does not exist)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-size:]
    except OSError:
        return ""


def scenario(kind: str, workdir: str, report: dict, procs: list[subprocess.Popen],
             frontends: list[Frontend]) -> None:
    """The whole migration; fills ``report`` as it goes (so a failure still shows progress)."""
    src = start_backend(workdir, "source", "--migrate-exit")
    procs.append(src.proc)
    dst = start_backend(workdir, "target")
    procs.append(dst.proc)
    report["backends"] = {b.name: {"cap_net_admin": cap_net_admin(b.proc.pid)}
                          for b in (src, dst)}
    fe_a = Frontend(src.sock).connect_all()
    frontends.append(fe_a)
    fe_a.provide_rx(RX_BUFFERS, 4096)
    peers = open_connection(fe_a)
    report["phases"] = [stream(peers, "before", SIZES["before"], SIZES["before"])]
    report["phases"].append(leave_in_flight(peers))
    helpers: dict[str, subprocess.Popen | None] = {"source": None, "target": None}
    if kind != "none":
        for backend in (src, dst):
            proc = start_helper(kind, backend, workdir)
            helpers[backend.name] = proc
            procs.append(proc)
    fe_b, report["migration"] = migrate(peers, fe_a, dst)
    frontends.append(fe_b)
    report["phases"].append(stream(peers, "after", SIZES["after"], SIZES["after"]))
    report.update(end_connection(peers))
    report["source_exit"] = wait_exit(src.proc, 10)    # --migrate-exit: it leaves by itself
    fe_b.close()
    report["helpers"] = {name: helper_result(kind, proc, name, workdir)
                         for name, proc in helpers.items()}
    report["logs"] = {b.name: migration_lines(b) for b in (src, dst)}


def end_connection(peers: Peers) -> dict:
    """Close from the guest and sum up what each end saw of the one connection."""
    result = {"host_state_before_close": host_tcp_state(peers.host),
              "host_eof_after_guest_fin": close_from_guest(peers),
              "second_connection": second_connection(peers.listener),
              "guest_saw_rst": peers.guest_rst,
              "host_error": peers.host_error,
              "streams": {"guest_to_host": summary(peers.guest_out, peers.host_got),
                          "host_to_guest": summary(peers.host_out, peers.guest_got)}}
    peers.host.close()
    peers.listener.close()
    return result


def summary(sent: bytes | bytearray, received: bytes | bytearray) -> dict:
    """Sizes and SHA-256 of one direction's payload, as sent and as received."""
    return {"sent": len(sent), "received": len(received), "sha_sent": sha(sent),
            "sha_received": sha(received)}


def sha(data: bytes | bytearray) -> str:
    """SHA-256 hex digest."""
    return hashlib.sha256(data).hexdigest()


def bring_up_loopback() -> None:
    """A new network namespace's loopback starts down."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True,
                   timeout=10)


def run(kind: str) -> dict:
    """The scenario with clean-up by PID; the report (``error`` set if it broke off)."""
    report: dict = {"helper": kind, "error": None, "uid": os.getuid()}
    workdir = tempfile.mkdtemp(prefix="rootless-migrate-")
    procs: list[subprocess.Popen] = []
    frontends: list[Frontend] = []
    t0 = time.monotonic()
    try:
        bring_up_loopback()
        scenario(kind, workdir, report, procs, frontends)
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        report["error"] = traceback.format_exc()
    finally:
        for fe in frontends:
            try:
                fe.close()
            except OSError:
                pass
        report["exit_codes"] = [stop(p) for p in reversed(procs)]
        if report["error"] is not None:
            report["log_tails"] = {name: tail(os.path.join(workdir, f"{name}.log"))
                                   for name in ("source", "target")}
        shutil.rmtree(workdir, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the scenario (or, with --fake-helper, be the fake helper)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helper", choices=("fake", "real", "none"), default="fake")
    parser.add_argument("--fake-helper", nargs=2, metavar=("PATH", "OUT"))
    args = parser.parse_args(argv)
    if args.fake_helper:
        return run_fake_helper(*args.fake_helper)
    report = run(args.helper)
    print(json.dumps(report))
    return 0 if report["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
