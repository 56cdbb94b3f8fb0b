# SPDX-License-Identifier: MIT
"""TCP segments on the guest side: parsing what the guest sends, building what it receives.

Parsing (RFC 9293 section 3.1) validates the data offset against the bytes present and walks
the options with a bounded loop; anything malformed, and flag combinations no stack sends
(SYN with FIN or RST, no flags at all), parse to None so the caller simply drops the segment.
Only the options the translation uses are kept: MSS, window scale (RFC 7323) and whether the
peer offered SACK or timestamps (both declined: we never echo them in our SYN or SYN-ACK).

Building writes Ethernet, IP and TCP headers into one buffer with room for the payload, so the
copying data path can receive host data straight into the frame (no second copy) and then
finish the headers and checksums once the payload length is known.

Sequence numbers are 32-bit and wrap: compare them only through :func:`seq_diff`.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from passt_py import core
from passt_py.link.ethernet import ETH_HLEN, ETH_P_IP, ETH_P_IPV6
from passt_py.link.ip import IPPROTO_TCP, IPV4_HLEN, IPV6_HLEN

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

TCP_HLEN = 20
SEQ_MASK = 0xFFFFFFFF
OPT_EOL, OPT_NOP, OPT_MSS, OPT_WS, OPT_SACK_PERM, OPT_TS = 0, 1, 2, 3, 4, 8
WS_MAX = 14                     # RFC 7323 section 2.3
MSS_DEFAULT4 = 536              # RFC 9293 section 3.7.1, when the SYN carries no MSS
MSS_DEFAULT6 = 1220             # RFC 8200 minimum MTU 1280 - 60

_TCP = struct.Struct("!HHIIBBHHH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in sequence space (positive: a is after b)."""
    return ((a - b + 0x80000000) & SEQ_MASK) - 0x80000000


def seq_add(a: int, n: int) -> int:
    """a + n modulo 2**32."""
    return (a + n) & SEQ_MASK


class TcpSegment(NamedTuple):
    """A parsed guest segment; ``payload`` is a view of the frame, valid while it lives."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    wnd: int
    mss: int | None
    ws: int | None
    sack_ok: bool
    ts: bool
    payload: memoryview

    @property
    def seq_len(self) -> int:
        """Sequence space the segment occupies: payload plus one for SYN and for FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


def parse_tcp(l4: memoryview) -> TcpSegment | None:
    """The TCP segment in ``l4`` (exactly the IP payload), or None if malformed or absurd."""
    if len(l4) < TCP_HLEN:
        return None
    sport, dport, seq, ack, off, flags, wnd, _csum, _urg = _TCP.unpack_from(l4)
    hlen = (off >> 4) * 4
    if hlen < TCP_HLEN or hlen > len(l4) or sport == 0 or dport == 0:
        return None
    flags &= 0x3F
    if not flags & (SYN | ACK | RST):
        return None                              # null scan, bare FIN/PSH/URG
    if flags & SYN and flags & (FIN | RST):
        return None
    mss = ws = None
    sack_ok = ts = False
    pos = TCP_HLEN
    while pos < hlen:                            # at most 40 bytes of options: bounded
        kind = l4[pos]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            pos += 1
            continue
        if pos + 1 >= hlen:
            return None
        olen = l4[pos + 1]
        if olen < 2 or pos + olen > hlen:
            return None
        if kind == OPT_MSS and olen == 4:
            mss = (l4[pos + 2] << 8) | l4[pos + 3]
        elif kind == OPT_WS and olen == 3:
            ws = min(l4[pos + 2], WS_MAX)
        elif kind == OPT_SACK_PERM and olen == 2:
            sack_ok = True
        elif kind == OPT_TS and olen == 10:
            ts = True
        pos += olen
    return TcpSegment(sport, dport, seq, ack, flags, wnd, mss, ws, sack_ok, ts, l4[hlen:])


def syn_options(mss: int, ws: int | None) -> bytes:
    """Options for our SYN or SYN-ACK: MSS, and window scale when ``ws`` is not None."""
    opts = struct.pack("!BBH", OPT_MSS, 4, min(mss, 0xFFFF))
    if ws is not None:
        opts += struct.pack("!BBBB", OPT_NOP, OPT_WS, 3, ws)
    return opts


