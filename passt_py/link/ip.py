# SPDX-License-Identifier: MIT
"""IPv4/IPv6 and UDP headers: parsing guest packets and building packets for the guest.

Parsing validates every length against the bytes actually present, so a handler never reads
past a truncated or lying header; anything malformed parses to None. Building computes every
checksum (through the C core) so frames the back-end emits, and the pcap of them, verify.
Fragments are not reassembled: the guest's stack does not fragment towards a link with an
MTU it was told, and passt drops them too.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from passt_py import core
from passt_py.link.ethernet import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, build_header

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
_IPV6_EXT_HEADERS = {0, 43, 60}   # hop-by-hop, routing, destination options (skipped)
_IPV6_FRAGMENT = 44

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
UDP_HLEN = 8
IPV4_HLEN = 20
IPV6_HLEN = 40

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class IpPacket(NamedTuple):
    """A parsed IP packet: addresses, L4 protocol and the L4 bytes (exactly, no padding)."""

    version: int
    src: IPAddr
    dst: IPAddr
    proto: int
    ttl: int
    l4: memoryview


class UdpDatagram(NamedTuple):
    """A parsed UDP datagram."""

    sport: int
    dport: int
    payload: memoryview


def parse_ip(frame: bytes | memoryview, ethertype: int) -> IpPacket | None:
    """The IP packet after the Ethernet header, or None if malformed or a fragment."""
    view = memoryview(frame)[ETH_HLEN:]
    if ethertype == ETH_P_IP:
        return _parse_ipv4(view)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(view)
    return None


def _parse_ipv4(view: memoryview) -> IpPacket | None:
    if len(view) < IPV4_HLEN:
        return None
    vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(view)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < IPV4_HLEN or total < ihl or total > len(view):
        return None
    if frag & 0x3FFF:          # MF set or non-zero offset
        return None
    return IpPacket(4, ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), proto, ttl,
                    view[ihl:total])


def _parse_ipv6(view: memoryview) -> IpPacket | None:
    if len(view) < IPV6_HLEN:
        return None
    vtcfl, plen, nh, hlim, src, dst = _IPV6.unpack_from(view)
    if vtcfl >> 28 != 6 or IPV6_HLEN + plen > len(view):
        return None
    off, end = IPV6_HLEN, IPV6_HLEN + plen
    for _ in range(8):          # bounded walk over extension headers
        if nh not in _IPV6_EXT_HEADERS:
            break
        if off + 2 > end:
            return None
        nh, hlen = view[off], (view[off + 1] + 1) * 8
        off += hlen
        if off > end:
            return None
    if nh == _IPV6_FRAGMENT or nh in _IPV6_EXT_HEADERS:
        return None
    return IpPacket(6, ipaddress.IPv6Address(bytes(src)), ipaddress.IPv6Address(bytes(dst)),
                    nh, hlim, view[off:end])


def parse_udp(l4: memoryview) -> UdpDatagram | None:
    """The UDP datagram in ``l4``, or None if its length field disagrees with the packet."""
    if len(l4) < UDP_HLEN:
        return None
    sport, dport, length, _csum = _UDP.unpack_from(l4)
    if length < UDP_HLEN or length > len(l4):
        return None
    return UdpDatagram(sport, dport, l4[UDP_HLEN:length])


def ipv4_header(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, proto: int,
                payload_len: int, ttl: int = 255, ident: int = 0) -> bytes:
    """A 20-byte IPv4 header (DF set) with its checksum."""
    hdr = bytearray(_IPV4.pack(0x45, 0, IPV4_HLEN + payload_len, ident, 0x4000, ttl, proto, 0,
                               src.packed, dst.packed))
    struct.pack_into("!H", hdr, 10, core.csum_ipv4_header(hdr))
    return bytes(hdr)


def ipv6_header(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, nh: int,
                payload_len: int, hop_limit: int = 255) -> bytes:
    """A 40-byte IPv6 header."""
    return _IPV6.pack(6 << 28, payload_len, nh, hop_limit, src.packed, dst.packed)


def l4_checksum(src: IPAddr, dst: IPAddr, proto: int,
                l4: bytes | bytearray | memoryview) -> int:
    """The TCP/UDP/ICMPv6 checksum of ``l4`` (checksum field zero) with the pseudo-header."""
    if src.version == 4:
        return core.csum_l4_ipv4(src.packed, dst.packed, proto, l4)
    return core.csum_l4_ipv6(src.packed, dst.packed, proto, l4)


def udp_segment(src: IPAddr, dst: IPAddr, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header plus payload with a valid checksum (0 sent as 0xffff, RFC 768)."""
    seg = bytearray(UDP_HLEN + len(payload))
    seg[UDP_HLEN:] = payload
    _udp_header_into(seg, 0, len(seg), src, dst, sport, dport)
    return bytes(seg)


