# SPDX-License-Identifier: MIT
"""TCP through the whole back-end and real rings: the test front-end plays the guest driver.

Here guest data leaves from guest memory (TcpHandler.take_batch, zero copy) and host data is
peeked by C into the RX buffers the front-end offers (RingDataPath): the paths the real-guest
tests use, checked byte for byte without QEMU.
"""
from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time

import pytest

from passt_py.tcp.conn import S_FAST_RETRANSMITS, S_TO_GUEST, S_TO_HOST
from passt_py.tcp.seg import ACK, FIN, PSH, seq_add, seq_diff
from tests.frontend import Frontend
from tests.l4_helpers import recv_exactly
from tests.service_rig import GUEST, GUEST_MAC, GW, OUR_MAC, Guest, on_loop, service_with_frontend


@pytest.fixture()
def backend(tmp_path):
    with service_with_frontend(tmp_path, 200) as rig:
        yield rig


def _listener() -> socket.socket:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    lst.settimeout(5)
    return lst


def test_tcp_both_ways_through_real_rings(backend) -> None:
    """2 MB each way through the rings: zero-copy TX, C-built RX segments, SHA-256 equal."""
    service, fe = backend
    lst = _listener()
    g = Guest(fe, lst.getsockname()[1])
    g.connect()
    host, _ = lst.accept()
    host.settimeout(5)
    lst.close()
    # Guest -> host: MSS-sized segments, 32 per kick (one TX batch), ACKed as they are taken.
    data = os.urandom(2 << 20)
    got = bytearray()
    pos = 0
    deadline = time.monotonic() + 30
    while len(got) < len(data) and time.monotonic() < deadline:
        base = seq_diff(g.snd, seq_add(g.isn, 1))
        for seg in g.segments(0.01):
            if seg.flags & ACK:
                acked = seq_diff(seg.ack, seq_add(g.isn, 1))
                pos = max(pos, acked)
        pos = max(pos, 0)
        if base < len(data) and base - pos < 256 << 10:
            for _ in range(32):
                chunk = data[base:base + 1460]
                if not chunk:
                    break
                g.send(ACK, chunk, kick=False)
                g.snd = seq_add(g.snd, len(chunk))
                base += len(chunk)
            fe.kick_tx()
            fe.wait_tx_used(1, 1)
        host.setblocking(False)
        try:
            while True:
                chunk = host.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
        except BlockingIOError:
            pass
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    tcp = service.tcp
    flow = next(iter(service.flows))
    # The steady state ran in C (csrc/fast_tcp.c); taken back, its counts are the whole.
    on_loop(service, tcp.fast_release)
    assert tcp.fast_bytes > 0
    assert flow.data.core.stats[S_TO_HOST] == len(data)
    # Host -> guest: the C path places the segments in our RX buffers.
    back = os.urandom(2 << 20)
    host.setblocking(True)
    sender = threading.Thread(target=lambda: (host.sendall(back), host.shutdown(socket.SHUT_WR)),
                              daemon=True)
    sender.start()
    deadline = time.monotonic() + 30
    while not g.fin and time.monotonic() < deadline:
        if g.segments(0.05):
            g.send(ACK)
    sender.join(5)
    assert hashlib.sha256(g.data).digest() == hashlib.sha256(back).digest()
    assert tcp.datapath.frames_sent > 0
    g.send(FIN | ACK)
    g.snd = seq_add(g.snd, 1)
    deadline = time.monotonic() + 5
    while len(service.flows) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(service.flows) == 0
    assert host.recv(10) == b""
    host.close()


def test_hostile_tcp_frames_through_real_rings(backend) -> None:
    """Garbage TCP frames on TX never hurt the back-end; a connection opened later works."""
    service, fe = backend
    lst = _listener()
    g = Guest(fe, lst.getsockname()[1], sport=43300)
    rng = random.Random(7)
    good = bytearray(g.tpl.control(OUR_MAC, GUEST_MAC, 1, 2, ACK, 100, b"", b"x" * 40))
    for n in range(300):
        frame = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            frame[rng.randrange(14, len(frame))] = rng.randrange(256)
        frame = frame[:rng.randrange(14, len(frame) + 1)]
        fe.send_frame(bytes(frame), kick=False)
        if n % 32 == 31:
            fe.kick_tx()
            assert len(fe.wait_tx_used(32, 2)) >= 32
    fe.kick_tx()
    g.segments(0.3)            # RSTs for unknown tuples, nothing else
    g.connect()
    host, _ = lst.accept()
    g.send(ACK, b"still fine")
    host.settimeout(5)
    assert host.recv(100) == b"still fine"
    host.close()
    lst.close()


