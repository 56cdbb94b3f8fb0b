# SPDX-License-Identifier: MIT
"""Hostile guest frames through tap.GuestLink with every handler attached.

Truncated frames, lying length fields, bad header fields and options running off the end, for
ARP, IPv4/IPv6, UDP, DHCP, DHCPv6, NDP and ICMP: nothing may raise or log an internal error,
the flow table keeps its limit, and after every case a normal ARP exchange and (every few
cases) a UDP round trip through the host's loopback still work. Runs in a private network
namespace (tests/fuzz/netns_guard.py) so no frame can make the back-end reach anything else.
"""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from tests.conftest import hypothesis_budget, qemu_unavailable
from tests.fuzz import driver, netns_guard, targets

ECHO_PORT = 9
SEEDS = driver.load_corpus("frames")


@pytest.fixture(scope="module")
def rig():
    """A FrameRig and a UDP echo socket on 127.0.0.1:9, inside a private namespace."""
    if not netns_guard.available():
        qemu_unavailable("needs a private network namespace (root or a user namespace)")
    with netns_guard.private_netns():
        r = targets.FrameRig(max_flows=32)
        r.serve_tcp_echo(ECHO_PORT)
        r.echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.echo.bind(("127.0.0.1", ECHO_PORT))
        r.echo.setblocking(False)
        trap = targets.error_trap()
        trap.records.clear()
        r.trap = trap
        try:
            yield r
        finally:
            r.echo.close()
            r.close()