class FrameTemplate:
    """Addresses of one direction (us -> guest) of a connection, for building its frames."""

    __slots__ = ("src", "dst", "sport", "dport", "version", "l3len", "ext", "_eth_tail",
                 "_src_b", "_dst_b")

    def __init__(self, src: IPAddr, dst: IPAddr, sport: int, dport: int) -> None:
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
            raise ValueError(f"TCP ports {sport} -> {dport} out of range")
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.version = src.version
        self.l3len = IPV4_HLEN if self.version == 4 else IPV6_HLEN
        self._eth_tail = struct.pack("!H", ETH_P_IP if self.version == 4 else ETH_P_IPV6)
        self._src_b, self._dst_b = src.packed, dst.packed
        self.ext: object = None     # a data path's own per-connection template (cached)

    def header_room(self, opts_len: int = 0) -> int:
        """Bytes before the payload: Ethernet, IP and TCP headers (with options)."""
        return ETH_HLEN + self.l3len + TCP_HLEN + opts_len

    def finish(self, frame: bytearray, dst_mac: bytes, src_mac: bytes, seq: int, ack: int,
               flags: int, wnd: int, opts: bytes = b"") -> None:
        """Write every header of ``frame`` (its payload already in place) and checksum it."""
        l4off = ETH_HLEN + self.l3len
        l4len = len(frame) - l4off
        frame[0:6] = dst_mac
        frame[6:12] = src_mac
        frame[12:14] = self._eth_tail
        if self.version == 4:
            _IPV4.pack_into(frame, ETH_HLEN, 0x45, 0, IPV4_HLEN + l4len, 0, 0x4000, 255,
                            IPPROTO_TCP, 0, self._src_b, self._dst_b)
            view = memoryview(frame)
            struct.pack_into("!H", frame, ETH_HLEN + 10,
                             core.csum_ipv4_header(view[ETH_HLEN:l4off]))
        else:
            _IPV6.pack_into(frame, ETH_HLEN, 6 << 28, l4len, IPPROTO_TCP, 255, self._src_b,
                            self._dst_b)
            view = memoryview(frame)
        hlen = TCP_HLEN + len(opts)
        _TCP.pack_into(frame, l4off, self.sport, self.dport, seq & SEQ_MASK, ack & SEQ_MASK,
                       (hlen // 4) << 4, flags, min(wnd, 0xFFFF), 0, 0)
        if opts:
            frame[l4off + TCP_HLEN:l4off + hlen] = opts
        seg = view[l4off:]
        if self.version == 4:
            csum = core.csum_l4_ipv4(self._src_b, self._dst_b, IPPROTO_TCP, seg)
        else:
            csum = core.csum_l4_ipv6(self._src_b, self._dst_b, IPPROTO_TCP, seg)
        struct.pack_into("!H", frame, l4off + 16, csum)

    def control(self, dst_mac: bytes, src_mac: bytes, seq: int, ack: int, flags: int,
                wnd: int, opts: bytes = b"", payload: bytes = b"") -> bytearray:
        """A complete frame without (or with a small) payload: SYN, ACK, FIN, RST, probes."""
        room = self.header_room(len(opts))
        frame = bytearray(room + len(payload))
        frame[room:] = payload
        self.finish(frame, dst_mac, src_mac, seq, ack, flags, wnd, opts)
        return frame


def rst_reply(src: IPAddr, dst: IPAddr, seg: TcpSegment, dst_mac: bytes,
              src_mac: bytes) -> bytearray | None:
    """The RST answering ``seg`` (sent from src to dst), per RFC 9293 3.10.7.1; None for RSTs."""
    if seg.flags & RST:
        return None
    tpl = FrameTemplate(src, dst, seg.dport, seg.sport)
    if seg.flags & ACK:
        return tpl.control(dst_mac, src_mac, seg.ack, 0, RST, 0)
    return tpl.control(dst_mac, src_mac, 0, seq_add(seg.seq, seg.seq_len), RST | ACK, 0)