def test_duplicate_acks_in_one_batch_trigger_fast_retransmit(backend) -> None:
    """Bare ACKs taken straight from the TX batch get the full ACK handling: a guest that
    missed a segment and sends duplicate ACKs (four ACKs in one kick) gets the data again from
    its ACK point, and the stream then completes intact."""
    service, fe = backend
    lst = _listener()
    g = Guest(fe, lst.getsockname()[1])
    g.connect()
    host, _ = lst.accept()
    lst.close()
    back = os.urandom(64 << 10)
    host.sendall(back)
    segs: list = []
    deadline = time.monotonic() + 5
    while sum(len(s.payload) for s in segs) < len(back) and time.monotonic() < deadline:
        segs += [s for s in g.segments(0.05) if s.payload]
    assert len(segs) >= 2, "host data did not arrive in several segments"
    # Pretend the second segment was lost: acknowledge the first only, four times.
    g.rcv = seq_add(segs[0].seq, len(segs[0].payload))
    g.data = bytearray(segs[0].payload)
    before = service.tcp.retransmits
    for _ in range(4):
        g.send(ACK, kick=False)
    fe.kick_tx()
    deadline = time.monotonic() + 5
    while len(g.data) < len(back) and time.monotonic() < deadline:
        if g.segments(0.05):
            g.send(ACK)
    flow = next(iter(service.flows))
    assert flow.data.core.stats[S_FAST_RETRANSMITS] == 1, \
        "no fast retransmit (only a timeout would resend)"
    assert service.tcp.retransmits == before + 1
    assert hashlib.sha256(g.data).digest() == hashlib.sha256(back).digest()
    host.close()


def test_frames_for_a_full_rx_ring_wait_for_buffers_instead_of_dropping(tmp_path) -> None:
    """The guest's RX ring runs but has no buffer: replies (here six ARP replies, after the
    link's own ARP probe) wait, in order, and all arrive once the guest offers buffers;
    none is dropped (a dropped ACK stalls the guest's TCP, a dropped ARP reply its traffic)."""
    from scapy.layers.l2 import ARP, Ether
    with service_with_frontend(tmp_path, 0) as (service, fe):
        for k in range(6):
            fe.send_frame(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=GUEST_MAC) /
                                ARP(op=1, hwsrc=GUEST_MAC, psrc=str(GUEST), pdst=str(GW))),
                          kick=False)
        fe.kick_tx()
        fe.wait_tx_used(6, timeout=5)
        time.sleep(0.2)                       # the back-end had its turn with a full ring
        assert fe.recv_frames(1, timeout=0.1) == []
        fe.provide_rx(16, 4096)
        frames = fe.recv_frames(16, timeout=2)
        replies = [f for f in frames if ARP in Ether(f) and Ether(f)[ARP].op == 2]
        assert len(replies) == 6 and all(Ether(f)[ARP].psrc == str(GW) for f in replies)
        assert service.link.dropped_rx == 0


def test_frames_held_for_a_guest_that_never_offers_buffers_stay_bounded(tmp_path) -> None:
    """A guest that keeps asking (3000 ARP requests) but never offers an RX buffer: the
    back-end holds at most tap.HOLD_MAX replies, counts the rest as dropped, and still
    answers once buffers come."""
    from scapy.layers.l2 import ARP, Ether

    from passt_py.link.tap import HOLD_MAX
    request = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=GUEST_MAC) /
                    ARP(op=1, hwsrc=GUEST_MAC, psrc=str(GUEST), pdst=str(GW)))
    with service_with_frontend(tmp_path, 0) as (service, fe):
        for _ in range(30):
            for _ in range(100):
                fe.send_frame(request, kick=False)
            fe.kick_tx()
            fe.wait_tx_used(100, timeout=5)
        time.sleep(0.2)
        assert service.link.held == HOLD_MAX and service.link.dropped_rx >= 3000 - HOLD_MAX
        fe.provide_rx(64, 4096)
        frames = fe.recv_frames(64, timeout=2)
        assert sum(1 for f in frames if ARP in Ether(f) and Ether(f)[ARP].op == 2) >= 63