def _udp_header_into(buf: bytearray, l4: int, end: int, src: IPAddr, dst: IPAddr, sport: int,
                     dport: int) -> None:
    """Write the UDP header of the datagram at buf[l4:end], checksum included."""
    _UDP.pack_into(buf, l4, sport, dport, end - l4, 0)
    csum = l4_checksum(src, dst, IPPROTO_UDP, memoryview(buf)[l4:end]) or 0xFFFF
    struct.pack_into("!H", buf, l4 + 6, csum)


def ip_frame(dst_mac: bytes, src_mac: bytes, src: IPAddr, dst: IPAddr, proto: int,
             l4: bytes, ttl: int = 255) -> bytes:
    """An Ethernet frame carrying ``l4`` in an IPv4 or IPv6 packet from ``src`` to ``dst``."""
    if src.version == 4:
        return (build_header(dst_mac, src_mac, ETH_P_IP)
                + ipv4_header(src, dst, proto, len(l4), ttl) + l4)   # type: ignore[arg-type]
    return (build_header(dst_mac, src_mac, ETH_P_IPV6)
            + ipv6_header(src, dst, proto, len(l4), ttl) + l4)       # type: ignore[arg-type]


#: Room before a UDP payload for the largest headers udp_frame_into() writes (IPv6).
UDP_FRAME_ROOM = ETH_HLEN + IPV6_HLEN + UDP_HLEN


def udp_frame(dst_mac: bytes, src_mac: bytes, src: IPAddr, dst: IPAddr, sport: int,
              dport: int, payload: bytes | bytearray | memoryview,
              ttl: int = 255) -> bytes:
    """An Ethernet frame carrying one UDP datagram with valid checksums."""
    buf = bytearray(UDP_FRAME_ROOM + len(payload))
    buf[UDP_FRAME_ROOM:] = payload
    return bytes(udp_frame_into(buf, len(payload), dst_mac, src_mac, src, dst, sport, dport,
                                ttl))


def udp_frame_into(buf: bytearray, n: int, dst_mac: bytes, src_mac: bytes, src: IPAddr,
                   dst: IPAddr, sport: int, dport: int, ttl: int = 255) -> memoryview:
    """Complete a UDP frame around the ``n`` payload bytes at ``buf[UDP_FRAME_ROOM:]``.

    Headers are written just before the payload, so a datagram received straight into
    ``buf`` becomes a frame without being copied (they reach 64 KiB, and copies of them
    showed in profiles). Returns the view of ``buf`` that is the frame.
    """
    if src.version == 4:
        ip_hdr = ipv4_header(src, dst, IPPROTO_UDP, UDP_HLEN + n, ttl)  # type: ignore[arg-type]
        eth_hdr = build_header(dst_mac, src_mac, ETH_P_IP)
    else:
        ip_hdr = ipv6_header(src, dst, IPPROTO_UDP, UDP_HLEN + n, ttl)  # type: ignore[arg-type]
        eth_hdr = build_header(dst_mac, src_mac, ETH_P_IPV6)
    l4 = UDP_FRAME_ROOM - UDP_HLEN
    start = l4 - len(ip_hdr) - ETH_HLEN
    end = UDP_FRAME_ROOM + n
    buf[start:l4] = eth_hdr + ip_hdr
    _udp_header_into(buf, l4, end, src, dst, sport, dport)
    return memoryview(buf)[start:end]
