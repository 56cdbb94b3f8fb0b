# SPDX-License-Identifier: MIT
"""The established-TCP data path (csrc/tcp_path.c via core.classify / send_payloads / TcpPath).

Rings live in memfd guest memory driven by tests/virtq_driver.py; sockets are real loopback TCP
connections. Frames are built and checked with scapy: classification of every protocol and of
hostile headers, zero-copy sends of exact payload bytes (partial sends included), and
host-to-guest segments (checksums, sequence numbers, MSS, num_buffers, GSO, peek offset, window,
ring exhaustion, dirty logging, deferred flush), plus header-only control segments.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.all import IPv6ExtHdrFragment, raw

from passt_py import core
from passt_py.core import CoreError, TcpTemplate
from passt_py.vhost_user import device as dev_mod
from passt_py.vhost_user import wire
from tests.conftest import hypothesis_budget
from tests.l4_helpers import recv_exactly
# rig: a fixture, used by name
from tests.ring_rig import (BASE, HDR, SIZE, E, GUEST_MAC, OUR_MAC, Rig, ip16,  # noqa: F401
                            rig, send_tx)
from tests.ring_rig import tcp_template as template
from tests.virtq_driver import PAGE


@pytest.fixture
def tcp_pair():
    """Factory of connected loopback TCP pairs (ours, peer); ours is non-blocking."""
    socks: list[socket.socket] = []

    def make(family: int = socket.AF_INET, sndbuf: int | None = None,
             rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        lst = socket.socket(family, socket.SOCK_STREAM)
        lst.bind((host, 0))
        lst.listen(1)
        ours = socket.socket(family, socket.SOCK_STREAM)
        if sndbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        ours.connect(lst.getsockname()[:2])
        peer, _ = lst.accept()
        lst.close()
        ours.setblocking(False)
        socks.extend((ours, peer))
        return ours, peer
    yield make
    for s in socks:
        s.close()


def classify_frames(rig: Rig, frames: list[bytes], **kw) -> core.PacketRecords:
    """Classify frames placed on the TX ring."""
    return core.classify(send_tx(rig, frames, **kw))


# ---- classification ----------------------------------------------------------------------------

def test_classify_tcp4_fields(rig):
    """Every TCP/IPv4 field lands in the record, offsets count from the Ethernet header."""
    r = rig()
    pkt = (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src="10.0.0.2", dst="93.184.216.34", ttl=61)
           / TCP(sport=40000, dport=443, seq=0x11223344, ack=0x55667788, flags="PA",
                 window=29200, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)])
           / (b"hello" * 20))
    recs = classify_frames(r, [raw(pkt)])
    p = recs[0]
    assert p.valid == core.PKT_OK
    assert (p.ethertype, p.ipver, p.proto, p.ttl) == (0x0800, 4, 6, 61)
    assert recs.src(0) == ipaddress.ip_address("10.0.0.2")
    assert recs.dst(0) == ipaddress.ip_address("93.184.216.34")
    assert (p.sport, p.dport, p.seq, p.ack, p.window) == (40000, 443, 0x11223344, 0x55667788,
                                                          29200)
    assert p.tcp_flags == core.TCP_PSH | core.TCP_ACK
    assert (p.l3_off, p.l4_off, p.tcp_doff) == (14, 34, 28)
    assert (p.opt_off, p.opt_len) == (54, 8)
    assert recs.tcp_options(0) == raw(pkt[TCP])[20:28]
    assert (p.payload_off, p.payload_len) == (62, 100)
    assert recs.payload(0) == b"hello" * 20
    assert p.len == len(raw(pkt)) and p.ip_len == len(raw(pkt[IP]))
    assert recs.key(0) == (ip16("10.0.0.2"), 40000, ip16("93.184.216.34"), 443)
    r.txq.release(recs.batch)


def test_classify_tcp6_with_extension_header(rig):
    """IPv6 extension headers are walked to the TCP header."""
    r = rig()
    pkt = (E() / IPv6(src="fd00::2", dst="2001:db8::1", hlim=33) / IPv6ExtHdrHopByHop()
           / TCP(sport=1234, dport=80, seq=7, flags="S") / b"")
    recs = classify_frames(r, [raw(pkt)])
    p = recs[0]
    assert p.valid == core.PKT_OK
    assert (p.ipver, p.proto, p.ttl, p.l4_off) == (6, 6, 33, 14 + 40 + 8)
    assert recs.src(0) == ipaddress.ip_address("fd00::2")
    assert (p.sport, p.dport, p.seq, p.tcp_flags) == (1234, 80, 7, core.TCP_SYN)
    assert p.payload_len == 0


def test_classify_other_protocols(rig):
    """UDP, ICMP, ICMPv6, ARP and an unknown L4 protocol get their fields and codes."""
    r = rig()
    frames = [
        E() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=5353, dport=53) / (b"q" * 30),
        E() / IPv6(src="fd00::2", dst="fd00::1") / UDP(sport=546, dport=547) / (b"d" * 7),
        E() / IP() / ICMP(type=8, code=0, id=5, seq=9) / b"ping",
        E() / IPv6() / ICMPv6EchoRequest(id=1, seq=2, data=b"abc"),
        E() / ARP(),
        E() / IP(proto=47) / b"gre-ish",
    ]
    recs = classify_frames(r, [raw(f) for f in frames])
    codes = [recs[i].valid for i in range(len(frames))]
    assert codes == [core.PKT_OK] * 4 + [core.PKT_OTHER, core.PKT_OK]
    assert (recs[0].proto, recs[0].sport, recs[0].dport, recs[0].payload_len) == (17, 5353, 53, 30)
    assert recs.payload(0) == b"q" * 30
    assert (recs[1].ipver, recs[1].sport, recs[1].dport, recs.payload(1)) == (6, 546, 547,
                                                                             b"d" * 7)
    assert (recs[2].proto, recs[2].sport, recs[2].dport) == (1, 8, 0)
    assert recs.payload(2)[4:] == b"ping"      # after the 4-byte ICMP header: id, seq, data
    assert (recs[3].proto, recs[3].sport) == (58, 128)
    assert recs[4].ethertype == 0x0806
    assert (recs[5].proto, recs.payload(5)) == (47, b"gre-ish")


def test_classify_headers_split_across_descriptors(rig):
    """A frame whose headers are cut into 1..7-byte descriptors classifies like a whole one."""
    r = rig()
    pkt = raw(E() / IPv6(src="fd00::2", dst="fd00::1")
              / TCP(sport=9, dport=10, seq=99, options=[("Timestamp", (1, 2))]) / (b"z" * 300))
    splits = [None, [1] * 80, [3, 5, 7, 2, 11, 13, 1, 4]]
    recs = classify_frames(r, [pkt] * 3, splits=[[HDR] + (s or []) for s in splits])
    first = bytes(core.ffi.buffer(core.ffi.addressof(recs.recs, 0),
                                  core.ffi.sizeof("struct pc_pkt")))
    for i in range(3):
        assert recs[i].valid == core.PKT_OK
        assert bytes(core.ffi.buffer(core.ffi.addressof(recs.recs, i),
                                     core.ffi.sizeof("struct pc_pkt"))) == first
        assert recs.payload(i) == b"z" * 300
        assert recs.tcp_options(i) == raw(TCP(options=[("Timestamp", (1, 2))]))[20:]


def _ip4(**kw) -> bytearray:
    return bytearray(raw(E() / IP(src="10.0.0.2", dst="10.0.0.1", **kw)
                         / TCP(sport=1, dport=2) / b"payload!"))


def _hostile_frames() -> list[tuple[bytes, int]]:
    """(frame, expected validity code) pairs of lying or truncated headers."""
    good = _ip4()
    out: list[tuple[bytes, int]] = [(bytes(good), core.PKT_OK), (b"\x00" * 13, core.PKT_SHORT_ETH)]
    out.append((bytes(good[:30]), core.PKT_IP_HDR))                   # IPv4 header cut
    bad_ver = bytearray(good)
    bad_ver[14] = 0x55
    out.append((bytes(bad_ver), core.PKT_IP_HDR))
    ihl4 = bytearray(good)
    ihl4[14] = 0x44                                                   # IHL 16 bytes
    out.append((bytes(ihl4), core.PKT_IP_HDR))
    ihl_big = bytearray(good[:40])
    ihl_big[14] = 0x4F                                                # IHL 60 > frame
    out.append((bytes(ihl_big), core.PKT_IP_HDR))
    tot_big = bytearray(good)
    struct.pack_into("!H", tot_big, 16, 1500)                         # total length lies
    out.append((bytes(tot_big), core.PKT_IP_LEN))
    tot_small = bytearray(good)
    struct.pack_into("!H", tot_small, 16, 10)                         # shorter than IHL
    out.append((bytes(tot_small), core.PKT_IP_LEN))
    tot_l4 = bytearray(good)
    struct.pack_into("!H", tot_l4, 16, 30)                            # TCP header cut by length
    out.append((bytes(tot_l4), core.PKT_L4_SHORT))
    out.append((bytes(good[:44]), core.PKT_IP_LEN))                   # frame cut, length kept
    doff_small = bytearray(good)
    doff_small[14 + 20 + 12] = 0x40                                   # data offset 16
    out.append((bytes(doff_small), core.PKT_TCP_DOFF))
    doff_big = bytearray(good)
    doff_big[14 + 20 + 12] = 0xF0                                     # 60 > segment
    out.append((bytes(doff_big), core.PKT_TCP_DOFF))
    out.append((raw(E() / IP(flags="MF") / TCP()), core.PKT_IP_FRAG))
    out.append((raw(E() / IP(frag=100) / TCP()), core.PKT_IP_FRAG))
    v6 = bytearray(raw(E() / IPv6() / TCP() / b"abc"))
    struct.pack_into("!H", v6, 18, 4000)                              # payload length lies
    out.append((bytes(v6), core.PKT_IP_LEN))
    out.append((raw(E() / IPv6() / IPv6ExtHdrFragment() / TCP()), core.PKT_IP_FRAG))
    ext = bytearray(raw(E() / IPv6() / IPv6ExtHdrHopByHop() / TCP()))
    ext[14 + 40 + 1] = 200                                            # ext header runs past end
    out.append((bytes(ext), core.PKT_IP_EXT))
    out.append((bytes(good[:14]) + b"\x60" + bytes(20), core.PKT_IP_HDR))   # IPv6 cut short
    return out


def test_classify_hostile_lengths(rig):
    """Truncated frames and lying IHL / total length / data offset get the right codes."""
    r = rig()
    cases = _hostile_frames()
    for i, (frame, _) in enumerate(cases):
        if frame[12:14] == b"\x08\x00" and i >= len(cases) - 1:
            pass
    recs = classify_frames(r, [f for f, _ in cases])
    got = [core.PKT_CODES[recs[i].valid] for i in range(len(cases))]
    assert got == [core.PKT_CODES[c] for _, c in cases]


@hypothesis_budget(1.5)
@given(data=st.binary(min_size=0, max_size=200), cut=st.lists(st.integers(1, 40), max_size=6),
       ethertype=st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06"]))
def test_classify_random_bytes_stay_in_bounds(data, cut, ethertype):
    """Random headers never yield offsets or lengths outside the frame."""
    r = Rig(num=8)
    frame = bytes(12) + ethertype + data
    while sum(cut) > len(frame):
        cut.pop()
    recs = classify_frames(r, [frame], splits=[[HDR] + cut])
    p = recs[0]
    assert p.len == len(frame)
    if p.valid == core.PKT_OK:
        assert p.l4_off <= p.len
        assert p.payload_off + p.payload_len <= p.len
        assert len(recs.payload(0)) == p.payload_len
        if p.proto == 6:
            assert p.opt_off + p.opt_len <= p.payload_off
    r.txq.release(recs.batch)
    r.close()


def test_classify_keeps_tx_offload_header(rig):
    """NEEDS_CSUM + GSO fields of a guest's TSO frame are reported; bad checksums are fine."""
    r = rig()
    pkt = E() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=5, dport=6, chksum=0xdead)
    frame = raw(pkt / (b"x" * 20000))
    vnet = struct.pack("<BBHHHHH", core.VNET_F_NEEDS_CSUM, core.VNET_GSO_TCPV4, 54, 1448, 34,
                       16, 0)
    recs = classify_frames(r, [frame], vnet=[vnet])
    p = recs[0]
    assert p.valid == core.PKT_OK
    assert (p.vnet_flags, p.gso_type, p.gso_size, p.csum_start, p.csum_offset) == (
        core.VNET_F_NEEDS_CSUM, core.VNET_GSO_TCPV4, 1448, 34, 16)
    assert p.payload_len == 20000


