# SPDX-License-Identifier: MIT
"""How TCP connections end, through the whole back-end and real rings.

Every byte and then exactly one FIN must reach each side, whatever the order of events: the
host peer's end of stream while the guest has not acknowledged everything (in any phase: an
inbound connection's peer may write and close before the guest even answered the SYN), the
last ACK alone or with data, the RX ring full at the moment of the end, a small guest window;
the guest's FIN while host data is still queued, both FINs crossing, an RST from either side
while data is in flight. Run with the production path (rings and C's steady state) and with
capture on (-p), which must change nothing about the path: C still moves bytes, and the pcap
holds every frame both ways, as the guest sent and saw them, checksums valid. IPv4 and IPv6.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from passt_py.config.conf import config_from_argv
from passt_py.service import Service
from passt_py.tcp.seg import ACK, RST
from tests.frontend import Frontend
from tests.pcap_reader import frames as pcap_frames
from tests.pcap_reader import l4_checksums_ok
from tests.service_rig import GUEST_MAC, OUR_MAC, on_loop
from tests.tcp_guest import GuestConn, GuestStack, synack

GUEST4 = ipaddress.IPv4Address("10.9.8.7")
GW4 = ipaddress.IPv4Address("10.9.8.1")
GUEST6 = ipaddress.IPv6Address("fd00:9::7")
GW6 = ipaddress.IPv6Address("fd00:9::1")
ARGS = ["-a", "10.9.8.7/24", "-g", "10.9.8.1", "-a", "fd00:9::7/64", "-g", "fd00:9::1",
        "-i", "lo", "--no-dhcp", "--no-ndp", "--no-dhcpv6", "--no-ra"]
SIZE = 300_000
LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rig:
    """A Service on its own thread, the test front-end, and the guest's TCP on it; with a
    capture, the frames the guest sent and received, in order."""

    def __init__(self, service: Service, fe: Frontend, version: int, fwd_port: int,
                 pcap: Path | None = None) -> None:
        self.service, self.fe, self.version, self.fwd_port = service, fe, version, fwd_port
        self.pcap = pcap
        self.sent: list[bytes] = []
        self.seen: list[bytes] = []
        if pcap is not None:
            send, recv = fe.send_frame, fe.recv_frames

            def send_frame(frame: bytes, *args, **kw) -> int:
                self.sent.append(bytes(frame))
                return send(frame, *args, **kw)

            def recv_frames(*args, **kw) -> list[bytes]:
                got = recv(*args, **kw)
                self.seen.extend(got)
                return got
            fe.send_frame, fe.recv_frames = send_frame, recv_frames  # type: ignore[method-assign]
        addr, gw = (GUEST4, GW4) if version == 4 else (GUEST6, GW6)
        self.guest = GuestStack(fe, addr, gw, GUEST_MAC, OUR_MAC)
        self.family = socket.AF_INET if version == 4 else socket.AF_INET6
        self.lo = LOOPBACK[version]

    def host_connect(self) -> socket.socket:
        """A host peer connecting to the forwarded port (inbound)."""
        return socket.create_connection((self.lo, self.fwd_port), timeout=5)

    def outbound(self, wnd: int = 1 << 20) -> tuple[GuestConn, socket.socket]:
        """A guest connection to a host listener on loopback, and the accepted socket."""
        with socket.socket(self.family) as lst:
            lst.bind((self.lo, 0))
            lst.listen(1)
            lst.settimeout(5)
            conn = self.guest.connect(lst.getsockname()[1], wnd=wnd)
            host, _ = lst.accept()
        host.settimeout(5)
        return conn, host

    def flows(self) -> int:
        return len(self.service.flows)

    def wait_no_flows(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.flows() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.flows() == 0


@contextmanager
def rig(tmp_path: Path, version: int, capture: bool, rx_buffers: int = 256,
        buf_size: int = 4096) -> Iterator[Rig]:
    """A back-end forwarding one TCP port, with the front-end as its guest."""
    port = _free_port()
    path = str(tmp_path / "vu.sock")
    pcap = tmp_path / "cap.pcap" if capture else None
    extra = ["-t", str(port)] + (["-p", str(pcap)] if pcap else [])
    service = Service(config_from_argv(["--vhost-user", "-s", path, *ARGS, *extra]))
    thread = threading.Thread(target=service.loop.run, daemon=True)
    thread.start()
    fe = Frontend(path, mem_size=64 << 20).connect_all()
    try:
        fe.provide_rx(rx_buffers, buf_size)
        yield Rig(service, fe, version, port, pcap)
    finally:
        fe.close()
        service.loop.stop(0)
        thread.join(5)
        service.close()


def _digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_to_eof(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything the socket gives until end of stream (True) or the timeout (False)."""
    out = bytearray()
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not chunk:
            return bytes(out), True
        out += chunk
    return bytes(out), False


