# SPDX-License-Identifier: MIT
"""Faults against a real passt-py process: front-ends that vanish, host peers that vanish,
a guest that stops reading its RX ring while the host keeps sending.

Host peers are UDP sockets on 127.0.0.1 (the guest reaches them through its gateway address,
mapped to the host's loopback). Numbers (descriptors, CPU, RSS) are printed; run with -s.
"""
from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
import time

import pytest

from tests import frames
from tests.frontend import Frontend, spawn_passt_py
from tests.procs import stop

GUEST4 = ipaddress.IPv4Address("10.200.0.2")
GW4 = ipaddress.IPv4Address("10.200.0.1")
ADDR = ["-a", f"{GUEST4}/24", "-g", str(GW4)]
TICK = os.sysconf("SC_CLK_TCK")

# The guest's frames (tests/frames.py) with this file's addressing.
udp_frame = functools.partial(frames.udp4_frame, src=GUEST4, dst=GW4)
tcp_frame = functools.partial(frames.tcp4_frame, src=GUEST4, dst=GW4)
arp_request = functools.partial(frames.arp_request, sender=GUEST4, target=GW4)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    """What each of the process's descriptors refers to (for failure messages)."""
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}:{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


def idle_in_event_loop(pid: int) -> bool:
    """True when the process sleeps in epoll_wait: passt-py's set-up is over (its loop only
    starts once everything is open and privileges are dropped) and nothing is being handled."""
    with open(f"/proc/{pid}/wchan") as f:
        return "epoll" in f.read()


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])        # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def echo_socket() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s, s.getsockname()[1]


@pytest.fixture
def passt(tmp_path):
    path = str(tmp_path / "passt-py.sock")
    proc = spawn_passt_py(path, ADDR)
    yield path, proc
    stop(proc)


def guest_arp_works(fe: Frontend) -> bool:
    for _ in range(10):
        fe.send_frame(arp_request())
        for f in fe.recv_frames(8, timeout=0.3):
            if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02":
                return True
    return False


def test_frontend_disconnect_closes_the_guests_flows(passt):
    """A front-end that goes away takes its flows with it: the sockets are closed, and the next
    front-end is served from a clean table."""
    path, proc = passt
    echo, port = echo_socket()
    with echo:
        with Frontend(path) as fe:
            fe.connect_all()
            fe.provide_rx(64)
            assert guest_arp_works(fe)
            base = fd_count(proc.pid)
            for i in range(50):
                fe.send_frame(udp_frame(20000 + i, port, b"flow"))
            for _ in range(50):
                echo.recvfrom(64)
            with_flows = fd_count(proc.pid)
            assert with_flows - base >= 50
        assert wait_for(lambda: fd_count(proc.pid) <= base - 4, 5), (
            f"descriptors after disconnect: {fd_count(proc.pid)}, before flows {base}")
        after = fd_count(proc.pid)
        print(f"\nfds: connected {base}, with 50 flows {with_flows}, after disconnect {after}")
        with Frontend(path) as fe:
            fe.connect_all()
            fe.provide_rx(64)
            assert guest_arp_works(fe)
            fe.send_frame(udp_frame(20000, port, b"again"))
            assert echo.recvfrom(64)[0] == b"again"
    assert proc.poll() is None


def test_flow_table_is_empty_after_the_frontend_leaves(tmp_path):
    """In-process service: UDP, ping and TCP flows of a guest are all gone from the flow table
    once its front-end disconnects; the next front-end starts from nothing."""
    import threading

    from passt_py.config.conf import config_from_argv
    from passt_py.service import Service
    path = str(tmp_path / "svc.sock")
    service = Service(config_from_argv(["--vhost-user", "-s", path, *ADDR[:4]]))
    thread = threading.Thread(target=service.loop.run, daemon=True)
    thread.start()
    echo, port = echo_socket()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    try:
        with echo, Frontend(path) as fe:
            fe.connect_all()
            fe.provide_rx(128)
            for i in range(20):
                fe.send_frame(udp_frame(24000 + i, port, b"u"))
            for i in range(5):
                fe.send_frame(tcp_frame(25000 + i, lsock.getsockname()[1], 0x02, 1))
            assert wait_for(lambda: len(service.flows) >= 25), len(service.flows)
        assert wait_for(lambda: len(service.flows) == 0), (
            f"{len(service.flows)} flows left after the front-end went away")
        with Frontend(path) as fe:
            fe.connect_all()
            fe.provide_rx(16)
            assert guest_arp_works(fe)
    finally:
        lsock.close()
        service.loop.stop(0)
        thread.join(5)
        service.close()


