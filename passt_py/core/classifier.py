# SPDX-License-Identifier: MIT
"""Guest frames classified per batch, for every protocol (csrc/classify.c).

One C call fills a struct pc_pkt per frame of a TX batch (headers parsed, payload left in
guest memory); Python looks at the records once per batch.
"""
from __future__ import annotations

import ipaddress

from passt_py.core._lib import _ip_from16, check, ffi, lib
from passt_py.core.virtq import TxBatch

VNET_F_NEEDS_CSUM = lib.PC_VNET_F_NEEDS_CSUM
VNET_F_DATA_VALID = lib.PC_VNET_F_DATA_VALID
VNET_GSO_NONE = lib.PC_VNET_GSO_NONE
VNET_GSO_TCPV4 = lib.PC_VNET_GSO_TCPV4
VNET_GSO_UDP = lib.PC_VNET_GSO_UDP
VNET_GSO_TCPV6 = lib.PC_VNET_GSO_TCPV6
VNET_GSO_UDP_L4 = lib.PC_VNET_GSO_UDP_L4
VNET_GSO_ECN = lib.PC_VNET_GSO_ECN

PKT_OK = lib.PC_PKT_OK
PKT_SHORT_ETH = lib.PC_PKT_SHORT_ETH
PKT_OTHER = lib.PC_PKT_OTHER
PKT_IP_HDR = lib.PC_PKT_IP_HDR
PKT_IP_LEN = lib.PC_PKT_IP_LEN
PKT_IP_FRAG = lib.PC_PKT_IP_FRAG
PKT_IP_EXT = lib.PC_PKT_IP_EXT
PKT_L4_SHORT = lib.PC_PKT_L4_SHORT
PKT_TCP_DOFF = lib.PC_PKT_TCP_DOFF
PKT_UDP_LEN = lib.PC_PKT_UDP_LEN
PKT_HDR_MAX = lib.PC_PKT_HDR_MAX
#: PC_PKT_* validity code -> name, for logs.
PKT_CODES: dict[int, str] = {
    PKT_OK: "ok", PKT_SHORT_ETH: "short-ethernet", PKT_OTHER: "not-ip", PKT_IP_HDR: "ip-header",
    PKT_IP_LEN: "ip-length", PKT_IP_FRAG: "ip-fragment", PKT_IP_EXT: "ip-extension",
    PKT_L4_SHORT: "l4-short", PKT_TCP_DOFF: "tcp-data-offset", PKT_UDP_LEN: "udp-length",
}


class PacketRecords:
    """One struct pc_pkt per frame of a TxBatch, filled by one C call (classify()).

    ``records[i]`` is the C record itself (read its fields as attributes: ``len``,
    ``ethertype``, ``valid`` (PKT_*), ``ipver``, ``proto``, ``tcp_flags``, ``ttl``,
    ``vnet_flags``, ``gso_type``, ``gso_size``, ``csum_start``, ``csum_offset``, ``tcp_doff``,
    ``l3_off``, ``l4_off``, ``opt_off``, ``opt_len``, ``sport``, ``dport``, ``window``,
    ``ip_len``, ``seq``, ``ack``, ``payload_off``, ``payload_len``). Offsets count from the
    Ethernet header. Valid until the batch is released: the view does not copy payloads.
    """

    __slots__ = ("batch", "recs", "count")

    def __init__(self, batch: TxBatch, recs: object, count: int) -> None:
        self.batch, self.recs, self.count = batch, recs, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> object:
        if not 0 <= i < self.count:
            raise IndexError(f"record {i} not in batch of {self.count}")
        return self.recs[i]

    def src(self, i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Source address of frame i (an IPv4 or IPv6 record)."""
        r = self[i]
        return _ip_from16(bytes(r.src), r.ipver)

    def dst(self, i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Destination address of frame i."""
        r = self[i]
        return _ip_from16(bytes(r.dst), r.ipver)

    def key(self, i: int) -> tuple[bytes, int, bytes, int]:
        """(src16, sport, dst16, dport): a cheap flow-table key (IPv4 as ::ffff:a.b.c.d)."""
        r = self[i]
        return bytes(r.src), r.sport, bytes(r.dst), r.dport

    def read(self, i: int, off: int, length: int) -> bytes:
        """Copy bytes [off, off + length) of frame i (control paths: options, SYN data)."""
        r = self[i]
        if off < 0 or length < 0 or off + length > r.len:
            raise ValueError("range outside the frame")
        iov, n = self.batch.slices(i)
        out = bytearray()
        for k in range(n):
            if length <= 0:
                break
            size = iov[k].iov_len
            if off >= size:
                off -= size
                continue
            take = min(size - off, length)
            out += ffi.buffer(ffi.cast("char *", iov[k].iov_base) + off, take)[:]
            length -= take
            off = 0
        return bytes(out)

    def tcp_options(self, i: int) -> bytes:
        """The TCP option bytes of frame i (empty if none)."""
        r = self[i]
        return self.read(i, r.opt_off, r.opt_len) if r.opt_len else b""

    def payload(self, i: int) -> bytes:
        """A copy of frame i's L4 payload (control paths only; data goes by send_payloads)."""
        r = self[i]
        return self.read(i, r.payload_off, r.payload_len)


def classify(batch: TxBatch) -> PacketRecords:
    """Classify every frame of a TX batch in one C call; records reused per batch object."""
    recs = getattr(batch, "_pkt_recs", None)
    if recs is None:
        recs = batch._pkt_recs = ffi.new("struct pc_pkt[]", batch.max_frames)
    n = check(lib.pc_classify(batch.frames, batch.iov, batch.max_iov, batch.count, recs),
              "classify")
    return PacketRecords(batch, recs, n)