def udp_round_trip(rig) -> bool:
    """The guest's datagram to the gateway reaches 127.0.0.1:9 and the echo comes back."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    frame = bytes(Ether(src=targets.GUEST_MAC, dst=targets.OUR_MAC) /
                  IP(src=str(targets.GUEST4), dst=str(targets.GW4)) /
                  UDP(sport=45678, dport=ECHO_PORT) / b"still alive")
    rig.feed([frame])
    while True:       # earlier cases may have left datagrams here: echo only ours
        try:
            data, peer = rig.echo.recvfrom(70000)
        except BlockingIOError:
            return False
        if data == b"still alive":
            break
    rig.echo.sendto(data, peer)
    for _ in range(20):
        rig.loop.run_once(0.01)
        for out in rig.out:
            if out.endswith(b"still alive") and out[12:14] == b"\x08\x00":
                return True
    return False


def survive(rig, frames: list[bytes], check_udp: bool = False) -> None:
    """Feed hostile frames; then the link must still be healthy."""
    rig.feed(frames)
    rig.trap.check()
    assert len(rig.flows) <= rig.flows.max_flows
    assert rig.arp_still_works(), "ARP not answered after hostile input"
    if check_udp:
        assert udp_round_trip(rig), "UDP via the host's loopback broken after hostile input"
    rig.trap.check()


def test_seeds_are_served(rig):
    """The unmodified seed frames are handled, and many get answers."""
    answered = sum(1 for s in SEEDS if rig.feed([s], 3))
    assert answered >= len(SEEDS) // 3
    survive(rig, [], check_udp=True)


# ---- hand-made hostile cases, one per classic mistake ----
def _eth(ethertype: int) -> bytes:
    return targets.OUR_MAC + targets.GUEST_MAC + struct.pack("!H", ethertype)


def _ipv4(proto: int, payload: bytes, total: int | None = None, ihl: int = 5,
          dst: bytes = b"\x0a\x00\x02\x02", src: bytes = b"\x0a\x00\x02\x0f") -> bytes:
    length = total if total is not None else 4 * ihl + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 1, 0, 64, proto, 0, src, dst)
    return hdr + bytes(4 * ihl - 20) + payload


def _ipv6(nh: int, payload: bytes, plen: int | None = None,
          src: bytes = bytes.fromhex("fe800000000000005054ff00fe123456"),
          dst: bytes = bytes.fromhex("ff020000000000000000000000010002")) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload) if plen is None else plen, nh, 255,
                       src, dst) + payload


def _udp(sport: int, dport: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length,
                       0) + payload


DHCP_FIXED = (b"\x01\x01\x06\x00" + b"\x12\x34\x56\x78" + bytes(20) + targets.GUEST_MAC +
              bytes(10 + 192) + b"\x63\x82\x53\x63")

CASES = {
    "empty": b"",
    "runt": b"\x01\x02\x03",
    "ethernet only": _eth(0x0800),
    "arp truncated": _eth(0x0806) + b"\x00\x01\x08\x00\x06\x04\x00\x01",
    "arp bad sizes": _eth(0x0806) + b"\x00\x01\x08\x00\xff\xff\x00\x01" + bytes(20),
    "ipv4 ihl below 5": _eth(0x0800) + b"\x41" + bytes(30),
    "ipv4 ihl past end": _eth(0x0800) + _ipv4(17, b"", ihl=15)[:30],
    "ipv4 total length lies": _eth(0x0800) + _ipv4(17, _udp(1, ECHO_PORT, b"x"), total=9000),
    "ipv4 total length below header": _eth(0x0800) + _ipv4(17, _udp(1, 9, b"x"), total=10),
    "ipv4 version 6 in v4 frame": _eth(0x0800) + b"\x65" + bytes(40),
    "udp length past end": _eth(0x0800) + _ipv4(17, _udp(40000, 9, b"abc", length=60000)),
    "udp length below header": _eth(0x0800) + _ipv4(17, _udp(40000, 9, b"abc", length=3)),
    "udp truncated header": _eth(0x0800) + _ipv4(17, b"\x00\x01\x00"),
    "udp port zero": _eth(0x0800) + _ipv4(17, _udp(0, 0, b"zero")),
    "dhcp fixed part only": _eth(0x0800) + _ipv4(17, _udp(68, 67, DHCP_FIXED[:100]),
                                                 dst=b"\xff" * 4, src=bytes(4)),
    "dhcp option runs off the end": _eth(0x0800) + _ipv4(
        17, _udp(68, 67, DHCP_FIXED + b"\x35\x01\x01" + b"\x37\xff\x01\x03"),
        dst=b"\xff" * 4, src=bytes(4)),
    "dhcp overload into missing fields": _eth(0x0800) + _ipv4(
        17, _udp(68, 67, DHCP_FIXED + b"\x35\x01\x01\x34\x01\x03\xff"),
        dst=b"\xff" * 4, src=bytes(4)),
    "dhcp no end option": _eth(0x0800) + _ipv4(
        17, _udp(68, 67, DHCP_FIXED + b"\x35\x01\x03" + b"\x00" * 50),
        dst=b"\xff" * 4, src=bytes(4)),
    "dhcp zero-length message type": _eth(0x0800) + _ipv4(
        17, _udp(68, 67, DHCP_FIXED + b"\x35\x00\xff"), dst=b"\xff" * 4, src=bytes(4)),
    "dhcpv6 option runs off the end": _eth(0x86DD) + _ipv6(
        17, _udp(546, 547, b"\x01\x00\x00\x01" + b"\x00\x01\xff\xff\x00\x01")),
    "dhcpv6 ia_na shorter than its fields": _eth(0x86DD) + _ipv6(
        17, _udp(546, 547, b"\x01\x00\x00\x01" + b"\x00\x03\x00\x02\x00\x01")),
    "dhcpv6 truncated header": _eth(0x86DD) + _ipv6(17, _udp(546, 547, b"\x01")),
    "ipv6 payload length lies": _eth(0x86DD) + _ipv6(17, _udp(1, 9, b"x"), plen=60000),
    "ipv6 truncated header": _eth(0x86DD) + b"\x60" + bytes(20),
    "ipv6 extension header loop": _eth(0x86DD) + _ipv6(0, b"\x00\x00" + bytes(6) * 40),
    "ipv6 extension header past end": _eth(0x86DD) + _ipv6(0, b"\x11\xff" + bytes(6)),
    "ndp rs option length zero": _eth(0x86DD) + _ipv6(
        58, b"\x85\x00\x00\x00" + bytes(4) + b"\x01\x00" + bytes(6)),
    "ndp ns option past end": _eth(0x86DD) + _ipv6(
        58, b"\x87\x00\x00\x00" + bytes(4) + bytes.fromhex("fe800000000000000000000000000001") +
        b"\x01\xff" + bytes(6)),
    "ndp ns truncated": _eth(0x86DD) + _ipv6(58, b"\x87\x00\x00\x00\x00"),
    "ndp with hop limit 1": _eth(0x86DD) + _ipv6(58, b"\x85\x00\x00\x00" + bytes(4))[:7] +
    b"\x01" + _ipv6(58, b"\x85\x00\x00\x00" + bytes(4))[8:],
    "icmp echo truncated": _eth(0x0800) + _ipv4(1, b"\x08\x00\x00"),
    "icmp echo header only": _eth(0x0800) + _ipv4(1, b"\x08\x00\x00\x00\x00\x01\x00\x01"),
    "icmpv6 echo truncated": _eth(0x86DD) + _ipv6(
        58, b"\x80\x00\x00", dst=bytes.fromhex("fe800000000000000000000000000001")),
    "jumbo": _eth(0x0800) + _ipv4(17, _udp(40010, 9, bytes(65000))),
    "unknown ethertype": _eth(0x88B5) + bytes(50),
    "vlan tagged": _eth(0x8100) + b"\x00\x01\x08\x00" + _ipv4(17, _udp(1, 9, b"v")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_frame_is_contained(rig, name):
    """The frame is dropped or answered; nothing raises and the link keeps working."""
    survive(rig, [CASES[name]], check_udp=True)


def test_a_batch_mixing_hostile_and_good_frames_serves_the_good_ones(rig):
    """Hostile frames in a batch do not cost the good frames beside them."""
    from scapy.layers.l2 import ARP, Ether
    good = bytes(Ether(src=targets.GUEST_MAC, dst=b"\xff" * 6) /
                 ARP(op=1, hwsrc=targets.GUEST_MAC, psrc=str(targets.GUEST4),
                     pdst=str(targets.GW4)))
    batch = [CASES[n] for n in sorted(CASES)[:10]] + [good] + [CASES[n] for n in sorted(CASES)[10:]]
    out = rig.feed(batch, 3)
    assert any(f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" for f in out)
    rig.trap.check()


def test_flow_table_limit_holds_under_a_flood_of_new_tuples(rig):
    """Hundreds of new UDP tuples never grow the table past max_flows; later flows still work
    once old ones are gone."""
    frames = [_eth(0x0800) + _ipv4(17, _udp(20000 + i, ECHO_PORT, b"flood")) for i in range(200)]
    rig.feed(frames)
    assert len(rig.flows) <= rig.flows.max_flows
    assert rig.flows.refused_total > 0
    rig.udp.close_all()
    rig.icmp.close_all()
    if rig.tcp is not None:
        rig.tcp.close_all()
    assert len(rig.flows) == 0
    survive(rig, [], check_udp=True)


# ---- property: mutated seeds ----
@st.composite
def mutated_frames(draw) -> bytes:
    """A seed frame with a few targeted corruptions (length fields, bytes, truncation)."""
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 5))
        n = len(frame)
        if kind == 0 and n:
            del frame[draw(st.integers(0, n - 1)):]
        elif kind == 1 and n:
            frame[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif kind == 2 and n >= 2:
            # a 16-bit field at a header offset where lengths live, or anywhere
            off = draw(st.one_of(st.sampled_from([14, 16, 18, 20, 38, 42, 44, 54, 56, 58, 62]),
                                 st.integers(0, n - 2)))
            if off <= n - 2:
                frame[off:off + 2] = draw(st.sampled_from(
                    [0, 1, 7, 8, 0xFF, 0x100, 0x7FFF, 0xFFFF, n, n + 1])).to_bytes(2, "big")
        elif kind == 3:
            frame += draw(st.binary(max_size=64))
        elif kind == 4 and n > 14:
            frame[14] = draw(st.integers(0, 255))          # version/IHL
        elif kind == 5 and n:
            frame[-1:] = bytes([draw(st.integers(0, 255))])
    return bytes(frame)


@hypothesis_budget(3,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(mutated_frames(), min_size=1, max_size=4), udp=st.integers(0, 9))
def test_mutated_frames_never_hurt_the_link(rig, frames, udp):
    """Seed frames of every protocol, corrupted: contained, and the link still serves."""
    survive(rig, frames, check_udp=udp == 0)
