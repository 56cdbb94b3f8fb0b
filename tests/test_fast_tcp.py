# SPDX-License-Identifier: MIT
"""The TCP steady state in C (csrc/fast_tcp.c through core.FastPath) on real rings.

A loopback TCP connection plays the host side (our socket and its peer), the test drives the
guest side through the rings. Checked: in-order guest data reaches the peer intact with one
ACK for the round; host data reaches the RX ring as segments at the right sequence numbers,
the guest's ACK discards it from the socket; the host's data is shared out per event (more
list) without loss; every frame C does not handle (gap, duplicate ACK, FIN, RST, SYN, an ACK
of data never sent) ends its share of the batch and Python's pop finds exactly the rest; a
socket that refuses data, a ring without RX buffers, a timer to arm hand the connection back
with their reason, after which its events are Python's; taking a connection back returns the
state C advanced.
"""
from __future__ import annotations

import array
import fcntl
import hashlib
import os
import select
import socket
import struct
import termios
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from scapy.all import IP, TCP, Ether, raw

from passt_py import core
from passt_py.core import CoreError
from tests.conftest import hypothesis_budget
from tests.l4_helpers import recv_exactly
# conn, rig, wait: fixtures, used by name
from tests.fast_tcp_rig import (ACK0, SEQ0, SO_PEEK_OFF, conn, fast_state,  # noqa: F401
                                register, seg, take)
from tests.ring_rig import HDR, Wait, rig, wait  # noqa: F401


def _queue_stream(r, data: bytes, size: int, flags: str = "A") -> int:
    """In-order guest segments of ``size`` bytes carrying ``data`` from ACK0 on; how many."""
    count = (len(data) + size - 1) // size
    for k in range(count):
        r.tx.add_tx_buffer(seg(ACK0 + size * k, SEQ0, flags, data[size * k:size * (k + 1)]),
                           bytes(HDR))
    return count


def _queued(sock: socket.socket) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


def _until_queued(sock: socket.socket, n: int) -> None:
    deadline = time.monotonic() + 5
    while _queued(sock) < n and time.monotonic() < deadline:
        time.sleep(0.001)
    assert _queued(sock) >= n


def _tcp_frames(r) -> list:
    """The TCP segments published on the RX ring, as scapy packets (checksums verified)."""
    out = []
    for _hdr, frame, _n in r.rx_frames():
        pkt = Ether(frame)
        assert TCP in pkt
        got_tcp, got_ip = pkt[TCP].chksum, pkt[IP].chksum
        del pkt[TCP].chksum, pkt[IP].chksum
        again = Ether(raw(pkt))
        assert (again[TCP].chksum, again[IP].chksum) == (got_tcp, got_ip)
        out.append(Ether(frame))
    return out


def test_guest_data_reaches_the_peer_and_earns_one_ack(rig, wait, conn):
    """Twenty in-order segments in one kick: nothing for Python, the peer gets every byte, the
    guest one ACK of all of them; taken back, the state says so."""
    ours, peer = conn
    r = rig()
    r.rx.add_rx_buffers(16, 4096)
    kick = register(wait, r, ours)
    data = os.urandom(20 * 1400)
    _queue_stream(r, data, 1400, "PA")
    os.eventfd_write(kick, 1)
    assert wait.poll() == []
    assert hashlib.sha256(recv_exactly(peer, len(data))).digest() == \
        hashlib.sha256(data).digest()
    assert len(r.tx.pop_used()) == 20
    acks = _tcp_frames(r)
    assert [(p[TCP].seq, p[TCP].ack, str(p[TCP].flags)) for p in acks] == \
        [(SEQ0, ACK0 + len(data), "A")]
    assert acks[0][TCP].window > 0
    s = take(wait, ours)
    assert (s.tmpl.ack, s.acked_to_guest, s.to_host, s.back) == \
        (ACK0 + len(data), ACK0 + len(data), len(data), 0)
    assert s.wnd_from_guest == 8192 << 7
    os.close(kick)


