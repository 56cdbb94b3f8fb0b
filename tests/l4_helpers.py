# SPDX-License-Identifier: MIT
"""Shared pieces for the L4 tests: a NetView, a frame sink, a bounded loop pump, guest UDP and
ICMP echo frames (parsed as the demux hands them over), checksum checks, free ports, and
reading exactly n bytes from a host socket."""
from __future__ import annotations

import ipaddress
import socket
import struct
import time
from typing import Callable

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6, _ICMPv6
from scapy.layers.l2 import Ether

from passt_py import core
from passt_py.link.ethernet import parse_header
from passt_py.link.ip import (IPPROTO_ICMP, IPPROTO_ICMPV6, IpPacket, UdpDatagram, ip_frame,
                              l4_checksum, parse_ip, parse_udp, udp_frame)
from passt_py.link.netview import GuestState, Ip4View, Ip6View, NetView
from passt_py.loop import EventLoop

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("525400123456")
GUEST4 = ipaddress.IPv4Address("10.0.2.15")
GW4 = ipaddress.IPv4Address("10.0.2.2")
GUEST6 = ipaddress.IPv6Address("fd00:abcd::15")
GW6 = ipaddress.IPv6Address("fe80::1")
LO4 = ipaddress.IPv4Address("127.0.0.1")
LO6 = ipaddress.IPv6Address("::1")


def make_view(map_gw: bool = True, icmp: bool = True, udp: bool = True, **ip4_extra: object) -> NetView:
    """The guest's view used by the tests: the gateway maps to the host's loopback."""
    ip4 = Ip4View(addr=GUEST4, prefix_len=24, gateway=GW4,
                  map_host_loopback=GW4 if map_gw else None, **ip4_extra)  # type: ignore[arg-type]
    ip6 = Ip6View(addr=GUEST6, prefix_len=64, gateway=GW6, our_ll=GW6,
                  map_host_loopback=GW6 if map_gw else None)
    return NetView(our_mac=OUR_MAC, mtu=65520, ip4=ip4, ip6=ip6, icmp=icmp, udp=udp)


def make_guest() -> GuestState:
    """A guest whose MAC is already known."""
    return GuestState(mac=GUEST_MAC, addr4=GUEST4, addr6=GUEST6)


class Sink:
    """A to_guest callback that keeps every frame."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def __call__(self, frames: list[bytes]) -> None:
        # Frames are bytes-like (big UDP frames are views of their receive buffer).
        self.frames.extend(bytes(f) for f in frames)


def pump(loop: EventLoop, cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Run the loop until ``cond()`` holds or ``timeout`` passes; returns cond()."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        loop.run_once(0.02)
    return cond()


def guest_udp(src: ipaddress._BaseAddress, dst: ipaddress._BaseAddress, sport: int, dport: int,
              payload: bytes) -> tuple[IpPacket, UdpDatagram]:
    """A UDP datagram as the demux hands it over, parsed from a real guest frame."""
    frame = udp_frame(OUR_MAC, GUEST_MAC, src, dst, sport, dport, payload,  # type: ignore[arg-type]
                      ttl=64)
    eth = parse_header(frame)
    assert eth is not None
    pkt = parse_ip(frame, eth.ethertype)
    assert pkt is not None
    dgram = parse_udp(pkt.l4)
    assert dgram is not None
    return pkt, dgram


def echo_frame(version: int, ident: int, seq: int, payload: bytes, dst=None) -> bytes:
    """A guest echo request frame to ``dst`` (default: the gateway) with valid checksums."""
    src = GUEST4 if version == 4 else GUEST6
    dst = dst or (GW4 if version == 4 else GW6)
    kind = 8 if version == 4 else 128
    msg = bytearray(struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload)
    if version == 4:
        struct.pack_into("!H", msg, 2, core.csum_icmp4(msg))
        proto = IPPROTO_ICMP
    else:
        struct.pack_into("!H", msg, 2, l4_checksum(src, dst, IPPROTO_ICMPV6, msg))
        proto = IPPROTO_ICMPV6
    return ip_frame(OUR_MAC, GUEST_MAC, src, dst, proto, bytes(msg), ttl=64)


def parsed(frame: bytes) -> IpPacket:
    """A guest frame's IP packet, as the demux hands it over."""
    eth = parse_header(frame)
    assert eth is not None
    pkt = parse_ip(frame, eth.ethertype)
    assert pkt is not None
    return pkt


def _summed_layers(pkt: Ether) -> list[tuple[object, str]]:
    """(layer, checksum field) for every outer IP/UDP/ICMP/ICMPv6 layer (quotes excluded)."""
    out = []
    layer = pkt
    while layer is not None and layer.name != "NoPayload":
        if type(layer) in (IP, UDP, ICMP):
            out.append((layer, "chksum"))
        elif isinstance(layer, _ICMPv6):
            out.append((layer, "cksum"))
        if type(layer) not in (Ether, IP, IPv6):
            break        # anything after the L4 header is payload or a quote
        layer = layer.payload
    return out


def checksums_ok(frame: bytes) -> bool:
    """Whether scapy, recomputing every checksum of ``frame``, gets the values it carries."""
    fresh = Ether(frame)
    for layer, name in _summed_layers(fresh):
        delattr(layer, name)
    rebuilt = Ether(bytes(fresh))
    ours = [getattr(layer, name) for layer, name in _summed_layers(Ether(frame))]
    theirs = [getattr(layer, name) for layer, name in _summed_layers(rebuilt)]
    return bool(ours) and ours == theirs


def free_port(version: int = 4) -> int:
    """A UDP port that is free right now on the wildcard address."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0) if version == 4 else ("::", 0))
        return s.getsockname()[1]


def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """Exactly ``n`` bytes from a stream socket (blocking, ``timeout`` per receive: a peer that
    stalls fails the test instead of hanging it); an early end of stream is a failure."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"peer closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)
