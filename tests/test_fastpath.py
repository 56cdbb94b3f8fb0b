# SPDX-License-Identifier: MIT
"""The C fast path (csrc/fastpath.c, core.FastPath) on real rings driven by the test.

Checked: a registered flow socket's datagrams reach the RX ring inside the wait, intact and in
order, with nothing for Python; a TX kick's datagrams of registered tuples leave from guest
memory; everything else comes back as the epoll event it was, with what C did not consume left
in place (the rest of a TX batch from its first other frame, a batch with a bad chain whole,
datagrams the guest had no buffers for); a socket muted for lack of buffers is watched again on
rx_ready(); removed entries and cleared tables hand their events back; the tables grow and
shrink without losing entries.
"""
from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import struct

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from scapy.all import ARP, UDP, Ether, raw

from passt_py import core
from passt_py.link.ip import udp_frame
# rig, wait: fixtures, used by name
from tests.conftest import hypothesis_budget
from tests.ring_rig import (ADDRS, GUEST4, GUEST_MAC, GW4, HDR, OUR_MAC, Wait, ip16,  # noqa: F401
                            kick_rig, rig, udp_checksum_valid, udp_pair, udp_templates, wait,
                            wait_queued)


def _rx_payloads(r, family: int) -> list[bytes]:
    out = []
    for _hdr, frame, _n in r.rx_frames():
        assert udp_checksum_valid(frame, family)
        out.append(bytes(Ether(frame)[UDP].payload))
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_flow_datagrams_reach_the_ring_inside_the_wait(rig, wait, family):
    """50 datagrams of 0..60000 bytes: the wait delivers them all, in order, checksums valid,
    and returns nothing (no event for Python); the counts say so."""
    r = rig(num=1024)
    r.rx.add_rx_buffers(1000, 4096)
    ours, peer = udp_pair(family)
    wait.ep.register(ours.fileno(), select.EPOLLIN)
    wait.fast.set_rx(r.rxq, HDR, True, 0, 64)
    assert wait.fast.add_rx(ours.fileno(), udp_templates(family))
    sizes = [(k * 7919) % 60001 for k in range(50)]
    payloads = [os.urandom(n) for n in sizes]
    for p in payloads:
        peer.send(p)
    wait_queued(ours)
    assert wait.poll() == []
    got = _rx_payloads(r, family)
    assert [hashlib.sha256(g).digest() for g in got] == [hashlib.sha256(p).digest() for p in payloads]
    st = wait.fast.stats()
    assert st.rx_dgrams == 50 and st.handled >= 1 and st.reported == 0
    assert wait.fast.rx_count(ours.fileno()) == 50 and wait.fast.rx_count(ours.fileno()) == 0
    assert r.rx_calls() >= 1                      # the guest was notified
    ours.close(), peer.close()


def test_other_fds_and_events_come_back(rig, wait):
    """An unregistered socket, and a registered one without a ring to deliver into, are
    plain events for Python; their datagrams stay in the socket."""
    r = rig()
    r.rx.add_rx_buffers(10, 4096)
    a, pa = udp_pair(4)
    b, pb = udp_pair(4)
    for s in (a, b):
        wait.ep.register(s.fileno(), select.EPOLLIN)
    assert wait.fast.add_rx(a.fileno(), udp_templates(4))
    pa.send(b"A")
    pb.send(b"B")
    wait_queued(a)
    assert sorted(wait.poll()) == sorted([(a.fileno(), select.EPOLLIN),
                                          (b.fileno(), select.EPOLLIN)])
    assert a.recv(10) == b"A" and b.recv(10) == b"B"    # untouched: no RX ring set
    wait.fast.set_rx(r.rxq, HDR, True, 0, 64)
    pa.send(b"A2")
    pb.send(b"B2")
    wait_queued(a)
    assert wait.poll() == [(b.fileno(), select.EPOLLIN)]
    assert _rx_payloads(r, 4) == [b"A2"]
    for s in (a, pa, b, pb):
        s.close()