def test_host_data_reaches_the_ring_and_the_guest_ack_discards_it(rig, wait, conn):
    """50,000 bytes from the peer become segments of at most the MSS from SEQ0 on, intact;
    the guest's ACK of all of them empties our receive queue and stops the timer."""
    ours, peer = conn
    r = rig()
    r.rx.add_rx_buffers(100, 4096)
    kick = register(wait, r, ours)
    data = os.urandom(50000)
    peer.sendall(data)
    _until_queued(ours, len(data))
    assert wait.poll() == []
    segs = _tcp_frames(r)
    assert all(len(p[TCP].payload) <= 1460 for p in segs)
    assert [p[TCP].seq for p in segs] == \
        [SEQ0 + sum(len(q[TCP].payload) for q in segs[:k]) for k in range(len(segs))]
    assert b"".join(bytes(p[TCP].payload) for p in segs) == data
    assert _queued(ours) == len(data)              # peeked, kept until acknowledged
    r.tx.add_tx_buffer(seg(ACK0, SEQ0 + len(data)), bytes(HDR))
    os.eventfd_write(kick, 1)
    assert wait.poll() == []
    assert _queued(ours) == 0
    s = take(wait, ours)
    assert (s.una, s.tmpl.seq, s.to_guest, s.deadline, s.back) == \
        (SEQ0 + len(data), SEQ0 + len(data), len(data), 0, 0)
    os.close(kick)


def test_host_data_beyond_the_share_per_event_goes_out_in_the_same_wait(rig, wait, conn):
    """With 1,000 bytes per event, 30,000 bytes still all arrive within one wait, in order
    (the more list, not a busy loop through Python)."""
    ours, peer = conn
    r = rig()
    r.rx.add_rx_buffers(100, 4096)
    register(wait, r, ours)
    wait.fast.set_tcp(0, 0, 1000, 0xFFFF << 8)
    data = os.urandom(30000)
    peer.sendall(data)
    _until_queued(ours, len(data))
    assert wait.poll() == []
    segs = _tcp_frames(r)
    assert b"".join(bytes(p[TCP].payload) for p in segs) == data
    assert max(len(p[TCP].payload) for p in segs) <= 1000
    assert take(wait, ours).tmpl.seq == SEQ0 + len(data)


@pytest.mark.parametrize("stopper", ["gap", "dup-ack", "fin", "rst", "syn", "ack-unsent",
                                     "old-ack"])
def test_a_frame_c_does_not_handle_ends_its_share(rig, wait, conn, stopper):
    """[data, data, X, data]: the two in-order segments go to the peer; at X the kick comes
    back to Python, whose own pop finds exactly X and what follows; the state covers only
    the first two."""
    ours, peer = conn
    r = rig()
    r.rx.add_rx_buffers(16, 4096)
    kick = register(wait, r, ours, seq=SEQ0 + 100, una=SEQ0)    # 100 bytes in flight
    first = [seg(ACK0, SEQ0, "A", b"a" * 500), seg(ACK0 + 500, SEQ0, "PA", b"b" * 500)]
    nxt = ACK0 + 1000
    x = {"gap": seg(nxt + 1, SEQ0, "A", b"c" * 10),
         "dup-ack": seg(nxt, SEQ0, "A", wnd=8192),
         "fin": seg(nxt, SEQ0, "FA"),
         "rst": seg(nxt, SEQ0, "R"),
         "syn": seg(nxt, 0, "S"),
         "ack-unsent": seg(nxt, SEQ0 + 101, "A"),
         "old-ack": seg(nxt, SEQ0 - 1, "A", wnd=100)}[stopper]
    rest = [x, seg(nxt, SEQ0, "A", b"d" * 10)]
    for f in first + rest:
        r.tx.add_tx_buffer(f, bytes(HDR))
    os.eventfd_write(kick, 1)
    assert wait.poll() == [(kick, select.EPOLLIN)]
    assert recv_exactly(peer, 1000) == b"a" * 500 + b"b" * 500
    assert len(r.tx.pop_used()) == 2
    batch = r.txq.pop_tx(64, HDR)
    assert [batch.frame(i) for i in range(batch.count)] == rest
    r.txq.release(batch)
    s = take(wait, ours)
    assert (s.tmpl.ack, s.una, s.back) == (nxt, SEQ0, 0)
    os.close(kick)