# ---- guest to host -----------------------------------------------------------------------------
def test_udp_length_field_bounds_the_payload(rig):
    """UDP payload_len follows the UDP length field; a field past the packet or below 8 is
    PKT_UDP_LEN (IP padding after a shorter datagram is not data)."""
    r = rig()
    good = raw(E() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=1, dport=2) / (b"d" * 40))
    def with_len(n: int) -> bytes:
        b = bytearray(good)
        struct.pack_into("!H", b, 14 + 20 + 4, n)
        return bytes(b)
    recs = classify_frames(r, [good, with_len(8 + 10), with_len(8 + 41), with_len(7)])
    assert [recs[i].valid for i in range(4)] == [core.PKT_OK, core.PKT_OK, core.PKT_UDP_LEN,
                                                 core.PKT_UDP_LEN]
    assert (recs[0].payload_len, recs[1].payload_len) == (40, 10)


def _seg(sport: int, seq: int, ack: int, flags: str = "A", n: int = 100) -> bytes:
    return raw(E() / IP(src="10.0.0.2", dst="10.0.0.1") /
               TCP(sport=sport, dport=80, seq=seq, ack=ack, flags=flags, window=500) / (b"p" * n))


def test_tcp_runs_cut_where_order_or_connection_changes(rig):
    """Runs: contiguous data of one connection (PSH allowed) with ACKs not going back; a new
    run at a gap, another connection, an older ACK, or any non-data TCP frame (alone);
    frames that are not TCP at all share one run (other)."""
    r = rig()
    frames = [
        _seg(1, 1000, 5), _seg(1, 1100, 6, "PA"), _seg(1, 1200, 6),     # run A: 3 frames
        _seg(2, 7000, 9),                                               # run B
        _seg(1, 1300, 7),                                               # run A again
        _seg(1, 1500, 7),                                               # gap: new run
        _seg(1, 1600, 6),                                               # ACK went back
        _seg(1, 1700, 6, "FA"),                                         # FIN: not data
        _seg(1, 1800, 6, "A", 0),                                       # pure ACK: not data
        raw(E() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=1, dport=2) / b"u"),
        _seg(1, 0xFFFFFFC0, 8, "A", 0x40), _seg(1, 0, 8),              # across the wrap
        raw(E() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=1, dport=2) / b"v"),
        raw(E() / ARP()),                                               # not TCP: one run
    ]
    batch = send_tx(r, frames)
    recs = core.classify(batch)
    runs, n, refs = core.tcp_runs(recs)
    got = [(runs[k].first, runs[k].count, runs[k].data, runs[k].seq, runs[k].bytes,
            runs[k].ack, runs[k].other) for k in range(n)]
    assert got == [(0, 3, 1, 1000, 300, 6, 0), (3, 1, 1, 7000, 100, 9, 0),
                   (4, 1, 1, 1300, 100, 7, 0), (5, 1, 1, 1500, 100, 7, 0),
                   (6, 1, 1, 1600, 100, 6, 0), (7, 1, 0, 0, 0, 0, 0), (8, 1, 0, 1800, 0, 6, 0),
                   (9, 1, 0, 0, 0, 0, 1), (10, 2, 1, 0xFFFFFFC0, 0x40 + 100, 8, 0),
                   (12, 2, 0, 0, 0, 0, 1)]
    assert [(refs[i].frame, refs[i].off, refs[i].len) for i in range(3)] == \
        [(i, recs[i].payload_off, 100) for i in range(3)]