def _connected(fe: Frontend, sport: int) -> tuple[Guest, socket.socket]:
    """A guest connection from ``sport`` to a fresh host listener: (guest end, host end)."""
    lst = _listener()
    g = Guest(fe, lst.getsockname()[1], sport=sport)
    g.connect()
    host, _ = lst.accept()
    host.settimeout(5)
    lst.close()
    return g, host


def _exchange(g: Guest, host: socket.socket, k: int) -> None:
    """One request from the guest (carrying the ACK of the last reply), echoed reversed."""
    req = b"request %d " % k + os.urandom(k % 50)
    g.send(ACK | PSH, req)
    g.snd = seq_add(g.snd, len(req))
    assert recv_exactly(host, len(req)) == req
    host.sendall(req[::-1])
    want = len(g.data) + len(req)
    deadline = time.monotonic() + 5
    while len(g.data) < want and time.monotonic() < deadline:
        g.segments(0.05)
    assert bytes(g.data[-len(req):]) == req[::-1]


def test_request_response_runs_in_c_and_survives_a_new_guest_mac(backend) -> None:
    """200 exchanges on one connection: each request reaches the host and each reply the
    guest intact; after the first ones C runs the connection (its counters say so). The guest
    changes its MAC halfway: C's templates are taken back with the connection's state and the
    replies go to the new address, the stream continuing without a gap or a reset."""
    from scapy.layers.l2 import ARP, Ether
    service, fe = backend
    g, host = _connected(fe, 43220)
    for k in range(100):
        _exchange(g, host, k)
    new_mac = bytes.fromhex("525400654321")
    fe.send_frame(bytes(Ether(src=new_mac.hex(":"), dst="ff:ff:ff:ff:ff:ff") /
                        ARP(op=1, hwsrc=new_mac.hex(":"), psrc=str(GUEST), pdst=str(GW))))
    g.mac = new_mac
    seen: list[bytes] = []
    orig = fe.recv_frames

    def recv_frames(count: int = 1, timeout: float | None = None, **kw):
        frames = orig(count, timeout=timeout, **kw)
        seen.extend(f[:6] for f in frames if f[12:14] == b"\x08\x00")
        return frames
    fe.recv_frames = recv_frames
    for k in range(100, 200):
        _exchange(g, host, k)
    assert seen and set(seen[-50:]) == {new_mac}
    assert not g.rst
    on_loop(service, service.tcp.fast_release)
    assert service.tcp.fast_bytes > 0
    c = next(iter(service.flows)).data
    assert c.core.stats[S_TO_HOST] == c.core.stats[S_TO_GUEST] == sum(len(b"request %d " % k) + k % 50 for k in range(200))
    host.close()


def test_connection_sockets_get_big_buffers_where_the_system_allows(backend) -> None:
    """Where net.core.wmem_max/rmem_max allow big buffers (4/2 MiB), a new connection's socket
    asks for a big one from the start (the kernel doubles the value): autotuning grows a send
    buffer only after the guest's data found it full. An eighth of the limit is left, so that
    a full queue can be rebuilt on a migration target without forced sizes. Below, the socket
    keeps the kernel's autotuned default."""
    service, fe = backend
    g, host = _connected(fe, 43222)
    c = next(iter(service.flows)).data
    sizes = on_loop(service, lambda: (c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                                      c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)))
    for (size, name, big) in zip(sizes, ("wmem_max", "rmem_max"), (4 << 20, 2 << 20)):
        limit = int(open(f"/proc/sys/net/core/{name}").read())
        if limit >= big:
            assert size == 2 * (limit - limit // 8), name
        else:
            assert size < 2 * limit, name
    host.close()


def test_a_connection_busy_only_in_c_does_not_expire_and_an_idle_one_does(tmp_path) -> None:
    """With a 0.5 s idle timeout: exchanges that all go through C for 2 s keep the
    connection (its expiry asks C for activity); once idle it is reset."""
    with service_with_frontend(tmp_path, 200) as (service, fe):
        service.tcp.idle_timeout = 0.5
        service.flows._sweep_interval = 0.1
        g, host = _connected(fe, 43221)
        deadline = time.monotonic() + 2.0
        k = 0
        while time.monotonic() < deadline:
            _exchange(g, host, k)
            k += 1
            time.sleep(0.05)
        assert len(service.flows) == 1 and not g.rst
        end = time.monotonic() + 5
        while len(service.flows) and time.monotonic() < end:
            time.sleep(0.05)
        assert len(service.flows) == 0, "an idle connection never expired"
        assert service.fast.stats().tcp_entries == 0
        host.close()