def test_a_full_socket_hands_the_connection_back(rig, wait, conn):
    """The peer does not read: what the socket took reaches it, in order; C hands the
    connection back (FULL: Python closes the window), and its events are Python's after."""
    ours, peer = conn
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    r = rig(num=512)
    r.rx.add_rx_buffers(16, 4096)
    kick = register(wait, r, ours)
    data = os.urandom(300 * 8000)
    _queue_stream(r, data, 8000)
    os.eventfd_write(kick, 1)
    events = wait.poll()
    assert (ours.fileno(), core.FAST_EV_BACK) in events
    s = take(wait, ours)
    assert s.back & core.FAST_BACK_FULL
    took = s.tmpl.ack - ACK0
    assert 0 < took < len(data) and s.to_host == took
    assert recv_exactly(peer, took) == data[:took]
    os.close(kick)


def test_no_rx_buffers_the_connection_waits_in_c_for_the_rx_kick(rig, wait, conn):
    """Host data and no RX buffer: nothing for Python, the data stays in the socket, unpeeked,
    and later readable edges do not spin; once the guest adds buffers, rx_ready() sends it all,
    intact. Taken back while it waits, the connection says host data is due (H2G)."""
    ours, peer = conn
    r = rig()
    register(wait, r, ours)
    peer.sendall(b"x" * 3000)
    _until_queued(ours, 3000)
    assert wait.poll() == []
    handled = wait.fast.stats().handled
    peer.sendall(b"y" * 3000)
    _until_queued(ours, 6000)
    assert wait.poll() == [] and wait.fast.stats().handled == handled + 1
    assert _tcp_frames(r) == [] and _queued(ours) == 6000
    assert ours.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == 0
    r.rx.add_rx_buffers(16, 4096)
    assert wait.fast.rx_ready(wait.ep.fileno()) == 1
    assert b"".join(bytes(p[TCP].payload) for p in _tcp_frames(r)) == b"x" * 3000 + b"y" * 3000
    peer.sendall(b"z" * 100000)                       # more than 16 buffers hold
    _until_queued(ours, 106000)
    assert wait.poll() == []
    got = b"".join(bytes(p[TCP].payload) for p in _tcp_frames(r))
    assert 0 < len(got) < 100000 and got == b"z" * len(got)
    s = take(wait, ours)
    assert s.back & core.FAST_BACK_H2G and s.tmpl.seq == SEQ0 + 6000 + len(got)


def test_a_timer_to_arm_hands_back_and_later_events_are_python_s(rig, wait, conn):
    """Data sent with no caller timer armed: delivered, then handed back with TIMER and a
    deadline one RTO ahead; the next readable edge is a plain event for Python."""
    ours, peer = conn
    r = rig()
    r.rx.add_rx_buffers(16, 4096)
    register(wait, r, ours, timer_at=0.0)
    before = time.monotonic()
    peer.sendall(b"hello")
    _until_queued(ours, 5)
    assert wait.poll() == [(ours.fileno(), core.FAST_EV_BACK)]
    assert [bytes(p[TCP].payload) for p in _tcp_frames(r)] == [b"hello"]
    peer.sendall(b"again")
    _until_queued(ours, 10)
    events = wait.poll()
    assert len(events) == 1 and events[0][0] == ours.fileno()
    assert events[0][1] & select.EPOLLIN and not events[0][1] & core.FAST_EV_BACK
    assert _tcp_frames(r) == []                     # C left it alone
    s = take(wait, ours)
    assert s.back == core.FAST_BACK_TIMER and s.tmpl.seq == SEQ0 + 5
    assert before + 1.0 <= s.deadline <= time.monotonic() + 1.0


def test_entries_are_unique_and_removal_hands_events_back(rig, wait, conn):
    """A second add for the same socket is refused; after removal the socket's events and
    the connection's frames are Python's, and a second removal finds nothing."""
    ours, peer = conn
    r = rig()
    r.rx.add_rx_buffers(16, 4096)
    kick = register(wait, r, ours)
    with pytest.raises(CoreError):
        wait.fast.add_tcp(fast_state(wait.fast, ours))
    assert wait.fast.stats().tcp_entries == 1
    take(wait, ours)
    assert not wait.fast.remove_tcp(ours.fileno(), wait.fast.tcp_state())
    assert wait.fast.stats().tcp_entries == 0
    r.tx.add_tx_buffer(seg(ACK0, SEQ0, "A", b"data"), bytes(HDR))
    os.eventfd_write(kick, 1)
    assert sorted(wait.poll()) == sorted([(ours.fileno(), select.EPOLLOUT),   # its first edge
                                          (kick, select.EPOLLIN)])
    assert os.eventfd_read(kick) == 1                   # left for Python
    peer.sendall(b"x")
    _until_queued(ours, 1)
    events = wait.poll()
    assert len(events) == 1 and events[0][0] == ours.fileno() and events[0][1] & select.EPOLLIN
    assert r.txq.pop_tx(64, HDR).count == 1 and _tcp_frames(r) == []
    os.close(kick)