def test_tcp_runs_fold_rising_bare_acks_of_one_connection(rig):
    """Bare ACKs of one connection, each acknowledging more, are one run (acks set) whose
    ack and window are the last one's. A repeated ACK (a duplicate, which counts) is never
    folded into the one it repeats: it starts a new run, as do another connection, another
    sequence number, an ACK going back or any other flag."""
    r = rig()
    frames = [
        _seg(1, 100, 10, "A", 0), _seg(1, 100, 20, "A", 0), _seg(1, 100, 30, "A", 0),  # 1 run
        _seg(1, 100, 30, "A", 0),                                   # duplicate: its own run
        _seg(1, 100, 40, "A", 0),                                   # (rises from the dup)
        _seg(2, 900, 50, "A", 0),                                   # another connection
        _seg(1, 100, 50, "A", 0),
        _seg(1, 101, 60, "A", 0),                                   # another seq
        _seg(1, 101, 55, "A", 0),                                   # ACK went back
        _seg(1, 101, 70, "PA", 0),                                  # PSH: not a bare ACK
        _seg(1, 101, 0xFFFFFFF0, "A", 0), _seg(1, 101, 5, "A", 0),  # rising across the wrap
    ]
    frames[2] = raw(E() / IP(src="10.0.0.2", dst="10.0.0.1") /
                    TCP(sport=1, dport=80, seq=100, ack=30, flags="A", window=777))
    recs = core.classify(send_tx(r, frames))
    runs, n, _refs = core.tcp_runs(recs)
    got = [(runs[k].first, runs[k].count, runs[k].acks, runs[k].ack) for k in range(n)]
    assert got == [(0, 3, 1, 30), (3, 2, 1, 40), (5, 1, 1, 50), (6, 1, 1, 50), (7, 1, 1, 60),
                   (8, 1, 1, 55), (9, 1, 0, 0), (10, 2, 1, 5)]
    assert runs[0].window == 777 and runs[0].data == 0