def _guest_closes(r: Rig, c: GuestConn, host: socket.socket,
                  capture: bool | None = None) -> None:
    """The guest ACKs the FIN it got and sends its own: the host sees end of stream and the
    flow goes (then, unless ``capture`` is None, the path is checked; the host end closes)."""
    c.send_fin()
    rest, eof = _read_to_eof(host, 5)
    assert rest == b"" and eof, "the host peer must see the guest's FIN"
    r.guest.run([c], lambda: c.snd_una == c.snd, timeout=5)
    assert c.snd_una == c.snd, "our FIN must be acknowledged"
    assert r.wait_no_flows(), "the connection must be gone on both sides"
    if capture is not None:
        _check_path(r, capture)
        host.close()


def _every_byte_then_one_fin(r: Rig, c: GuestConn, data: bytes, timeout: float = 15.0,
                             ack: bool = True) -> None:
    """The guest gets ``data`` whole, then the FIN, and no second FIN or RST after it."""
    assert r.guest.run([c], lambda: c.fin, timeout=timeout, ack=ack), \
        f"{len(c.data)}/{len(data)} bytes, no FIN"
    assert _digest(c.data) == _digest(data)
    if not ack:
        c.ack()
    r.guest.run([c], lambda: False, timeout=0.3)
    assert c.fins == 1 and c.rsts == 0


both_paths = pytest.mark.parametrize("capture", [False, True], ids=["ring", "capture"])
both_versions = pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])


@both_versions
@both_paths
def test_peer_that_writes_and_closes_before_the_guest_answers_gets_its_fin(
        tmp_path, version: int, capture: bool) -> None:
    """Inbound: the host peer writes and closes while our SYN waits for the guest; the guest
    gets every byte and then exactly one FIN (the end seen before ESTABLISHED was lost)."""
    data = os.urandom(SIZE)
    with rig(tmp_path, version, capture) as r:
        host = r.host_connect()
        c = r.guest.accept(r.fwd_port, answer=False)
        host.sendall(data)
        host.shutdown(socket.SHUT_WR)
        time.sleep(0.2)                         # the end of stream reaches the socket
        synack(c)
        _every_byte_then_one_fin(r, c, data, 10)
        _guest_closes(r, c, host)
        host.close()


def _c_moved(r: Rig) -> int:
    """Bytes C's steady state moved so far (every connection taken back first)."""
    tcp = r.service.tcp
    return on_loop(r.service, lambda: (tcp.fast_release(), tcp.fast_bytes)[1])


def _warm_up(r: Rig, c: GuestConn, host: socket.socket) -> None:
    """Some data each way and ACKed: the connection settles (and C runs it, without -p)."""
    host.sendall(b"h" * 20000)
    assert r.guest.run([c], lambda: len(c.data) == 20000, timeout=5)
    c.send_data(b"g" * 3000)
    got = b""
    while len(got) < 3000:
        got += host.recv(4096)
    r.guest.run([c], lambda: c.snd_una == c.snd, timeout=5)
    c.data.clear()


def _shrink_window(r: Rig, c: GuestConn, wnd: int) -> None:
    """The guest advertises ``wnd`` bytes from now on (segments seen so far forgotten)."""
    c.wnd = wnd
    c.ack()
    r.guest.run([c], lambda: False, timeout=0.1)
    c.segs.clear()


def _check_path(r: Rig, capture: bool) -> None:
    """The path the case is about ran: C's steady state moved bytes, with -p too; and the
    capture has every frame both ways."""
    moved = _c_moved(r)
    assert moved > 0, f"C moved {moved} bytes"
    if capture:
        _check_capture(r)


