# SPDX-License-Identifier: MIT
"""UDP through the whole back-end and real rings: the test front-end plays the guest driver.

The first datagram of a flow goes through the copying path (which creates the flow); later
ones of a known flow leave straight from guest memory (UdpHandler.take_batch, one sendmmsg
per run). Checked here: every payload arrives intact and in order, whatever the batch mixes,
and frames the fast path must not take (bad length field, new flows) are still handled right.
"""
from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
import time

import pytest

from passt_py.link.ip import udp_frame
from tests.frontend import Frontend
from tests.service_rig import GUEST, GUEST_MAC, GW, OUR_MAC, service_with_frontend


@pytest.fixture()
def backend(tmp_path):
    with service_with_frontend(tmp_path, 64, mem_size=64 << 20) as rig:
        yield rig


def _sink() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def _dgram(sport: int, dport: int, payload: bytes) -> bytes:
    return udp_frame(OUR_MAC, GUEST_MAC, GUEST, GW, sport, dport, payload)


def _recv_datagrams(sock: socket.socket, count: int) -> list[bytes]:
    """Up to ``count`` datagrams, fewer if the socket's timeout passes first."""
    out = []
    for _ in range(count):
        try:
            out.append(sock.recv(70000))
        except socket.timeout:
            break
    return out


def _send_batch(fe: Frontend, frames: list[bytes], split_big: bool = False) -> None:
    """One kick for the lot, so the back-end sees them as one TX batch (or a few)."""
    for f in frames:
        split = [100, 1000, len(f) - 1100] if split_big and len(f) > 1200 else None
        fe.send_frame(f, split=split, kick=False)
    fe.kick_tx()
    fe.wait_tx_used(len(frames), timeout=5)


def test_known_flow_datagrams_arrive_intact_and_in_order(backend) -> None:
    """200 datagrams of 1..60000 bytes (some split over descriptors), batched: all arrive in
    order with equal SHA-256, and the flow is served by the zero-copy path."""
    service, fe = backend
    sink = _sink()
    port = sink.getsockname()[1]
    copied = []                                  # datagrams that took the copying path
    slow = service.udp.from_guest                # what the tap demux calls for those
    service.udp.from_guest = lambda pkt, dgram: (copied.append(1), slow(pkt, dgram))
    _send_batch(fe, [_dgram(40000, port, b"first")])           # creates the flow
    assert sink.recv(100) == b"first"
    rng = random.Random(5)
    payloads = [os.urandom(rng.choice([1, 17, 1472, 9000, 32768, 60000])) for _ in range(200)]
    for k in range(0, len(payloads), 40):
        _send_batch(fe, [_dgram(40000, port, p) for p in payloads[k:k + 40]], split_big=True)
    got = _recv_datagrams(sink, len(payloads))
    assert [hashlib.sha256(g).hexdigest() for g in got] == \
        [hashlib.sha256(p).hexdigest() for p in payloads]
    assert len(copied) == 1, "datagrams of a known flow were copied out of guest memory"
    assert service.udp.dropped == 0


def test_two_flows_interleaved_and_a_new_one_in_the_same_batch(backend) -> None:
    """Known flows A and B interleaved with the first datagrams of a new flow C in one batch:
    each flow's datagrams arrive in their order (C's through the copying path)."""
    service, fe = backend
    sinks = [_sink() for _ in range(3)]
    ports = [s.getsockname()[1] for s in sinks]
    _send_batch(fe, [_dgram(40001, ports[0], b"a"), _dgram(40002, ports[1], b"b")])
    assert sinks[0].recv(10) == b"a" and sinks[1].recv(10) == b"b"
    frames, want = [], {0: [], 1: [], 2: []}
    for n in range(30):
        k = n % 3
        payload = struct.pack("!HH", k, n) + os.urandom(100 * n)
        want[k].append(payload)
        frames.append(_dgram(40001 + k, ports[k], payload))
    _send_batch(fe, frames)
    for k in range(3):
        assert _recv_datagrams(sinks[k], len(want[k])) == want[k], f"flow {k}"


def test_bad_length_field_is_dropped_and_the_flow_goes_on(backend) -> None:
    """A UDP length field larger than the packet (or below 8) drops that datagram only; one
    shorter than the packet carries just what it says (IP padding is not data)."""
    service, fe = backend
    sink = _sink()
    port = sink.getsockname()[1]
    _send_batch(fe, [_dgram(40003, port, b"open")])
    assert sink.recv(100) == b"open"

    def with_udp_len(frame: bytes, length: int) -> bytes:
        b = bytearray(frame)
        struct.pack_into("!H", b, 14 + 20 + 4, length)
        return bytes(b)

    good = _dgram(40003, port, b"x" * 50)
    _send_batch(fe, [with_udp_len(good, 8 + 51), with_udp_len(good, 7),
                     with_udp_len(good, 8 + 20), _dgram(40003, port, b"last")])
    assert _recv_datagrams(sink, 2) == [b"x" * 20, b"last"]