def test_send_payload_runs_gathers_interleaved_runs_in_order(rig, tcp_pair):
    """Two runs of one connection separated by another's frames go out as one stream."""
    r = rig()
    ours, peer = tcp_pair()
    payloads = [os.urandom(n) for n in (10, 2000, 7, 300, 4000)]
    frames = [raw(E() / IP() / TCP() / p) for p in payloads]
    batch = send_tx(r, frames, splits=[None, [HDR, 500], None, None, [HDR, 54, 1000]])
    recs = core.classify(batch)
    _runs, _n, refs = core.tcp_runs(recs)
    sent = core.send_payload_runs(ours.fileno(), batch, refs, [(0, 2), (3, 2)])
    expect = payloads[0] + payloads[1] + payloads[3] + payloads[4]
    assert sent == len(expect)
    assert hashlib.sha256(recv_exactly(peer, len(expect))).digest() == \
        hashlib.sha256(expect).digest()



def test_send_payloads_moves_exact_bytes_across_slices(rig, tcp_pair):
    """Payload ranges (headers skipped, slices crossed, sub-ranges) arrive byte-exact."""
    r = rig()
    ours, peer = tcp_pair()
    payloads = [os.urandom(n) for n in (1, 100, 1460, 5000, 333)]
    frames = [raw(E() / IP() / TCP() / p) for p in payloads]
    splits = [[HDR, 7, 30], [HDR + 60], [HDR, 1, 1, 1, 500], [HDR, 2000, 2000], None]
    batch = send_tx(r, frames, splits=splits)
    recs = core.classify(batch)
    items = [(i, recs[i].payload_off, recs[i].payload_len) for i in range(len(frames))]
    items.append((3, recs[3].payload_off + 10, 20))          # a sub-range, out of frame order
    expect = b"".join(payloads) + payloads[3][10:30]
    assert core.send_payloads(ours.fileno(), batch, items) == len(expect)
    got = recv_exactly(peer, len(expect))
    assert hashlib.sha256(got).digest() == hashlib.sha256(expect).digest()


def test_send_payloads_partial_send_reports_what_kernel_took(rig, tcp_pair):
    """With a small send buffer and a stalled peer, the return value is exactly what left."""
    r = rig()
    ours, peer = tcp_pair(sndbuf=4096)
    payloads = [os.urandom(60000) for _ in range(20)]
    frames = [raw(E() / IP() / TCP() / p) for p in payloads]
    batch = send_tx(r, frames, splits=[[HDR, 54 + 1000, 7000, 20000]] * 20)
    recs = core.classify(batch)
    stream = b"".join(payloads)
    done = 0
    received = bytearray()
    stalls = 0
    peer.setblocking(False)
    while done < len(stream):
        items, skip = [], done
        for i in range(len(frames)):
            n = recs[i].payload_len
            if skip >= n:
                skip -= n
                continue
            items.append((i, recs[i].payload_off + skip, n - skip))
            skip = 0
        sent = core.send_payloads(ours.fileno(), batch, items)
        if sent < len(stream) - done:
            stalls += 1
        done += sent
        try:
            while True:
                chunk = peer.recv(1 << 16)
                if not chunk:
                    break
                received += chunk
        except BlockingIOError:
            pass
    peer.setblocking(True)
    received += recv_exactly(peer, len(stream) - len(received))
    assert stalls > 0                                   # partial sends did happen
    assert hashlib.sha256(bytes(received)).digest() == hashlib.sha256(stream).digest()


def test_send_payloads_refuses_ranges_outside_frames(rig, tcp_pair):
    """A range past its frame, or a frame not in the batch, sends nothing (EINVAL)."""
    r = rig()
    ours, peer = tcp_pair()
    batch = send_tx(r, [raw(E() / IP() / TCP() / b"abc")])
    n = batch.frame_len(0)
    for items in ([(0, n - 2, 3)], [(1, 0, 1)], [(0, 0, 1), (0, n, 1)]):
        with pytest.raises(CoreError) as e:
            core.send_payloads(ours.fileno(), batch, items)
        assert e.value.errno == errno.EINVAL
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)


def test_send_payloads_socket_error_raises(rig, tcp_pair):
    """A reset connection raises CoreError (EPIPE / ECONNRESET), never SIGPIPE."""
    r = rig()
    ours, peer = tcp_pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    batch = send_tx(r, [raw(E() / IP() / TCP() / b"abc")])
    recs = core.classify(batch)
    with pytest.raises(CoreError) as e:
        for _ in range(3):
            core.send_payloads(ours.fileno(), batch, [(0, recs[0].payload_off, 3)])
    assert e.value.errno in (errno.EPIPE, errno.ECONNRESET)


# ---- host to guest -----------------------------------------------------------------------------



def check_segment(frame: bytes, tmpl: TcpTemplate, full_csum: bool = True):
    """Parse an RX frame with scapy and check addresses, ports, ack, window, checksums."""
    pkt = Ether(frame)
    assert pkt.dst == GUEST_MAC.hex(":") and pkt.src == OUR_MAC.hex(":")
    ipl = pkt[IP] if tmpl.ipver == 4 else pkt[IPv6]
    tcp = pkt[TCP]
    assert (tcp.sport, tcp.dport, tcp.ack, tcp.window) == (443, 40000, tmpl.ack, tmpl.window)
    if tmpl.ipver == 4:
        ref = ipl.copy()
        del ref.chksum
        assert IP(raw(ref)).chksum == ipl.chksum
        assert ipl.flags == "DF" and ipl.len == len(frame) - 14
    else:
        assert ipl.plen == len(frame) - 54
    if full_csum:
        ref = pkt.copy()
        del ref[TCP].chksum
        assert Ether(raw(ref))[TCP].chksum == tcp.chksum
    return pkt


def drain(r: Rig, ours: socket.socket, tmpl: TcpTemplate, total: int, opts: int = 0,
          mergeable: bool = True) -> list[tuple[bytes, bytes, int]]:
    """rx() until total bytes went to the guest (advancing tmpl.seq); the frames made."""
    import time
    frames: list[tuple[bytes, bytes, int]] = []
    done = 0
    deadline = time.monotonic() + 10
    while done < total and time.monotonic() < deadline:
        n = r.path.rx(ours.fileno(), tmpl, total - done, opts=opts, mergeable=mergeable)
        tmpl.seq = (tmpl.seq + n) & 0xFFFFFFFF
        done += n
        if n:                   # the guest acknowledged it: discard (peek offset moves back)
            assert len(ours.recv(n)) == n
        frames += r.rx_frames(mergeable)
        if not n:
            time.sleep(0.002)
    assert done == total
    return frames