def _check_capture(r: Rig) -> None:
    """Every frame the guest sent is in the pcap once, in order, as sent (once the back-end
    took them all); every frame it got too, in order, as it got them, followed at most by
    frames it has not read yet; every checksum verifies."""
    assert r.pcap is not None
    deadline = time.monotonic() + 5
    while True:
        frames = pcap_frames(r.pcap, live=True)
        tx = [f for f in frames if f[6:12] == GUEST_MAC]
        if len(tx) >= len(r.sent) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    rx = [f for f in frames if f[6:12] == OUR_MAC]
    assert len(tx) + len(rx) == len(frames)
    assert tx == r.sent, f"{len(tx)} TX records for {len(r.sent)} frames sent"
    assert rx[:len(r.seen)] == r.seen, f"{len(rx)} RX records for {len(r.seen)} frames seen"
    assert r.seen and r.sent
    assert all(l4_checksums_ok(f) for f in frames)


def _connection(r: Rig, inbound: bool, wnd: int = 1 << 20) -> tuple[GuestConn, socket.socket]:
    if not inbound:
        return r.outbound(wnd)
    host = r.host_connect()
    c = r.guest.accept(r.fwd_port, wnd=wnd)
    r.guest.run([c], lambda: False, timeout=0.1)
    return c, host


directions = pytest.mark.parametrize("inbound", [False, True], ids=["out", "in"])


@both_versions
@both_paths
@directions
@pytest.mark.parametrize("last_ack", ["alone", "with-data"])
def test_host_end_while_the_guest_has_not_acked_reaches_the_guest_once(
        tmp_path, version: int, capture: bool, inbound: bool, last_ack: str) -> None:
    """The host peer writes and closes while the guest holds its ACKs back: every byte, then
    one FIN, whether the guest's last ACK comes alone or on a data segment."""
    data = os.urandom(SIZE)
    with rig(tmp_path, version, capture) as r:
        c, host = _connection(r, inbound)
        _warm_up(r, c, host)
        host.sendall(data)
        host.shutdown(socket.SHUT_WR)
        # Take everything in, ACK nothing yet: the end arrives with all of it unacknowledged.
        assert r.guest.run([c], lambda: len(c.data) == SIZE, timeout=10, ack=False)
        assert not c.fin
        time.sleep(0.1)
        if last_ack == "alone":
            c.ack()
        else:
            c.send_data(b"last words")
        _every_byte_then_one_fin(r, c, data, 10, ack=False)
        if last_ack == "with-data":
            assert host.recv(100) == b"last words"
        _guest_closes(r, c, host, capture)


@both_versions
@both_paths
@directions
def test_host_end_with_the_rx_ring_full_reaches_the_guest_once(
        tmp_path, version: int, capture: bool, inbound: bool) -> None:
    """The host's data and end arrive while the guest offers no RX buffers: once it offers
    them again, every byte and one FIN."""
    data = os.urandom(SIZE)
    with rig(tmp_path, version, capture, rx_buffers=64) as r:
        c, host = _connection(r, inbound)
        _warm_up(r, c, host)
        # Use up the ring without giving buffers back, then let the host write and close.
        host.sendall(data)
        host.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r.guest.poll(0.05, recycle=False)
            if r.fe.rings[1].free == [] or len(c.data) == SIZE:
                break
        assert len(c.data) < SIZE, "the ring should have run full first"
        time.sleep(0.2)
        r.fe.provide_rx(256, 4096)
        _every_byte_then_one_fin(r, c, data, 15)
        _guest_closes(r, c, host, capture)


@both_versions
@both_paths
@directions
def test_host_end_behind_a_small_guest_window_reaches_the_guest_once(
        tmp_path, version: int, capture: bool, inbound: bool) -> None:
    """A guest window of 8 KiB: the end of stream waits behind many window's worth of data,
    then comes once after the last byte."""
    data = os.urandom(100_000)
    with rig(tmp_path, version, capture) as r:
        c, host = _connection(r, inbound)
        _warm_up(r, c, host)
        _shrink_window(r, c, 8192)
        host.sendall(data)
        host.shutdown(socket.SHUT_WR)
        _every_byte_then_one_fin(r, c, data, 15)
        assert max(len(s.payload) for s in c.segs) <= 8192
        _guest_closes(r, c, host, capture)