def test_a_socket_error_comes_back_as_err(rig, wait):
    """A flow whose peer went away: the ICMP error is Python's (error queue): its event comes
    back with EPOLLERR, and C took nothing."""
    r = rig()
    r.rx.add_rx_buffers(10, 4096)
    ours, peer = udp_pair(4)
    ours.setsockopt(socket.SOL_IP, 11, 1)                # IP_RECVERR
    wait.ep.register(ours.fileno(), select.EPOLLIN)
    wait.fast.set_rx(r.rxq, HDR, True, 0, 64)
    assert wait.fast.add_rx(ours.fileno(), udp_templates(4))
    peer.close()
    ours.send(b"nobody there")                           # port unreachable comes back
    wait_queued(ours)
    events = wait.poll()
    assert len(events) == 1 and events[0][0] == ours.fileno()
    assert events[0][1] & select.EPOLLERR
    assert r.rx_frames() == []
    ours.close()


def test_no_buffers_mutes_the_socket_until_rx_ready(rig, wait):
    """Without RX buffers the datagrams wait in the socket and the socket leaves the epoll
    set (no busy loop); after the guest adds buffers, rx_ready() brings it back and every
    datagram arrives."""
    r = rig()
    ours, peer = udp_pair(4)
    wait.ep.register(ours.fileno(), select.EPOLLIN)
    wait.fast.set_rx(r.rxq, HDR, True, 0, 64)
    assert wait.fast.add_rx(ours.fileno(), udp_templates(4))
    payloads = [os.urandom(1000) for _ in range(10)]
    for p in payloads:
        peer.send(p)
    wait_queued(ours)
    assert wait.poll() == []
    assert wait.fast.stats().muted == 1
    handled = wait.fast.stats().handled
    assert wait.poll(0.1) == [] and wait.fast.stats().handled == handled   # not woken again
    r.rx.add_rx_buffers(20, 4096)
    assert wait.fast.rx_ready(wait.ep.fileno()) == 1
    assert wait.poll() == []
    assert _rx_payloads(r, 4) == payloads
    assert wait.fast.stats().muted == 0
    ours.close(), peer.close()


def test_removed_and_cleared_entries_hand_events_back(rig, wait):
    """After remove_rx() (a flow closing) or clear() (another guest MAC), the socket's events
    are Python's again; a muted socket is restored by clear()."""
    r = rig()
    ours, peer = udp_pair(4)
    wait.ep.register(ours.fileno(), select.EPOLLIN)
    wait.fast.set_rx(r.rxq, HDR, True, 0, 64)
    assert wait.fast.add_rx(ours.fileno(), udp_templates(4))
    peer.send(b"x")
    wait_queued(ours)
    assert wait.poll() == [] and wait.fast.stats().muted == 1     # no buffers: muted
    gen = wait.fast.gen
    wait.fast.clear(wait.ep.fileno())
    assert wait.fast.gen == gen + 1 and wait.fast.stats().rx_entries == 0
    assert wait.poll() == [(ours.fileno(), select.EPOLLIN)]         # restored, and Python's
    assert wait.fast.add_rx(ours.fileno(), udp_templates(4))
    assert wait.fast.remove_rx(ours.fileno()) == 0
    assert wait.poll() == [(ours.fileno(), select.EPOLLIN)]
    ours.close(), peer.close()


def _frame(sport: int, dport: int, payload: bytes) -> bytes:
    return udp_frame(OUR_MAC, GUEST_MAC, GUEST4, GW4, sport, dport, payload)


def _sink() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def _flow_socket(sink: socket.socket) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(sink.getsockname())
    s.setblocking(False)
    return s


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def test_kick_sends_registered_datagrams_from_guest_memory(rig, wait):
    """Datagrams of two registered tuples, interleaved, some split over descriptors: one
    kick, no event for Python, each arrives at its socket in order; every chain is used."""
    r = rig()
    kick = kick_rig(r, wait)
    sinks = [_sink(), _sink()]
    socks = [_flow_socket(s) for s in sinks]
    for k, s in enumerate(socks):
        assert wait.fast.add_tx(GUEST4, GW4, 40000 + k, 5000 + k, s.fileno())
    want: list[list[bytes]] = [[], []]
    for n in range(60):
        k = n % 2
        payload = struct.pack("!H", n) + os.urandom((n * 997) % 9000)
        want[k].append(payload)
        frame = _frame(40000 + k, 5000 + k, payload)
        split = [60, 500, len(frame) - 560] if len(frame) > 600 else None
        r.tx.add_tx_buffer(frame, bytes(HDR), split=split)
    os.eventfd_write(kick, 1)
    assert wait.poll() == []
    assert [_drain(s) for s in sinks] == want
    assert len(r.tx.pop_used()) == 60
    assert wait.fast.stats().tx_dgrams == 60
    assert wait.fast.tx_count(GUEST4, GW4, 40000, 5000) == 30
    os.close(kick)
    for s in sinks + socks:
        s.close()