def test_a_kick_of_more_than_four_rounds_is_drained_within_the_wait(rig, wait, conn):
    """1,100 in-order segments in a 2,048-entry ring, one kick: more than the four rounds a
    pass takes, yet nothing comes back to Python; every byte reaches the peer, in order."""
    ours, peer = conn
    r = rig(num=2048)
    r.rx.add_rx_buffers(64, 4096)
    kick = register(wait, r, ours)
    data = os.urandom(1100 * 100)
    assert _queue_stream(r, data, 100) == 1100
    os.eventfd_write(kick, 1)
    assert wait.poll() == []
    assert recv_exactly(peer, len(data)) == data
    assert len(r.tx.pop_used()) == 1100
    assert take(wait, ours).tmpl.ack == ACK0 + len(data)
    os.close(kick)


_TCP_KINDS = st.lists(st.one_of(
    st.tuples(st.just("data"), st.binary(min_size=1, max_size=1400)),
    st.tuples(st.just("ack"), st.integers(0, 1)),
    st.tuples(st.just("ahead"), st.binary(min_size=1, max_size=100)),
    st.tuples(st.just("fin"), st.just(b"")),
    st.tuples(st.just("badlen"), st.integers(30, 70) | st.integers(0, 0xFFFF)),
    st.tuples(st.just("junk"), st.binary(max_size=80)),
), min_size=1, max_size=30)


@hypothesis_budget(0.4, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=_TCP_KINDS)
def test_any_tx_batch_of_a_connection_splits_into_a_taken_prefix_and_an_untouched_rest(
        rig, conn, kinds):
    """Whatever the guest queues for a connection C runs (in-order data, bare ACKs, data past
    a gap, FIN, a broken IP length field, junk), one kick takes exactly the leading run of
    in-order data and ACKs: the peer gets exactly that run's bytes, and Python's pop finds
    every later frame byte for byte. A length field at most the packet's is IP padding (the
    segment shrinks to it); below the headers, or beyond the frame, the frame is broken."""
    ours, peer = conn
    r = rig()
    r.rx.add_rx_buffers(64, 4096)
    w = Wait()
    try:
        kick = register(w, r, ours)
        frames, oks, payloads, nxt = [], [], [], ACK0
        for kind, arg in kinds:
            ok, payload = False, b""
            if kind == "data":
                frames.append(seg(nxt, SEQ0, "A", arg))
                ok, payload = True, arg
            elif kind == "ack":
                frames.append(seg(nxt, SEQ0, "A", wnd=8192 + arg))
                ok = True                       # nothing in flight: never a duplicate
            elif kind == "ahead":
                frames.append(seg(nxt + 1000, SEQ0, "A", arg))
            elif kind == "fin":
                frames.append(seg(nxt, SEQ0, "FA"))
            elif kind == "junk":
                frames.append(bytes(arg))
            else:
                f = bytearray(seg(nxt, SEQ0, "A", b"y" * 20))
                struct.pack_into("!H", f, 14 + 2, arg)
                frames.append(bytes(f))
                ok = 40 <= arg <= 60            # 20 header + 20 TCP + at most the payload
                payload = b"y" * (arg - 40) if ok else b""
            oks.append(ok)
            payloads.append(payload)
            nxt += len(payload)
        prefix = oks.index(False) if False in oks else len(oks)
        taken = b"".join(payloads[:prefix])
        for f in frames:
            r.tx.add_tx_buffer(f, bytes(HDR))
        os.eventfd_write(kick, 1)
        events = w.poll(0)
        assert events == ([] if prefix == len(frames) else [(kick, select.EPOLLIN)])
        if taken:
            assert recv_exactly(peer, len(taken)) == taken
        assert len(r.tx.pop_used()) == prefix
        if prefix < len(frames):
            batch = r.txq.pop_tx(64, HDR)
            assert [batch.frame(i) for i in range(batch.count)] == frames[prefix:]
            r.txq.release(batch)
        s = take(w, ours)
        assert s.tmpl.ack == ACK0 + len(taken) and s.back == 0
        os.close(kick)
    finally:
        w.close()