@both_versions
@both_paths
@directions
def test_guest_fin_while_host_data_waits_still_delivers_it(
        tmp_path, version: int, capture: bool, inbound: bool) -> None:
    """The guest closes its side while host data waits behind its window: the host sees the
    end at once, and the guest still gets every host byte, then one FIN."""
    data = os.urandom(100_000)
    with rig(tmp_path, version, capture) as r:
        c, host = _connection(r, inbound)
        _warm_up(r, c, host)
        _shrink_window(r, c, 8192)
        host.sendall(data)
        r.guest.run([c], lambda: len(c.data) > 0, timeout=5, ack=False)
        c.send_fin()
        rest, eof = _read_to_eof(host, 5)
        assert eof and rest == b"", "the host must see the guest's end of stream"
        host.shutdown(socket.SHUT_WR)
        _every_byte_then_one_fin(r, c, data, 15)
        assert c.snd_una == c.snd, "our FIN must be acknowledged"
        assert r.wait_no_flows()
        _check_path(r, capture)
        host.close()


@both_versions
@both_paths
@directions
def test_fins_crossing_with_data_both_ways_end_cleanly(
        tmp_path, version: int, capture: bool, inbound: bool) -> None:
    """Both sides send their last data and FIN at the same moment: each gets every byte and
    the other's end, and the connection is gone."""
    to_guest, to_host = os.urandom(SIZE), os.urandom(20_000)
    with rig(tmp_path, version, capture) as r:
        c, host = _connection(r, inbound)
        _warm_up(r, c, host)
        host.sendall(to_guest)
        host.shutdown(socket.SHUT_WR)
        for k in range(0, len(to_host), 1400):
            c.send_data(to_host[k:k + 1400], kick=False)
        c.send_fin()
        got, eof = _read_to_eof(host, 10)
        assert eof and _digest(got) == _digest(to_host)
        assert r.guest.run([c], lambda: c.fin, timeout=10), f"{len(c.data)}/{SIZE}, no FIN"
        assert _digest(c.data) == _digest(to_guest)
        r.guest.run([c], lambda: c.snd_una == c.snd, timeout=5)
        assert c.snd_una == c.snd and c.fins == 1 and c.rsts == 0
        assert r.wait_no_flows()
        _check_path(r, capture)
        host.close()


@both_versions
@both_paths
@directions
def test_guest_rst_with_data_in_flight_resets_the_host_peer(
        tmp_path, version: int, capture: bool, inbound: bool) -> None:
    """An RST from the guest while host data is unacknowledged: the host peer's connection is
    reset (not ended cleanly), and the flow is gone."""
    with rig(tmp_path, version, capture) as r:
        c, host = _connection(r, inbound)
        _warm_up(r, c, host)
        host.sendall(os.urandom(SIZE))
        r.guest.run([c], lambda: len(c.data) > 0, timeout=5, ack=False)
        c.send(RST | ACK)
        host.settimeout(5)
        with pytest.raises(ConnectionResetError):
            for _ in range(100):
                if not host.recv(1 << 16):
                    break
                time.sleep(0.02)
            host.sendall(b"x" * 100000)
        assert r.wait_no_flows()
        _check_path(r, capture)
        host.close()


@both_versions
@both_paths
@directions
def test_host_rst_with_data_in_flight_resets_the_guest(
        tmp_path, version: int, capture: bool, inbound: bool) -> None:
    """The host peer aborts (RST) while its data is unacknowledged by the guest: the guest gets
    an RST, no FIN, and the flow is gone."""
    with rig(tmp_path, version, capture) as r:
        c, host = _connection(r, inbound)
        _warm_up(r, c, host)
        host.sendall(os.urandom(SIZE))
        r.guest.run([c], lambda: len(c.data) > 0, timeout=5, ack=False)
        host.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        host.close()
        assert r.guest.run([c], lambda: c.rsts > 0, timeout=5, ack=False), "no RST"
        assert not c.fin
        assert r.wait_no_flows()
        _check_path(r, capture)