def test_repeated_reconnects_do_not_leak(passt):
    """Twenty connect/traffic/disconnect cycles, the first one included, leave the descriptor
    count where it was before any front-end connected."""
    path, proc = passt
    # The baseline is taken before the first cycle, once the back-end sleeps in its event loop:
    # spawn_passt_py() returns as soon as the vhost-user socket exists, while the set-up still
    # opens the repair helper's listening socket, loads the drop filter (a BPF program) and
    # forks the clean-up process of passt_py.config.privileges (keeping one end of a pipe to it).
    # That is all the one-time state there is: no shared object is created lazily by a first
    # front-end (checked: fd by fd, the first cycle leaves exactly what the set-up left), so
    # everything a front-end brings (its socket, kick/call eventfds, memory, its flows'
    # sockets) must go with it.
    assert wait_for(lambda: idle_in_event_loop(proc.pid)), "passt-py never reached its loop"
    base = fd_count(proc.pid)
    echo, port = echo_socket()
    with echo:
        for cycle in range(20):
            with Frontend(path) as fe:
                fe.connect_all()
                fe.provide_rx(16)
                fe.send_frame(udp_frame(21000 + cycle, port, b"c"))
                echo.recvfrom(64)
            assert wait_for(lambda: fd_count(proc.pid) == base, 3), (
                f"cycle {cycle}: {fd_count(proc.pid)} descriptors, {base} before the first "
                f"front-end: {fd_targets(proc.pid)}")
    time.sleep(0.1)
    assert fd_count(proc.pid) == base, fd_targets(proc.pid)


def test_vanished_udp_peer_gives_the_guest_an_icmp_error(passt):
    """A datagram to a host port nobody listens on comes back as ICMP port unreachable."""
    path, proc = passt
    gone, port = echo_socket()
    gone.close()
    with Frontend(path) as fe:
        fe.connect_all()
        fe.provide_rx(64)
        fe.send_frame(udp_frame(22000, port, b"anyone?"))
        deadline = time.monotonic() + 5
        found = False
        while not found and time.monotonic() < deadline:
            for f in fe.recv_frames(8, timeout=0.3):
                if f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 3 and f[35] == 3:
                    found = True
        assert found, "no ICMP port unreachable for the guest"
        assert guest_arp_works(fe)


def test_guest_not_reading_rx_while_the_host_floods(passt):
    """The guest offers no RX buffers while a host peer sends 20,000 datagrams: no busy loop
    (CPU near idle once the flood stops), RSS bounded, and traffic resumes afterwards."""
    path, proc = passt
    echo, port = echo_socket()
    with echo, Frontend(path) as fe:
        fe.connect_all()
        fe.send_frame(udp_frame(23000, port, b"hi"))
        _, peer = echo.recvfrom(64)
        time.sleep(0.5)
        rss0, cpu0, t0 = rss_kib(proc.pid), cpu_ticks(proc.pid), time.monotonic()
        payload = b"x" * 1000
        for i in range(20000):
            echo.sendto(payload, peer)
            if i % 1000 == 999:
                time.sleep(0.05)                      # bounded rate: ~1000 datagrams / 50 ms
        cpu1, t1 = cpu_ticks(proc.pid), time.monotonic()
        time.sleep(3.0)
        cpu2, t2 = cpu_ticks(proc.pid), time.monotonic()
        rss2 = rss_kib(proc.pid)
        flood_cpu = (cpu1 - cpu0) / TICK / (t1 - t0)
        idle_cpu = (cpu2 - cpu1) / TICK / (t2 - t1)
        print(f"\nRX stalled: CPU during flood {flood_cpu:.0%}, after flood {idle_cpu:.0%}; "
              f"RSS {rss0} -> {rss2} KiB")
        assert idle_cpu < 0.10, f"back-end busy ({idle_cpu:.0%} CPU) with a stalled RX ring"
        assert rss2 - rss0 < 64 * 1024, "RSS grew by more than 64 MiB"
        fe.provide_rx(64)
        assert guest_arp_works(fe)
        echo.sendto(b"after", peer)
        deadline = time.monotonic() + 5
        got = False
        while not got and time.monotonic() < deadline:
            got = any(f.endswith(b"after") for f in fe.recv_frames(64, timeout=0.3))
        assert got, "traffic did not resume once the guest offered buffers"