def peek_socket(ours: socket.socket, offset: int = 0) -> None:
    core.set_peek_offset(ours, offset)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("use_ts", [False, True])
def test_rx_segments_at_mss_with_checksums(rig, tcp_pair, family, use_ts):
    """Peer data arrives as MSS-sized segments, checksums valid, seq advancing, PSH last."""
    r = rig()
    ours, peer = tcp_pair(socket.AF_INET if family == 4 else socket.AF_INET6)
    peek_socket(ours)
    data = os.urandom(10000)
    peer.sendall(data)
    r.rx.add_rx_buffers(32, 2048)
    tmpl = template(family, use_ts=use_ts, ts_val=77, ts_ecr=88)
    _wait_readable(ours, len(data))
    n = r.path.rx(ours.fileno(), tmpl, 1 << 20)
    assert n == len(data)
    assert r.path.last.stop == core.TCP_STOP_DRAINED
    frames = r.rx_frames()
    assert r.path.last.segs == len(frames) == 7
    got, seq = b"", 1000
    for k, (vnet, frame, nbuf) in enumerate(frames):
        assert vnet == bytes(10) + struct.pack("<H", 1) and nbuf == 1
        pkt = check_segment(frame, tmpl)
        tcp = pkt[TCP]
        assert tcp.seq == seq
        payload = bytes(tcp.payload)
        assert len(payload) <= 1460
        assert str(tcp.flags) == ("PA" if k == len(frames) - 1 else "A")
        if use_ts:
            assert dict(tcp.options)["Timestamp"] == (77, 88)
        seq += len(payload)
        got += payload
    assert got == data
    assert r.rx_calls() == 1


def _wait_readable(sock: socket.socket, n: int) -> None:
    """Wait until n bytes are queued on sock (FIONREAD: peeking would move SO_PEEK_OFF)."""
    import fcntl
    import termios
    import time
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4)
        if struct.unpack("i", buf)[0] >= n:
            return
        time.sleep(0.002)
    raise AssertionError("data did not arrive")


def test_rx_mergeable_small_buffers_and_num_buffers(rig, tcp_pair):
    """Segments span several small mergeable buffers; num_buffers and used lengths match."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    data = os.urandom(5000)
    peer.sendall(data)
    _wait_readable(ours, len(data))
    r.rx.add_rx_buffers(40, 500, segments=3)
    tmpl = template(mss=1400)
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 5000
    frames = r.rx_frames()
    assert [len(f) - 54 for _, f, _ in frames] == [1400, 1400, 1400, 800]
    assert [nbuf for _, _, nbuf in frames] == [3, 3, 3, 2]   # 12 + 54 + 1400 in 500s
    assert b"".join(bytes(check_segment(f, tmpl)[TCP].payload) for _, f, _ in frames) == data


def test_rx_not_mergeable_one_chain_per_segment(rig, tcp_pair):
    """Without MRG_RXBUF each segment takes one chain, sized down to fit it."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    data = os.urandom(3000)
    peer.sendall(data)
    _wait_readable(ours, len(data))
    r.rx.add_rx_buffers(10, 1000)
    tmpl = template()
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20, mergeable=False) == 3000
    frames = r.rx_frames(mergeable=False)
    assert all(len(f) + HDR <= 1000 for _, f, _ in frames)
    assert b"".join(bytes(check_segment(f, tmpl)[TCP].payload) for _, f, _ in frames) == data


@pytest.mark.parametrize("family", [4, 6])
def test_rx_gso_segments_and_partial_checksum(rig, tcp_pair, family):
    """With GSO, segments up to 64 KiB carry gso_type/gso_size and a partial checksum."""
    r = rig()
    ours, peer = tcp_pair(socket.AF_INET if family == 4 else socket.AF_INET6)
    peek_socket(ours)
    data = os.urandom(150000)
    peer.sendall(data)
    r.rx.add_rx_buffers(64, 4096)
    tmpl = template(family)
    opts = core.TCP_RX_GSO | core.TCP_RX_CSUM_PARTIAL
    frames = drain(r, ours, tmpl, len(data), opts)
    l3 = 20 if family == 4 else 40
    gso_type = core.VNET_GSO_TCPV4 if family == 4 else core.VNET_GSO_TCPV6
    got = b""
    for vnet, frame, nbuf in frames:
        flags, gtype, hlen, gsize, cstart, coff, nb = struct.unpack("<BBHHHHH", vnet)
        plen = len(frame) - 14 - l3 - 20
        assert plen <= 65535 - 20 - (20 if family == 4 else 0)
        assert nb == nbuf and flags == core.VNET_F_NEEDS_CSUM
        assert (cstart, coff) == (14 + l3, 16)
        if plen > 1460:
            assert (gtype, hlen, gsize) == (gso_type, 14 + l3 + 20, 1460)
        else:
            assert gtype == core.VNET_GSO_NONE
        # completing the partial checksum from csum_start gives the real one
        seg = bytearray(frame[cstart:])
        total = core.csum_partial(bytes(seg))
        struct.pack_into("!H", seg, coff, core.csum_fold(total))
        full = bytearray(frame)
        full[cstart:] = seg
        check_segment(bytes(full), tmpl)
        got += bytes(Ether(frame)[TCP].payload)
    assert got == data
    assert max(len(f) for _, f, _ in frames) > 60000


