# SPDX-License-Identifier: MIT
"""Host -> guest UDP in C (csrc/udp_path.c, core.UdpPath): datagrams received straight into
RX chains behind room for their headers, on real rings driven by the test.

Checked: payloads arrive whole with valid checksums (or a correct partial checksum), chains and
num_buffers fit each datagram, datagrams from a peer no template covers come back in the spill
buffer without using a chain, a full ring leaves datagrams in the socket (nothing lost), and a
datagram the guest's buffers can never hold is dropped alone.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from scapy.all import IP, UDP, Ether, IPv6, raw

from passt_py import core
# rig: a fixture, used by name
from tests.conftest import hypothesis_budget
from tests.ring_rig import (ADDRS, GUEST_MAC, HDR, OUR_MAC, read_chain, rig,  # noqa: F401
                            send_tx, udp_checksum_valid, udp_pair, udp_templates, wait_queued)


def _udp(frame: bytes, family: int):
    pkt = Ether(frame)
    return pkt[UDP], pkt[IP] if family == 4 else pkt[IPv6]


@pytest.mark.parametrize("family", [4, 6])
def test_datagrams_arrive_whole_with_valid_checksums(rig, family):
    """Sizes from 0 to the largest IPv4/IPv6 datagram, in 4 KiB mergeable buffers: each is one
    frame, in order, equal SHA-256, valid UDP checksum, num_buffers = chains used."""
    r = rig()
    ours, peer = udp_pair(family)
    sizes = [0, 1, 17, 1472, 4000, 9000, 32768, 65507 if family == 4 else 65527]
    payloads = [os.urandom(n) for n in sizes]
    for p in payloads:
        peer.send(p)
    wait_queued(ours)
    r.rx.add_rx_buffers(200, 4096)
    path, t = core.UdpPath(r.rxq), udp_templates(family)
    assert path.rx(ours.fileno(), t, max_dgrams=64) == len(payloads)
    assert path.last.stop == core.UDP_STOP_DRAINED and path.last.dropped == 0
    assert t.take_count(0) == len(payloads)
    frames = r.rx_frames()
    assert len(frames) == len(payloads)
    l3 = 20 if family == 4 else 40
    for (vnet, frame, nbuf), p in zip(frames, payloads):
        assert vnet[:10] == bytes(10)
        assert nbuf == -(-(HDR + 14 + l3 + 8 + len(p)) // 4096)
        udp, ip = _udp(frame, family)
        assert (str(ip.src), str(ip.dst)) == tuple(str(a) for a in ADDRS[family])
        assert (udp.sport, udp.dport, udp.len) == (4242, 40000, 8 + len(p))
        assert hashlib.sha256(bytes(udp.payload)).digest() == hashlib.sha256(p).digest()
        assert udp_checksum_valid(frame, family)
        if family == 4:
            assert ip.flags == "DF" and ip.ttl == 255
    assert r.rx_calls() == 1


@pytest.mark.parametrize("family", [4, 6])
def test_partial_checksum_when_the_guest_takes_it(rig, family):
    """CSUM_PARTIAL: NEEDS_CSUM with csum_start/offset at the UDP checksum, which holds the
    pseudo-header sum; completing it over the UDP header and payload gives a valid one."""
    r = rig()
    ours, peer = udp_pair(family)
    payload = bytes(range(256)) * 11 + b"odd"      # fixed, so the check below is too
    peer.send(payload)
    wait_queued(ours)
    r.rx.add_rx_buffers(4, 4096)
    path = core.UdpPath(r.rxq)
    assert path.rx(ours.fileno(), udp_templates(family), opts=core.UDP_RX_CSUM_PARTIAL) == 1
    (vnet, frame, _), = r.rx_frames()
    l3 = 20 if family == 4 else 40
    flags, _gso, _hl, _gs, start, offset = struct.unpack_from("<BBHHHH", vnet)
    assert flags == 1 and (start, offset) == (14 + l3, 6)
    assert not udp_checksum_valid(frame, family)        # left partial...
    assert udp_checksum_valid(_complete(frame, start), family)   # ...and right once completed


def _complete(frame: bytes, start: int) -> bytes:
    """Fill in a partial checksum the way a NIC would: fold of the sum from csum_start."""
    seg = frame[start:]
    csum = core.csum_fold(core.csum_partial(seg)) or 0xFFFF
    return frame[:start + 6] + struct.pack("!H", csum) + frame[start + 8:]


def test_datagrams_from_an_unknown_peer_come_back_in_the_spill_buffer(rig):
    """Two peers with templates, a third without: the third's datagram is spilled (with its
    address) without using a chain, and the next call carries on with the ones after it."""
    r = rig()
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    ours.setblocking(False)
    peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for p in peers:
        p.bind(("127.0.0.1", 0))
    known = [(ipaddress.IPv4Address("127.0.0.1"), p.getsockname()[1]) for p in peers[:2]]
    t = udp_templates(4, known)
    order = [0, 1, 2, 0, 1]
    for n, k in enumerate(order):
        peers[k].sendto(bytes([k, n]) * 100, ours.getsockname())
        time.sleep(0.005)                       # keep the order across sockets
    r.rx.add_rx_buffers(16, 4096)
    path = core.UdpPath(r.rxq)
    assert path.rx(ours.fileno(), t) == 2
    assert path.last.stop == core.UDP_STOP_UNKNOWN
    data, addr, port = path.spilled()
    assert data == bytes([2, 2]) * 100 and (addr, port) == (known[0][0], peers[2].getsockname()[1])
    assert path.rx(ours.fileno(), t) == 2
    frames = r.rx_frames()
    assert len(frames) == 4                     # the spilled one took no chain
    got = [(Ether(f)[UDP].sport, bytes(Ether(f)[UDP].payload)[:2]) for _, f, _ in frames]
    assert got == [(5000, bytes([0, 0])), (5001, bytes([1, 1])), (5000, bytes([0, 3])),
                   (5001, bytes([1, 4]))]
    assert (t.take_count(0), t.take_count(1)) == (2, 2)


def test_a_full_ring_leaves_datagrams_in_the_socket(rig):
    """Buffers for two datagrams only: two are delivered, the call stops on NOBUFS, and the
    rest arrive intact once the guest offers more."""
    r = rig()
    ours, peer = udp_pair(4)
    payloads = [os.urandom(3000) for _ in range(5)]
    for p in payloads:
        peer.send(p)
    wait_queued(ours)
    r.rx.add_rx_buffers(2, 4096)
    path, t = core.UdpPath(r.rxq), udp_templates(4)
    assert path.rx(ours.fileno(), t) == 2
    assert path.last.stop == core.UDP_STOP_NOBUFS
    r.rx.add_rx_buffers(8, 4096)
    assert path.rx(ours.fileno(), t) == 3
    got = [bytes(Ether(f)[UDP].payload) for _, f, _ in r.rx_frames()]
    assert got == payloads


def test_a_datagram_too_big_for_a_chain_is_dropped_alone(rig):
    """Without mergeable buffers a 1000-byte chain cannot hold a 2000-byte datagram: it is
    dropped and counted, the chain stays for the next datagram, which arrives."""
    r = rig()
    ours, peer = udp_pair(4)
    peer.send(b"x" * 2000)
    peer.send(b"small")
    wait_queued(ours)
    r.rx.add_rx_buffers(2, 1000)
    path = core.UdpPath(r.rxq)
    assert path.rx(ours.fileno(), udp_templates(4), mergeable=False) == 1
    assert path.last.dropped == 1
    frames = r.rx_frames(mergeable=False)
    assert [bytes(Ether(f)[UDP].payload) for _, f, _ in frames] == [b"small"]
    assert r.rxq.avail_pending == 1               # one chain used, one left


def test_bad_arguments_are_refused_and_no_template_spills_all(rig):
    """Templates of two IP versions in one call are EINVAL; with no template at all (a -u
    listener before its first peer) the first datagram comes back spilled, using no chain."""
    r = rig()
    ours, peer = udp_pair(4)
    t = core.UdpTemplates(2)
    t.set(0, GUEST_MAC, OUR_MAC, *ADDRS[4], 1, 2, peer=(ipaddress.IPv4Address("1.2.3.4"), 1))
    t.set(1, GUEST_MAC, OUR_MAC, *ADDRS[6], 1, 2, peer=(ipaddress.IPv6Address("::2"), 1))
    t.n = 2
    path = core.UdpPath(r.rxq)
    with pytest.raises(core.CoreError):
        path.rx(ours.fileno(), t)
    peer.send(b"first")
    wait_queued(ours)
    r.rx.add_rx_buffers(2, 4096)
    t.n = 0
    assert path.rx(ours.fileno(), t) == 0
    assert path.last.stop == core.UDP_STOP_UNKNOWN
    data, addr, port = path.spilled()
    assert (data, str(addr), port) == (b"first", "127.0.0.1", peer.getsockname()[1])
    assert r.rxq.avail_pending == 2 and r.rx_frames() == []


@hypothesis_budget(0.25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 20000), min_size=1, max_size=12),
       buf=st.sampled_from([256, 1000, 1526, 4096, 65536]),
       segments=st.integers(1, 3))
def test_any_sizes_in_any_buffers(rig, sizes, buf, segments):
    """Whatever the datagram sizes and the buffers' size and split, every datagram arrives
    whole, in order, with a valid checksum (or is dropped only if the buffers cannot hold it)."""
    r = rig()
    ours, peer = udp_pair(4)
    payloads = [os.urandom(n) for n in sizes]
    for p in payloads:
        peer.send(p)
    wait_queued(ours)
    r.rx.add_rx_buffers(min(256 // segments, (4 << 20) // buf), buf, segments=segments)
    path = core.UdpPath(r.rxq)
    n = path.rx(ours.fileno(), udp_templates(4))

    def fits(p: bytes) -> bool:           # at most 80 chains and 256 slices per datagram
        chains = -(-(HDR + 42 + len(p)) // buf)
        return chains <= 80 and chains * segments <= 256
    want = [p for p in payloads if fits(p)]
    got = [bytes(Ether(f)[UDP].payload) for _, f, _ in r.rx_frames()]
    assert n == len(got) and got == want[:n]
    if path.last.stop != core.UDP_STOP_NOBUFS:
        assert n == len(want) and path.last.dropped == len(payloads) - len(want)
    ours.close()
    peer.close()


def test_stopping_with_chains_left_asks_for_a_kick_on_the_next_buffer(rig):
    """EVENT_IDX: three 4 KiB chains, datagrams needing two each. The second one stops the call
    with a chain left over; the avail event must be the driver's avail idx (3), or the driver,
    already past where we stopped, would never kick for the buffers it adds next."""
    r = rig(event_idx=True)
    ours, peer = udp_pair(4)
    peer.send(os.urandom(6000))
    peer.send(os.urandom(6000))
    wait_queued(ours)
    r.rx.add_rx_buffers(3, 4096)
    path = core.UdpPath(r.rxq)
    assert path.rx(ours.fileno(), udp_templates(4)) == 1
    assert path.last.stop == core.UDP_STOP_NOBUFS
    assert r.rx.avail_event == 3
    r.rx.add_rx_buffers(2, 4096)
    assert path.rx(ours.fileno(), udp_templates(4)) == 1


# ---- guest -> host: runs of one UDP tuple (pc_udp_runs, pc_send_udp_runs) ----

def _udp_frames(spec: list[tuple[str, int, int, bytes]]) -> list[bytes]:
    from scapy.all import TCP
    out = []
    for kind, sport, dport, payload in spec:
        l4 = UDP(sport=sport, dport=dport) if kind == "udp" else TCP(sport=sport, dport=dport)
        out.append(raw(Ether(src=GUEST_MAC.hex(":"), dst=OUR_MAC.hex(":"))
                       / IP(src="10.0.2.15", dst="10.0.2.2") / l4 / payload))
    return out


def test_udp_runs_cut_where_the_tuple_changes(rig):
    """Consecutive datagrams of one tuple make a run; another tuple, a TCP segment or a frame
    skipped by the index list cut it; positions refer to the index list."""
    r = rig()
    spec = [("udp", 1, 2, b"a"), ("udp", 1, 2, b"b"), ("udp", 3, 2, b"c"), ("tcp", 1, 2, b""),
            ("udp", 1, 2, b"d"), ("udp", 1, 2, b"e"), ("udp", 1, 2, b"f")]
    batch = send_tx(r, _udp_frames(spec))
    recs = core.classify(batch)
    runs = core.UdpRuns(recs, [0, 1, 2, 3, 4, 6])          # frame 5 taken by someone else
    got = [(runs.frames(k), runs.runs[k].udp) for k in range(runs.count)]
    assert got == [([0, 1], 1), ([2], 1), ([3], 0), ([4, 6], 1)]
    with pytest.raises(core.CoreError):
        core.UdpRuns(recs, [0, 99])


def _refused_socket() -> socket.socket:
    """A connected UDP socket with an ECONNREFUSED pending (its peer's port closed)."""
    import select
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    gone.connect(closed.getsockname())
    closed.close()
    gone.send(b"x")
    poller = select.poll()
    poller.register(gone, select.POLLERR)
    assert poller.poll(2000), "no ICMP error on loopback"
    return gone


def test_udp_runs_send_from_guest_memory_with_per_datagram_fates(rig):
    """Runs given a socket go out in order with their exact bytes, also when a datagram is
    split over descriptors; a run left at fd -1 is not sent; a socket with a pending ICMP
    error fails its first datagram only, reported at its index position; an fd on a run that
    is not UDP is refused with nothing sent."""
    import errno as errno_mod
    r = rig()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good.connect(sink.getsockname())
    gone = _refused_socket()
    payloads = [os.urandom(n) for n in (1, 3000, 20000, 5, 7, 9)]
    spec = [("udp", 1, 2, payloads[0]), ("udp", 1, 2, payloads[1]), ("udp", 1, 2, payloads[2]),
            ("udp", 5, 6, payloads[3]), ("udp", 7, 8, payloads[4]), ("udp", 7, 8, payloads[5]),
            ("tcp", 1, 2, b"")]
    batch = send_tx(r, _udp_frames(spec),
                    splits=[None, [HDR, 100, 1000], [HDR, 42, 5000], None, None, None, None])
    recs = core.classify(batch)
    runs = core.UdpRuns(recs, range(7))
    assert runs.count == 4
    runs.runs[3].fd = good.fileno()                      # the TCP frame: refused
    with pytest.raises(core.CoreError):
        runs.send()
    runs.runs[3].fd = -1
    sink.setblocking(False)
    with pytest.raises(BlockingIOError):
        sink.recv(100)                                   # nothing went out
    sink.setblocking(True)
    runs.runs[0].fd = good.fileno()
    runs.runs[2].fd = gone.fileno()                      # run 1 stays at -1: not sent
    assert runs.send() == 1
    assert [runs.runs[k].failed for k in range(3)] == [0, 0, 1]
    assert runs.errors(2) == [(4, -errno_mod.ECONNREFUSED)]
    assert [sink.recv(70000) for _ in range(3)] == payloads[:3]
    sink.setblocking(False)
    with pytest.raises(BlockingIOError):
        sink.recv(100)
    for s in (sink, good, gone):
        s.close()


SOL_UDP, UDP_GRO = 17, 104


def _gro_sink(family: int = 4) -> socket.socket:
    """A receiver that takes GSO messages whole (UDP_GRO): one read per message sent, with
    its segment size in a control message, so a test sees how the datagrams left."""
    sink = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    sink.setsockopt(SOL_UDP, UDP_GRO, 1)
    sink.bind(("127.0.0.1" if family == 4 else "::1", 0))
    sink.settimeout(5)
    return sink


def _reads(sink: socket.socket, n: int) -> list[tuple[bytes, int]]:
    """n reads of (bytes, GSO segment size or 0)."""
    out = []
    for _ in range(n):
        data, anc, _flags, _addr = sink.recvmsg(1 << 17, 64)
        seg = [struct.unpack("=i", d[:4])[0] if len(d) >= 4 else struct.unpack("=H", d[:2])[0]
               for lvl, typ, d in anc if (lvl, typ) == (SOL_UDP, UDP_GRO)]
        out.append((data, seg[0] if seg else 0))
    sink.setblocking(False)
    with pytest.raises(BlockingIOError):
        sink.recv(100)
    sink.setblocking(True)
    return out


def _send_run(rig, sizes: list[int], sender: socket.socket, family: int = 4) -> list[bytes]:
    """One run of datagrams of these sizes through pc_send_udp_runs; returns the payloads."""
    payloads = [os.urandom(n) for n in sizes]
    r = rig()
    if family == 4:
        frames = _udp_frames([("udp", 1, 2, p) for p in payloads])
    else:
        frames = [raw(Ether(src=GUEST_MAC.hex(":"), dst=OUR_MAC.hex(":"))
                      / IPv6(src="fd00::2", dst="fd00::1") / UDP(sport=1, dport=2) / p)
                  for p in payloads]
    batch = send_tx(r, frames, most=len(payloads))
    runs = core.UdpRuns(core.classify(batch), range(len(payloads)))
    assert runs.count == 1
    runs.runs[0].fd = sender.fileno()
    assert runs.send() == 0 and runs.runs[0].failed == 0
    return payloads


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("sizes, messages", [
    ([1000] * 10 + [500], [(0, 11)]),                         # a shorter last one joins
    ([1000, 1000, 500, 1000, 1000, 1200], [(0, 3), (3, 5), (5, 6)]),  # a shorter one ends it
    ([100] * 100, [(0, 64), (64, 100)]),                      # 64 segments at most
    ([1472] * 50, [(0, 44), (44, 50)]),                       # 65507 bytes at most
])
def test_a_run_of_one_size_leaves_as_gso_messages(rig, sizes, messages, family):
    """Consecutive datagrams of one size to one socket go out as one GSO message (one trip
    through the stack for up to 64 datagrams): a UDP_GRO receiver reads each message whole
    with the run's segment size; an ordinary receiver still gets every datagram alone, with
    its own bytes, in order."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sink, plain = _gro_sink(family), socket.socket(af, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1" if family == 4 else "::1", 0))
    plain.settimeout(5)
    for dst in (sink, plain):
        sender = socket.socket(af, socket.SOCK_DGRAM)
        sender.connect(dst.getsockname())
        payloads = _send_run(rig, sizes, sender, family)
        if dst is sink:
            want = [(b"".join(payloads[a:b]), sizes[a] if b - a > 1 else 0)
                    for a, b in messages]
            assert _reads(sink, len(messages)) == want
        else:
            assert [plain.recv(70000) for _ in payloads] == payloads
        sender.close()
    sink.close()
    plain.close()


def test_a_gso_message_the_kernel_refuses_goes_out_one_datagram_at_a_time(rig):
    """A socket that cannot send GSO messages (here: no UDP checksums, SO_NO_CHECK) gets the
    run one datagram per message: all arrive, intact and in order, none reported failed."""
    sink = _gro_sink()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, 11, 1)              # SO_NO_CHECK
    sender.connect(sink.getsockname())
    with pytest.raises(OSError):                             # the kernel refuses GSO here
        sender.sendmsg([b"x" * 200], [(SOL_UDP, 103, struct.pack("=H", 100))])
    payloads = _send_run(rig, [700] * 8, sender)
    assert _reads(sink, 8) == [(p, 0) for p in payloads]
    sender.close()
    sink.close()


def test_datagrams_arriving_while_the_queue_looked_empty_are_not_cut(rig):
    """A sender keeps the socket between empty and not (its datagrams land while the C call
    runs): a datagram that arrives after the size check saw an empty queue must still be
    received whole, never truncated to the empty queue's size and dropped."""
    import threading
    r = rig()
    ours, peer = udp_pair(4)
    payloads = [struct.pack("!I", n) + os.urandom(996) for n in range(3000)]

    def send() -> None:
        for p in payloads:
            peer.send(p)
            if len(p) and p[3] % 4 == 0:
                time.sleep(0)          # let the receiver find the queue empty now and then
    sender = threading.Thread(target=send)
    path, t = core.UdpPath(r.rxq), udp_templates(4)
    got: list[bytes] = []
    dropped = 0
    r.rx.add_rx_buffers(64, 4096)
    sender.start()
    deadline = time.monotonic() + 20
    while len(got) + dropped < len(payloads) and time.monotonic() < deadline:
        path.rx(ours.fileno(), t, max_dgrams=64)
        dropped += path.last.dropped
        used = r.rx.pop_used()
        for head, length in used:
            got.append(bytes(Ether(read_chain(r.rx, head, length)[HDR:])[UDP].payload))
        r.rx.republish([h for h, _ in used])
    sender.join(5)
    assert dropped == 0 and got == payloads, f"{dropped} dropped, {len(got)} received"


def test_buffers_the_driver_adds_during_the_call_are_not_waited_for(rig):
    """EVENT_IDX: buffers published after the call read the avail idx, but before it asks
    for a kick, bring no kick, so a call that then runs out must not report NOBUFS (whose
    answer, a muted socket, would wait for ever). The guest's buffer overlaps the avail
    ring, so the datagram received into it publishes five more buffers mid-call: exactly
    that race, every time."""
    r = rig(event_idx=True)
    ours, peer = udp_pair(4)
    room = HDR + 14 + 20 + 8
    seen = r.rx.avail_idx + 1
    peer.send(struct.pack("<H", (seen + 5) & 0xFFFF) + bytes(100))
    peer.send(b"second")
    wait_queued(ours)
    r.rx.add_chain([(r.rx.avail_gpa + 2 - room, 4096, True)])   # payload lands on avail idx
    path = core.UdpPath(r.rxq)
    assert path.rx(ours.fileno(), udp_templates(4)) == 1
    assert struct.unpack("<H", r.ram.read(r.rx.avail_gpa + 2, 2))[0] == seen + 5
    assert path.last.stop == core.UDP_STOP_LIMIT          # come back, do not wait
