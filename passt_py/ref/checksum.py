# SPDX-License-Identifier: MIT
"""Pure-Python Internet checksum (RFC 1071): the oracle the C core is tested against.

Written for obviousness, not speed: one big-endian 16-bit word at a time. Same conventions as
the C core (csrc/checksum.c): a partial sum is the folded one's complement sum of big-endian
16-bit words (0..0xffff, 0 only for all-zero data); a checksum is the int whose big-endian
encoding goes into the packet; L4 and IPv4-header functions ignore the current checksum field.
"""
from __future__ import annotations

from collections.abc import Sequence

BytesLike = bytes | bytearray | memoryview

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

_FIELD = {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_ICMP: 2, PROTO_ICMPV6: 2}


def _fold(total: int) -> int:
    """Fold with end-around carries down to 16 bits."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def csum_partial(data: BytesLike, init: int = 0) -> int:
    """Sum data as big-endian words (odd tail padded with a zero low byte), plus init."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    total = init
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    return _fold(total)


def csum_iov(buffers: Sequence[BytesLike], init: int = 0) -> int:
    """Sum of the buffers laid end to end."""
    return csum_partial(b"".join(bytes(b) for b in buffers), init)


def csum_fold(total: int) -> int:
    """Fold a partial sum and complement it: the checksum field value."""
    return ~_fold(total) & 0xFFFF


def csum_ipv4_header(hdr: BytesLike) -> int:
    """Header checksum of an IPv4 header of len(hdr) bytes, field taken as zero."""
    hdr = bytes(hdr)
    if len(hdr) < 20 or len(hdr) > 60 or len(hdr) % 4:
        raise ValueError(f"bad IPv4 header length {len(hdr)}")
    return csum_fold(csum_partial(hdr[:10] + b"\x00\x00" + hdr[12:]))


def pseudo_ipv4(src: BytesLike, dst: BytesLike, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo-header."""
    return csum_partial(bytes(src) + bytes(dst) + bytes([0, proto]) + length.to_bytes(2, "big"))


def pseudo_ipv6(src: BytesLike, dst: BytesLike, proto: int, length: int) -> int:
    """Partial sum of the IPv6 pseudo-header."""
    return csum_partial(bytes(src) + bytes(dst) + length.to_bytes(4, "big")
                        + bytes([0, 0, 0, proto]))


def _l4(proto: int, seg: BytesLike, init: int, allowed: tuple[int, ...]) -> int:
    """Checksum of a segment with its checksum field zeroed, UDP's 0 sent as 0xffff."""
    if proto not in allowed:
        raise ValueError(f"protocol {proto} not checksummed this way")
    field = _FIELD[proto]
    seg = bytes(seg)
    if len(seg) < field + 2:
        raise ValueError(f"segment of {len(seg)} bytes has no checksum field")
    c = csum_fold(csum_partial(seg[:field] + b"\x00\x00" + seg[field + 2:], init))
    return 0xFFFF if proto == PROTO_UDP and c == 0 else c


def csum_l4_ipv4(src: BytesLike, dst: BytesLike, proto: int, seg: BytesLike) -> int:
    """TCP/UDP checksum over IPv4."""
    if len(seg) > 0xFFFF:
        raise ValueError("segment too long for IPv4")
    return _l4(proto, seg, pseudo_ipv4(src, dst, proto, len(seg)), (PROTO_TCP, PROTO_UDP))


def csum_l4_ipv6(src: BytesLike, dst: BytesLike, proto: int, seg: BytesLike) -> int:
    """TCP/UDP/ICMPv6 checksum over IPv6."""
    if len(seg) > 0xFFFFFFFF:
        raise ValueError("segment too long for IPv6")
    return _l4(proto, seg, pseudo_ipv6(src, dst, proto, len(seg)),
               (PROTO_TCP, PROTO_UDP, PROTO_ICMPV6))


def csum_icmp4(msg: BytesLike) -> int:
    """ICMP (IPv4) checksum: no pseudo-header."""
    if len(msg) < 4:
        raise ValueError("ICMP message shorter than its header")
    return _l4(PROTO_ICMP, msg, 0, (PROTO_ICMP,))