def test_rx_data_valid_flag(rig, tcp_pair):
    """DATA_VALID: full checksum, DATA_VALID flag, no GSO."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    peer.sendall(b"x" * 3000)
    _wait_readable(ours, 3000)
    r.rx.add_rx_buffers(8, 2048)
    tmpl = template()
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20, opts=core.TCP_RX_DATA_VALID) == 3000
    for vnet, frame, _ in r.rx_frames():
        assert vnet[0] == core.VNET_F_DATA_VALID and vnet[1] == 0
        check_segment(frame, tmpl)


def test_rx_peek_offset_semantics(rig, tcp_pair):
    """rx() peeks from SO_PEEK_OFF on; data stays queued until the caller discards it."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    data = os.urandom(4000)
    peer.sendall(data)
    _wait_readable(ours, len(data))
    r.rx.add_rx_buffers(32, 2048)
    tmpl = template()
    assert r.path.rx(ours.fileno(), tmpl, 1500) == 1500
    tmpl.seq += 1500
    assert r.path.rx(ours.fileno(), tmpl, 1000) == 1000
    tmpl.seq += 1000
    frames = r.rx_frames()
    payloads = [bytes(check_segment(f, tmpl)[TCP].payload) for _, f, _ in frames]
    assert b"".join(payloads) == data[:2500]
    assert Ether(frames[-1][1])[TCP].seq == 1000 + 1500
    # the guest acknowledged 1200 bytes: discard them; the peek offset moves back with it
    assert ours.recv(1200) == data[:1200]
    assert ours.getsockopt(socket.SOL_SOCKET, core._SO_PEEK_OFF) == 1300
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 1500
    rest = r.rx_frames()
    assert b"".join(bytes(Ether(f)[TCP].payload) for _, f, _ in rest) == data[2500:]
    assert Ether(rest[0][1])[TCP].seq == 3500
    # retransmission: rewind the peek offset to the first unacknowledged byte
    core.set_peek_offset(ours, 0)
    tmpl.seq = 1000 + 1200
    assert r.path.rx(ours.fileno(), tmpl, 500) == 500
    again = r.rx_frames()
    assert bytes(Ether(again[0][1])[TCP].payload) == data[1200:1700]


def test_rx_respects_max_bytes(rig, tcp_pair):
    """Never more than max_bytes (the guest's window); stop reason WINDOW."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    peer.sendall(b"w" * 10000)
    _wait_readable(ours, 10000)
    r.rx.add_rx_buffers(32, 2048)
    assert r.path.rx(ours.fileno(), template(), 2921) == 2921
    assert r.path.last.stop == core.TCP_STOP_WINDOW
    assert [len(f) - 54 for _, f, _ in r.rx_frames()] == [1460, 1460, 1]
    assert r.path.rx(ours.fileno(), template(), 0) == 0
    assert r.path.last.stop == core.TCP_STOP_WINDOW


def test_rx_ring_exhaustion_and_rollback(rig, tcp_pair):
    """Out of buffers: what fits goes, the rest stays queued; an empty socket gives all back."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    tmpl = template()
    r.rx.add_rx_buffers(4, 2048)
    # nothing to read: every chain given back, nothing published, no notification
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 0
    assert r.path.last.stop == core.TCP_STOP_DRAINED
    assert r.rx.used_idx == 0 and r.rx_calls() == 0
    data = os.urandom(10000)
    peer.sendall(data)
    _wait_readable(ours, len(data))
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 4 * 1460
    assert r.path.last.stop == core.TCP_STOP_NOBUFS
    frames = r.rx_frames()
    assert b"".join(bytes(Ether(f)[TCP].payload) for _, f, _ in frames) == data[:5840]
    # no buffers at all: nothing happens
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 0
    assert r.path.last.stop == core.TCP_STOP_NOBUFS
    tmpl.seq += 5840
    r.rx.add_rx_buffers(8, 2048)
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 10000 - 5840
    assert b"".join(bytes(Ether(f)[TCP].payload) for _, f, _ in r.rx_frames()) == data[5840:]


def test_rx_partial_buffers_give_back_unused_chains(rig, tcp_pair):
    """Chains planned for data that did not come are returned untouched, in order."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    r.rx.add_rx_buffers(10, 2048)
    peer.sendall(b"a" * 100)
    _wait_readable(ours, 100)
    tmpl = template()
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 100
    assert r.path.last.bufs == 1 and r.rx.used_idx == 1
    peer.sendall(b"b" * 3000)
    _wait_readable(ours, 3000)
    tmpl.seq += 100
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 3000
    frames = r.rx_frames()
    assert r.rx.used_idx == 4 == len(frames)
    assert b"".join(bytes(Ether(f)[TCP].payload) for _, f, _ in frames) == b"a" * 100 + b"b" * 3000


def test_rx_eof(rig, tcp_pair):
    """After the peer's FIN and all data peeked, rx() says EOF and consumes nothing."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    peer.sendall(b"bye")
    peer.shutdown(socket.SHUT_WR)
    _wait_readable(ours, 3)
    r.rx.add_rx_buffers(4, 2048)
    tmpl = template()
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 3
    import time
    time.sleep(0.05)
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 0
    assert r.path.last.stop == core.TCP_STOP_EOF
    assert r.rx.used_idx == 1