def test_stale_refusal_is_retried_not_lost(backend) -> None:
    """A datagram to a closed port earns the socket an ICMP error; once a listener is back on
    that port, the next datagram of the flow is delivered (the stale error is not its fate)."""
    service, fe = backend
    probe = _sink()
    port = probe.getsockname()[1]
    probe.close()                                     # nobody listens: port unreachable
    _send_batch(fe, [_dgram(40004, port, b"lost")])
    _send_batch(fe, [_dgram(40004, port, b"lost too")])
    time.sleep(0.1)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))
    sink.settimeout(5)
    _send_batch(fe, [_dgram(40004, port, b"delivered")])
    assert sink.recv(100) == b"delivered"


# ---- host -> guest: datagrams straight into the guest's RX buffers (passt_py.udp.ring) ----

def _guest_datagrams(fe: Frontend, count: int, timeout: float = 5.0) -> list[tuple]:
    """(source address, source port, destination port, payload) of UDP frames the guest got,
    each checked for a valid UDP checksum."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from tests.l4_helpers import checksums_ok
    out: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        # Other frames (the link's ARP probe, router advertisements) may come in between.
        for frame in fe.recv_frames(count - len(out), timeout=deadline - time.monotonic()):
            pkt = Ether(frame)
            if UDP not in pkt:
                continue
            assert checksums_ok(frame), "bad checksum on a frame to the guest"
            out.append((pkt[IP].src, pkt[UDP].sport, pkt[UDP].dport, bytes(pkt[UDP].payload)))
    return out




def test_replies_go_straight_into_rx_buffers_intact_and_in_order(backend) -> None:
    """A host peer answers a guest flow with 120 datagrams of 1..60000 bytes: the guest gets
    every one, in order, equal SHA-256, valid checksums, none built in Python."""
    service, fe = backend
    sink = _sink()
    port = sink.getsockname()[1]
    _send_batch(fe, [_dgram(40010, port, b"hello")])
    _, peer = sink.recvfrom(100)
    built = service.udp.frames_built             # frames made in Python so far
    rng = random.Random(7)
    payloads = [os.urandom(rng.choice([1, 17, 1472, 9000, 32768, 60000])) for _ in range(120)]
    got = []
    for k in range(0, len(payloads), 2):
        # Two at a time: both fit the flow socket's default receive buffer even at 60000
        # bytes each, so the kernel never drops one while the back-end is busy elsewhere.
        for p in payloads[k:k + 2]:
            sink.sendto(p, peer)
        got += _guest_datagrams(fe, len(payloads[k:k + 2]))
    assert [(src, sp, dp) for src, sp, dp, _ in got] == [(str(GW), port, 40010)] * len(payloads)
    assert [hashlib.sha256(g[3]).hexdigest() for g in got] == \
        [hashlib.sha256(p).hexdigest() for p in payloads]
    assert service.udp.frames_built == built and service.udp.dropped == 0


def test_a_full_rx_ring_holds_datagrams_back_instead_of_dropping(tmp_path) -> None:
    """The guest offers 4 buffers: 40 datagrams of 3000 bytes wait in the socket while the
    ring is full and all arrive as the guest hands buffers back."""
    with service_with_frontend(tmp_path, 4) as (service, fe):
        sink = _sink()
        port = sink.getsockname()[1]
        _send_batch(fe, [_dgram(40011, port, b"hello")])
        _, peer = sink.recvfrom(100)
        payloads = [struct.pack("!I", n) + os.urandom(2996) for n in range(40)]
        for p in payloads:
            sink.sendto(p, peer)
        got = _guest_datagrams(fe, len(payloads), timeout=10)
        assert [g[3] for g in got] == payloads
        assert service.udp.dropped == 0


def test_many_peers_of_a_forwarded_port_each_get_their_flow(tmp_path) -> None:
    """-u: 12 host peers (more than the ring path's recent-peer templates) send 3 rounds to
    a forwarded port: every datagram reaches the guest from its own peer's port, in order."""
    from tests.l4_helpers import free_port
    fport = free_port(4)
    with service_with_frontend(tmp_path, 64, mem_size=64 << 20,
                               extra=["-u", str(fport)]) as (service, fe):
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(12)]
        for s in peers:
            s.bind(("127.0.0.1", 0))
        want = []
        for rnd in range(3):
            for k, s in enumerate(peers):
                payload = struct.pack("!BB", k, rnd) + os.urandom(500 + 100 * k)
                s.sendto(payload, ("127.0.0.1", fport))
                want.append((str(GW), s.getsockname()[1], fport, payload))
            got = _guest_datagrams(fe, len(peers))
            assert sorted(got) == sorted(want[-len(peers):]), f"round {rnd}"
        for s in peers:
            s.close()