def test_kick_stops_at_the_first_frame_it_does_not_handle(rig, wait):
    """[fast, fast, fast, ARP, fast, fast]: the three before the ARP request leave; the kick
    comes back to Python, whose own pop finds exactly the rest, in order."""
    r = rig()
    kick = kick_rig(r, wait)
    sink = _sink()
    sock = _flow_socket(sink)
    assert wait.fast.add_tx(GUEST4, GW4, 40000, 5000, sock.fileno())
    arp = raw(Ether(src=GUEST_MAC.hex(":"), dst="ff:ff:ff:ff:ff:ff") /
              ARP(op=1, hwsrc=GUEST_MAC.hex(":"), psrc=str(GUEST4), pdst=str(GW4)))
    frames = [_frame(40000, 5000, b"%d" % n) for n in range(3)] + [arp] + \
        [_frame(40000, 5000, b"%d" % n) for n in range(3, 5)]
    for f in frames:
        r.tx.add_tx_buffer(f, bytes(HDR))
    os.eventfd_write(kick, 1)
    assert wait.poll() == [(kick, select.EPOLLIN)]
    assert _drain(sink) == [b"0", b"1", b"2"]
    assert len(r.tx.pop_used()) == 3
    batch = r.txq.pop_tx(64, HDR)
    assert [batch.frame(i) for i in range(batch.count)] == frames[3:]
    r.txq.release(batch)
    os.close(kick)
    sink.close(), sock.close()


def test_a_batch_with_a_bad_chain_is_left_whole(rig, wait):
    """A bad chain (a descriptor outside guest memory) among fast datagrams: C sends nothing
    and consumes nothing; Python's pop sees every chain, the bad one included."""
    r = rig()
    kick = kick_rig(r, wait)
    sink = _sink()
    sock = _flow_socket(sink)
    assert wait.fast.add_tx(GUEST4, GW4, 40000, 5000, sock.fileno())
    r.tx.add_tx_buffer(_frame(40000, 5000, b"a"), bytes(HDR))
    r.tx.add_chain([(1 << 40, 100, False)])                  # nowhere in guest memory
    r.tx.add_tx_buffer(_frame(40000, 5000, b"b"), bytes(HDR))
    os.eventfd_write(kick, 1)
    assert wait.poll() == [(kick, select.EPOLLIN)]
    assert _drain(sink) == [] and r.tx.pop_used() == []
    batch = r.txq.pop_tx(64, HDR)
    assert batch.count == 2 and batch.bad == 1
    r.txq.release(batch)
    os.close(kick)
    sink.close(), sock.close()


def test_kicks_without_tx_entries_are_python_s(rig, wait):
    """With no tuple registered (TCP only, say) the kick is not even looked at."""
    r = rig()
    kick = kick_rig(r, wait)
    r.tx.add_tx_buffer(_frame(40000, 5000, b"a"), bytes(HDR))
    os.eventfd_write(kick, 1)
    assert wait.poll() == [(kick, select.EPOLLIN)]
    assert os.eventfd_read(kick) == 1                    # not consumed either
    assert r.txq.avail_pending == 1
    os.close(kick)


def test_tables_grow_shrink_and_refuse_beyond_their_maximum():
    """Thousands of entries in and out (tombstones, rebuilds): every live one is found,
    removed ones are not, and the maximum holds."""
    fast = core.FastPath(3000)
    t = udp_templates(4)
    fds = range(100, 3100)
    for fd in fds:
        assert fast.add_rx(fd, t)
        assert fast.add_tx(GUEST4, GW4, fd, 53, fd)
    assert not fast.add_rx(5000, t) and not fast.add_tx(GUEST4, GW4, 1, 53, 5000)
    for fd in fds[::2]:
        fast.remove_rx(fd)
        fast.remove_tx(GUEST4, GW4, fd, 53)
    for fd in range(20000, 21500):
        assert fast.add_rx(fd, t)
        assert fast.add_tx(GUEST4, GW4, fd, 53, fd)
    st = fast.stats()
    assert st.rx_entries == st.tx_entries == 3000
    live = set(fds[1::2]) | set(range(20000, 21500))
    lib, gone = core.lib, -errno.ENOENT
    src, dst = ip16(GUEST4), ip16(GW4)
    for fd in list(fds) + list(range(20000, 21500)):
        want = 0 if fd in live else gone             # a live entry's count, or "no entry"
        assert lib.pc_fast_rx_count(fast._f, fd) == want, fd
        assert lib.pc_fast_tx_count(fast._f, 4, src, dst, fd, 53) == want, fd
    for fd in live:
        fast.remove_rx(fd)
        fast.remove_tx(GUEST4, GW4, fd, 53)
    assert fast.stats().rx_entries == fast.stats().tx_entries == 0