def test_rx_dirty_log(rig, tcp_pair):
    """Every page written (headers, payload, used ring) is marked in the dirty log."""
    r = rig(log=True)
    top = BASE + SIZE
    size = max(PAGE, (top // PAGE + 7) // 8)
    fd = os.memfd_create("log")
    os.ftruncate(fd, size)
    import mmap
    log_map = mmap.mmap(fd, size)
    r.mem.set_log(fd, size, 0)
    r.mem.logging = True
    os.close(fd)
    ours, peer = tcp_pair()
    peek_socket(ours)
    r.rx.add_rx_buffers(8, 8192, segments=2)
    peer.sendall(os.urandom(20000))
    _wait_readable(ours, 20000)
    assert r.path.rx(ours.fileno(), template(), 1 << 20, opts=core.TCP_RX_GSO |
                     core.TCP_RX_CSUM_PARTIAL) == 20000
    used = r.rx.pop_used()
    pages = set()
    for i, byte in enumerate(log_map[:]):
        for b in range(8):
            if byte >> b & 1:
                pages.add(i * 8 + b)
    want = set()
    for head, length in used:
        left = length
        for gpa, n in r.rx.chain_buffers(head):
            take = min(n, left)
            if take > 0:
                want |= set(range(gpa // PAGE, (gpa + take - 1) // PAGE + 1))
            left -= take
    want.add((r.rx.used_gpa + 2) // PAGE)
    assert used and want <= pages
    log_map.close()


def test_rx_deferred_flush_notifies_once(rig, tcp_pair):
    """rx(flush=False) for several flows, then one flush(): one used idx update, one call."""
    r = rig()
    pairs = [tcp_pair() for _ in range(3)]
    r.rx.add_rx_buffers(16, 2048)
    for ours, peer in pairs:
        peek_socket(ours)
        peer.sendall(b"m" * 2000)
        _wait_readable(ours, 2000)
    for ours, _ in pairs:
        assert r.path.rx(ours.fileno(), template(), 1 << 20, flush=False) == 2000
    assert r.rx.used_idx == 0 and r.rx_calls() == 0
    assert r.rxq.flush()
    assert r.rx.used_idx == 6 and r.rx_calls() == 1
    assert len(r.rx_frames()) == 6


def test_rx_bad_chain_returned_empty(rig, tcp_pair):
    """A read-only (bad) RX chain before good ones is returned with length 0; data flows."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    gpa = r.ram.alloc(2048)
    r.rx.add_chain([(gpa, 2048, False)])              # device-readable: bad on RX
    r.rx.add_rx_buffers(4, 2048)
    peer.sendall(b"q" * 1000)
    _wait_readable(ours, 1000)
    assert r.path.rx(ours.fileno(), template(), 1 << 20) == 1000
    assert r.path.last.bad == 1
    used = r.rx.pop_used()
    assert used[0][1] == 0 and len(used) == 2


def test_rx_stopped_ring_and_bad_template(rig, tcp_pair):
    """A stopped ring does nothing; a template without IP version or MSS is EINVAL."""
    r = rig()
    ours, _ = tcp_pair()
    bad = template()
    bad.mss = 0
    with pytest.raises(CoreError):
        r.path.rx(ours.fileno(), bad, 100)
    r.rxq.stop()
    assert r.path.rx(ours.fileno(), template(), 100) == 0
    assert r.path.last.stop == core.TCP_STOP_STOPPED


def test_ctl_syn_ack_with_options(rig):
    """A header-only SYN-ACK with MSS/WS/SACK-perm options goes out checksummed."""
    r = rig()
    r.rx.add_rx_buffers(2, 2048)
    tmpl = template(6, seq=777, ack=888)
    opts = struct.pack("!BBH", 2, 4, 1460) + bytes([1, 3, 3, 7]) + bytes([4, 2, 1, 1])
    assert r.path.ctl(tmpl, core.TCP_SYN | core.TCP_ACK, opts)
    (vnet, frame, nbuf), = r.rx_frames()
    assert nbuf == 1 and vnet[:10] == bytes(10)
    pkt = check_segment(frame, tmpl)
    assert str(pkt[TCP].flags) == "SA" and (pkt[TCP].seq, pkt[TCP].ack) == (777, 888)
    o = dict((k, v) for k, v in pkt[TCP].options)
    assert o["MSS"] == 1460 and o["WScale"] == 7 and "SAckOK" in o
    tmpl.use_ts = True
    tmpl.ts_val, tmpl.ts_ecr = 5, 6
    assert r.path.ctl(tmpl, core.TCP_FIN | core.TCP_ACK, data_valid=True)
    (vnet, frame, _), = r.rx_frames()
    assert vnet[0] == core.VNET_F_DATA_VALID
    assert dict(check_segment(frame, tmpl)[TCP].options)["Timestamp"] == (5, 6)
    assert not r.path.ctl(tmpl, core.TCP_ACK)          # no buffer left
    with pytest.raises(CoreError):
        r.path.ctl(tmpl, core.TCP_ACK, b"\x01\x01\x01")  # options not padded


def test_tcp_build_matches_scapy():
    """tcp_build() frames parse and verify, IPv4 and IPv6, with payload."""
    for family in (4, 6):
        tmpl = template(family, seq=42, ack=43)
        frame = core.tcp_build(tmpl, core.TCP_ACK | core.TCP_PSH, b"", b"payload")
        pkt = check_segment(frame, tmpl)
        assert bytes(pkt[TCP].payload) == b"payload" and pkt[TCP].seq == 42


def test_device_offloads_follow_negotiation():
    """Offload bits are offered; RX options follow exactly what was acknowledged."""
    d = dev_mod.NetDevice()
    for b in (0, 1, 7, 8, 11, 12):
        assert d.offered_features & (1 << b)
    base = wire.bit(wire.VIRTIO_F_VERSION_1) | wire.bit(wire.VIRTIO_NET_F_MRG_RXBUF)
    d.set_features(base)
    assert d.tcp_rx_opts(4) == 0 and not d.host_csum
    d.set_features(base | wire.bit(dev_mod.VIRTIO_NET_F_GUEST_TSO4))   # TSO without CSUM
    assert d.tcp_rx_opts(4) == 0
    d.set_features(base | wire.bit(dev_mod.VIRTIO_NET_F_GUEST_CSUM)
                   | wire.bit(dev_mod.VIRTIO_NET_F_GUEST_TSO4))
    assert d.tcp_rx_opts(4) == core.TCP_RX_GSO | core.TCP_RX_CSUM_PARTIAL
    assert d.tcp_rx_opts(6) == core.TCP_RX_CSUM_PARTIAL
    d.set_features(base | wire.bit(dev_mod.VIRTIO_NET_F_CSUM)
                   | wire.bit(dev_mod.VIRTIO_NET_F_HOST_TSO6))
    assert d.host_csum and d.host_tso(6) and not d.host_tso(4)
    d.reset()


@hypothesis_budget(0.4)
@given(size=st.integers(1, 30000), bufs=st.integers(1, 40), buf_size=st.integers(40, 5000),
       segments=st.integers(1, 3), mergeable=st.booleans(), gso=st.booleans(),
       window=st.integers(0, 40000), mss=st.integers(1, 9000), family=st.sampled_from([4, 6]))
def test_rx_property_stream_is_exact_prefix(size, bufs, buf_size, segments, mergeable, gso,
                                            window, mss, family):
    """Any buffers, MSS, window: the guest gets an exact prefix of the stream, well framed."""
    r = Rig(num=128)
    lst = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6)
    lst.bind(("127.0.0.1" if family == 4 else "::1", 0))
    lst.listen(1)
    ours = socket.create_connection(lst.getsockname()[:2])
    peer, _ = lst.accept()
    lst.close()
    try:
        ours.setblocking(False)
        peek_socket(ours)
        data = os.urandom(size)
        peer.sendall(data)
        _wait_readable(ours, size)
        r.rx.add_rx_buffers(bufs, buf_size, segments=segments)
        tmpl = template(family, mss=mss)
        opts = core.TCP_RX_GSO | core.TCP_RX_CSUM_PARTIAL if gso else 0
        n = r.path.rx(ours.fileno(), tmpl, window, mergeable=mergeable, opts=opts)
        assert n <= min(size, window)
        frames = r.rx_frames(mergeable)
        assert len(frames) == r.path.last.segs
        got, seq = b"", 1000
        for vnet, frame, _ in frames:
            pkt = check_segment(frame, tmpl, full_csum=not gso)
            payload = bytes(pkt[TCP].payload)
            assert pkt[TCP].seq == seq and 0 < len(payload)
            if not (gso and vnet[1]):
                assert len(payload) <= mss
            seq += len(payload)
            got += payload
        assert got == data[:n]
        if n < min(size, window):
            assert r.path.last.stop in (core.TCP_STOP_NOBUFS, core.TCP_STOP_LIMIT)
        # the chains not used are still available, untouched, in order
        assert r.rxq.avail_pending == bufs - r.path.last.bufs - r.path.last.bad
    finally:
        ours.close()
        peer.close()
        r.close()


def test_rx_per_call_limit(rig, tcp_pair):
    """More segments than one recvmsg() can take (1024 iovecs): stop LIMIT, resume cleanly."""
    r = rig(num=2048)
    ours, peer = tcp_pair()
    peek_socket(ours)
    data = os.urandom(120000)
    peer.sendall(data)
    _wait_readable(ours, len(data))
    r.rx.add_rx_buffers(1300, 256)
    tmpl = template(mss=100)
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 1024 * 100
    assert r.path.last.stop == core.TCP_STOP_LIMIT and r.path.last.segs == 1024
    tmpl.seq += 102400
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 120000 - 102400
    frames = r.rx_frames()
    assert b"".join(bytes(Ether(f)[TCP].payload) for _, f, _ in frames) == data


def test_stop_publishes_deferred_used_elements(rig, tcp_pair):
    """Stopping the ring (GET_VRING_BASE) publishes rx(flush=False) work, so none is lost."""
    r = rig()
    ours, peer = tcp_pair()
    peek_socket(ours)
    r.rx.add_rx_buffers(4, 2048)
    peer.sendall(b"s" * 1000)
    _wait_readable(ours, 1000)
    assert r.path.rx(ours.fileno(), template(), 1 << 20, flush=False) == 1000
    assert r.rx.used_idx == 0
    assert r.rxq.stop() == 1
    assert r.rx.used_idx == 1


@hypothesis_budget(2)
@given(spec=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 300),
                               st.sampled_from(["A", "PA", "S", "FA", "R"])),
                     min_size=1, max_size=24))
def test_tcp_runs_property_cover_the_batch_and_hold_only_in_order_data(spec):
    """Any mix of segments: runs cover every frame once, in order; a data run is one
    connection's contiguous data with ACKs not going back, and its sums are right."""
    r = Rig(num=64)
    frames, seq = [], {0: 1000, 1: 5000, 2: 9000}
    for conn, jump, n, flags in spec:
        seq[conn] += jump * 50            # jump 0: in order; otherwise a gap
        frames.append(_seg(conn + 1, seq[conn], 10 + jump, flags, n))
        seq[conn] += n
    batch = send_tx(r, frames)
    recs = core.classify(batch)
    runs, count, refs = core.tcp_runs(recs)
    covered = []
    for k in range(count):
        run = runs[k]
        idx = list(range(run.first, run.first + run.count))
        covered += idx
        if run.other:
            assert all(recs[i].proto != 6 or recs[i].valid != core.PKT_OK for i in idx)
            continue
        if not run.data and run.acks:
            assert all(recs[i].payload_len == 0 and recs[i].tcp_flags & 0x3F == 0x10
                       for i in idx)
            for a, b in zip(idx, idx[1:]):
                assert (recs[a].sport, recs[a].seq) == (recs[b].sport, recs[b].seq)
                assert 0 < (recs[b].ack - recs[a].ack) & 0xFFFFFFFF < 1 << 31
            assert (run.ack, run.window) == (recs[idx[-1]].ack, recs[idx[-1]].window)
            continue
        if not run.data:
            assert run.count == 1
            p = recs[run.first]
            assert not (p.payload_len and p.tcp_flags & 0x3F & ~0x08 == 0x10)
            continue
        assert run.bytes == sum(recs[i].payload_len for i in idx)
        assert run.seq == recs[idx[0]].seq and run.ack == recs[idx[-1]].ack
        for a, b in zip(idx, idx[1:]):
            assert recs[a].sport == recs[b].sport
            assert recs[b].seq == (recs[a].seq + recs[a].payload_len) & 0xFFFFFFFF
            assert (recs[b].ack - recs[a].ack) & 0xFFFFFFFF < 1 << 31
    assert covered == list(range(len(frames)))
    assert all(refs[i].frame == i and refs[i].len == recs[i].payload_len
               for i in range(len(frames)))


def test_buffers_the_driver_adds_during_the_call_are_not_waited_for(tcp_pair):
    """As for UDP (tests/test_udp_path.py): the peeked data lands on the avail idx of the
    ring, publishing buffers after the call planned with the old idx; the call, out of
    chains, must answer AGAIN (call again), not NOBUFS (wait for a kick that never comes)."""
    r = Rig(event_idx=True)
    try:
        ours, peer = tcp_pair()
        peek_socket(ours)
        room = HDR + 14 + 20 + 20
        seen = r.rx.avail_idx + 1
        data = struct.pack("<H", (seen + 5) & 0xFFFF) + bytes(3000)
        peer.sendall(data)
        _wait_readable(ours, len(data))
        r.rx.add_chain([(r.rx.avail_gpa + 2 - room, 2048, True)])
        n = r.path.rx(ours.fileno(), template(), 1 << 20)
        assert n == 1460                              # one segment of the template's MSS
        assert struct.unpack("<H", r.ram.read(r.rx.avail_gpa + 2, 2))[0] == seen + 5
        assert r.path.last.stop == core.TCP_STOP_AGAIN
    finally:
        r.close()