# ---- established flows in C, inside the loop's wait (core.FastPath) ----

def _round_trips(fe: Frontend, sink: socket.socket, sport: int, port: int, n: int,
                 mac: bytes = GUEST_MAC) -> list[tuple]:
    """n requests from the guest, each echoed by the host peer; the guest's view of replies."""
    got = []
    for k in range(n):
        payload = struct.pack("!I", k) + os.urandom(k % 1400)
        _send_batch(fe, [udp_frame(OUR_MAC, mac, GUEST, GW, sport, port, payload)])
        data, peer = sink.recvfrom(70000)
        assert data == payload, f"request {k}"
        sink.sendto(data[::-1], peer)
        reply = _guest_datagrams(fe, 1)
        assert [r[3] for r in reply] == [payload[::-1]], f"reply {k}"
        got += reply
    return got


def test_an_established_flow_is_served_inside_the_wait(backend) -> None:
    """Request/response on one flow: past the first exchange (which creates the flow and
    registers it), every datagram both ways is handled by C, intact; and the flow's expiry
    sees that traffic (it did not pass through touch())."""
    service, fe = backend
    assert service.fast is not None
    sink = _sink()
    port = sink.getsockname()[1]
    _round_trips(fe, sink, 40020, port, 2)
    before = service.fast.stats()
    tx0, rx0 = int(before.tx_dgrams), int(before.rx_dgrams)
    got = _round_trips(fe, sink, 40020, port, 100)
    assert {(src, sp, dp) for src, sp, dp, _ in got} == {(str(GW), port, 40020)}
    after = service.fast.stats()
    assert after.tx_dgrams - tx0 == 100 and after.rx_dgrams - rx0 == 100
    assert after.rx_entries == 1 and after.tx_entries == 1
    flow = next(iter(service.flows))
    assert service.udp.fast_activity(flow) is True     # what C moved, taken once
    assert service.udp.fast_activity(flow) is False
    _round_trips(fe, sink, 40020, port, 1)
    assert service.udp.fast_activity(flow) is True
    assert service.udp.dropped == 0


def test_a_flow_busy_only_in_c_does_not_expire_and_an_idle_one_does(tmp_path) -> None:
    """With a 0.5 s flow timeout: a flow whose datagrams all go through C for 2 s lives on
    (same host socket throughout); once idle it expires, and its C entries go with it."""
    with service_with_frontend(tmp_path, 64) as (service, fe):
        service.udp.set_timeouts(0.5, 0.5)
        service.flows._sweep_interval = 0.1
        sink = _sink()
        port = sink.getsockname()[1]
        _send_batch(fe, [_dgram(40021, port, b"open")])
        _, peer = sink.recvfrom(100)
        deadline = time.monotonic() + 2.0
        k = 0
        while time.monotonic() < deadline:
            _send_batch(fe, [_dgram(40021, port, b"%d" % k)])
            data, src = sink.recvfrom(100)
            assert data == b"%d" % k and src == peer, "the flow was replaced"
            k += 1
            time.sleep(0.05)
        # All but the first few (the flow's first, a kick met by Python's own pass) in C: too
        # few in Python to keep the flow alive by touch() alone.
        assert service.fast.stats().tx_dgrams >= k - 5
        assert len(service.flows) == 1
        end = time.monotonic() + 5
        while len(service.flows) and time.monotonic() < end:
            time.sleep(0.05)
        assert len(service.flows) == 0, "an idle flow never expired"
        st = service.fast.stats()
        assert st.rx_entries == 0 and st.tx_entries == 0


def test_a_new_guest_mac_reaches_frames_built_in_c(backend) -> None:
    """The guest changes its MAC (and says so with an ARP request): replies of an established
    flow, built by C from a template, go to the new address."""
    from scapy.layers.l2 import ARP, Ether
    service, fe = backend
    sink = _sink()
    port = sink.getsockname()[1]
    _round_trips(fe, sink, 40022, port, 3)
    new_mac = bytes.fromhex("525400123456")
    arp = bytes(Ether(src=new_mac.hex(":"), dst="ff:ff:ff:ff:ff:ff") /
                ARP(op=1, hwsrc=new_mac.hex(":"), psrc=str(GUEST), pdst=str(GW)))
    _send_batch(fe, [arp])
    fe.recv_frames(1, timeout=5)                       # the ARP reply
    _send_batch(fe, [udp_frame(OUR_MAC, new_mac, GUEST, GW, 40022, port, b"req")])
    data, peer = sink.recvfrom(100)
    sink.sendto(b"reply", peer)
    frames = []
    deadline = time.monotonic() + 5
    while not frames and time.monotonic() < deadline:
        frames = [f for f in fe.recv_frames(1, timeout=1) if f[12:14] == b"\x08\x00"]
    assert frames and frames[0][:6] == new_mac and frames[0].endswith(b"reply")