def test_ipv6_kick_and_delivery_both_ways(rig, wait):
    """An IPv6 flow both ways through the fast path: request out, answer in."""
    r = rig()
    r.rx.add_rx_buffers(20, 4096)
    kick = kick_rig(r, wait)
    ours, peer = udp_pair(6)
    wait.ep.register(ours.fileno(), select.EPOLLIN)
    wait.fast.set_rx(r.rxq, HDR, True, 0, 64)
    src, dst = ADDRS[6]
    tmpl = udp_templates(6)
    assert wait.fast.add_rx(ours.fileno(), tmpl)
    assert wait.fast.add_tx(dst, src, 40000, 4242, ours.fileno())
    frame = udp_frame(OUR_MAC, GUEST_MAC, dst, src, 40000, 4242, b"ping")
    r.tx.add_tx_buffer(frame, bytes(HDR))
    os.eventfd_write(kick, 1)
    assert wait.poll() == []
    assert peer.recv(100) == b"ping"
    peer.send(b"pong")
    wait_queued(ours)
    assert wait.poll() == []
    assert _rx_payloads(r, 6) == [b"pong"]
    os.close(kick)
    ours.close(), peer.close()


_FRAME_KINDS = st.lists(st.one_of(
    st.tuples(st.just("fast"), st.binary(max_size=3000)),
    st.tuples(st.just("unknown"), st.binary(max_size=100)),
    st.tuples(st.just("junk"), st.binary(min_size=0, max_size=200)),
    st.tuples(st.just("badlen"), st.integers(0, 0xFFFF)),
), min_size=1, max_size=40)


@hypothesis_budget(0.6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=_FRAME_KINDS)
def test_any_tx_batch_splits_into_a_sent_prefix_and_an_untouched_rest(rig, kinds):
    """Whatever the guest queues (datagrams of a registered tuple, of another tuple, junk,
    broken length fields), one kick sends exactly the leading run of registered datagrams,
    intact, and leaves every later frame, byte for byte, to Python's pop."""
    r = rig()
    w = Wait()
    kick = kick_rig(r, w)
    sink = _sink()
    sock = _flow_socket(sink)
    try:
        assert w.fast.add_tx(GUEST4, GW4, 40000, 5000, sock.fileno())
        frames, fast_ok = [], []
        for kind, arg in kinds:
            if kind == "fast":
                frames.append(_frame(40000, 5000, arg))
            elif kind == "unknown":
                frames.append(_frame(40001, 5000, arg))
            elif kind == "junk":
                frames.append(bytes(arg))
            else:       # a length field below the packet's is valid: IP padding follows
                f = bytearray(_frame(40000, 5000, b"x" * 20))
                struct.pack_into("!H", f, 14 + 20 + 4, arg)
                frames.append(bytes(f))
            fast_ok.append(kind == "fast" or (kind == "badlen" and 8 <= arg <= 28))
        prefix = 0
        while prefix < len(frames) and fast_ok[prefix]:
            prefix += 1
        for f in frames:
            r.tx.add_tx_buffer(f, bytes(HDR))
        os.eventfd_write(kick, 1)
        events = w.poll(0)
        assert events == ([] if prefix == len(frames) else [(kick, select.EPOLLIN)])
        want = [bytes(Ether(f)[UDP].payload)[:Ether(f)[UDP].len - 8] for f in frames[:prefix]]
        assert _drain(sink) == want
        assert len(r.tx.pop_used()) == prefix
        if prefix < len(frames):
            batch = r.txq.pop_tx(64, HDR)
            assert [batch.frame(i) for i in range(batch.count)] == frames[prefix:]
            r.txq.release(batch)
    finally:
        os.close(kick)
        sink.close(), sock.close()
        w.close()