def tcp_segments(fe: Frontend, port: int, timeout: float = 5.0, want: int = 0) -> list[bytes]:
    """TCP frames for guest port ``port`` until one has a flag of ``want`` (or time runs out)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in fe.recv_frames(16, timeout=0.2):
            if (f[12:14] == b"\x08\x00" and f[23] == 6
                    and struct.unpack_from("!H", f, 36)[0] == port):
                got.append(f)
                if want and f[47] & want:
                    return got
    return got


def test_host_peer_reset_reaches_the_guest_as_rst(passt):
    """A host peer that accepts, then resets: the guest's connection gets an RST; a peer that
    vanished (nobody listens) answers the guest's SYN with an RST; the back-end serves on."""
    path, proc = passt
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    with Frontend(path) as fe:
        fe.connect_all()
        fe.provide_rx(128)
        fe.send_frame(tcp_frame(43000, port, 0x02, 1000))
        synack = [f for f in tcp_segments(fe, 43000, want=0x12) if f[47] & 0x12 == 0x12]
        assert synack, "no SYN-ACK"
        isn = struct.unpack_from("!I", synack[0], 38)[0]
        fe.send_frame(tcp_frame(43000, port, 0x10, 1001, isn + 1))
        lsock.settimeout(5)
        conn, _ = lsock.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()                                         # RST to the back-end
        rst = [f for f in tcp_segments(fe, 43000, want=0x04) if f[47] & 0x04]
        assert rst, "the host peer's reset did not reach the guest"
        lsock.close()                                        # now nobody listens there
        fe.send_frame(tcp_frame(43001, port, 0x02, 5000))
        rst = [f for f in tcp_segments(fe, 43001, want=0x04) if f[47] & 0x04]
        assert rst, "a SYN to a vanished peer was not answered with an RST"
        assert guest_arp_works(fe)
    assert proc.poll() is None


# ---- a real QEMU restarted against a running passt-py ----
@pytest.mark.qemu
def test_qemu_restart_against_a_running_passt_py(guest_image, guest_netns):
    """Boot, ping, stop QEMU, boot again on the same socket: the same passt-py serves the new
    guest, and each guest's descriptors were released (back to the count before the first)."""
    import sys
    import tempfile
    from pathlib import Path

    from tests.guest.boot import boot_guest, start_backend

    def factory(sock: Path) -> list[str]:
        return [sys.executable, "-m", "passt_py", "-f", "-d", "--vhost-user", "-s", str(sock)]

    workdir = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    workdir.chmod(0o755)
    backend = start_backend(factory, workdir, guest_netns, name="passt-py")
    try:
        # Before the first guest, once the set-up is over (see test_repeated_reconnects_do_not_
        # leak): a leak of the first guest's descriptors must show, not become the baseline.
        assert wait_for(lambda: idle_in_event_loop(backend.pid), 10)
        counts = [fd_count(backend.pid)]
        for round_ in range(2):
            with boot_guest(None, guest_netns, True, image=guest_image, backend=backend,
                            name=f"guest{round_}") as guest:
                rc, out = guest.run("ping -c2 -W5 10.200.0.1", timeout=30)
                assert rc == 0, out
                counts.append(fd_count(backend.pid))
            assert backend.proc.poll() is None, backend.output()
            assert wait_for(lambda: fd_count(backend.pid) == counts[0], 10), (
                f"guest {round_ + 1} gone: {fd_count(backend.pid)} descriptors, {counts[0]} "
                f"before the first guest: {fd_targets(backend.pid)}")
            counts.append(fd_count(backend.pid))
        print(f"\npasst-py fds: before {counts[0]}, guest 1 {counts[1]}, after {counts[2]}, "
              f"guest 2 {counts[3]}, after {counts[4]}")
    finally:
        backend.stop()
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
