# SPDX-License-Identifier: MIT
"""Guest <-> host UDP in C (csrc/udp_path.c): datagrams of a classified batch sent in runs
of one tuple from guest memory, and a host socket's datagrams received straight into RX
buffers.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from passt_py.core._lib import _ip16, check, ffi, lib
from passt_py.core.classifier import PacketRecords
from passt_py.core.virtq import Virtqueue

UDP_RX_CSUM_PARTIAL = lib.PC_UDP_RX_CSUM_PARTIAL
UDP_RX_DATA_VALID = lib.PC_UDP_RX_DATA_VALID
UDP_STOP_DRAINED = lib.PC_UDP_STOP_DRAINED
UDP_STOP_NOBUFS = lib.PC_UDP_STOP_NOBUFS
UDP_STOP_LIMIT = lib.PC_UDP_STOP_LIMIT
UDP_STOP_UNKNOWN = lib.PC_UDP_STOP_UNKNOWN
UDP_STOP_STOPPED = lib.PC_UDP_STOP_STOPPED
UDP_STOP_ERROR = lib.PC_UDP_STOP_ERROR
UDP_SPILL = 65536


class UdpTemplates:
    """Header templates (struct pc_udp_flow) of the flows one host socket feeds, for
    UdpPath.rx(): one with ``peer=None`` for a connected socket, or one per host peer for a
    socket several flows share (a -u listener). All of one IP version (the guest side's)."""

    def __init__(self, capacity: int = 1) -> None:
        self.c = ffi.new("struct pc_udp_flow[]", capacity)
        self.capacity = capacity
        self.n = 0
        self.mac = b""          # the guest MAC the entries were built for

    def set(self, i: int, eth_dst: bytes, eth_src: bytes,
            src: ipaddress.IPv4Address | ipaddress.IPv6Address,
            dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int,
            peer: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None = None,
            ttl: int = 255) -> None:
        """Entry ``i`` (the entries in use are the first ``n``): src/sport are the side the
        guest talks to, dst/dport the guest; datagrams from ``peer`` (None: any) take it."""
        if src.version != dst.version:
            raise ValueError("address families differ")
        if len(eth_dst) != 6 or len(eth_src) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        c = self.c[i]
        self.mac = bytes(eth_dst)
        ffi.memmove(c.eth_dst, eth_dst, 6)
        ffi.memmove(c.eth_src, eth_src, 6)
        ffi.memmove(c.src, _ip16(src), 16)
        ffi.memmove(c.dst, _ip16(dst), 16)
        c.sport, c.dport, c.ipver, c.ttl, c.count = sport, dport, src.version, ttl, 0
        c.any_peer = 1 if peer is None else 0
        if peer is not None:
            ffi.memmove(c.peer, _ip16(peer[0]), 16)
            c.peer_port = peer[1]

    def take_count(self, i: int) -> int:
        """Datagrams delivered for entry ``i`` since the last call."""
        c = self.c[i]
        n, c.count = c.count, 0
        return n


class UdpPath:
    """Host -> guest UDP on one RX ring: rx() receives a socket's datagrams straight into RX
    buffers (csrc/udp_path.c); the ring's flush() after a batch of rx(flush=False) calls."""

    def __init__(self, ring: Virtqueue) -> None:
        self.ring = ring
        self.last = ffi.new("struct pc_udp_rx_result *")
        self._spill = ffi.new("uint8_t[]", UDP_SPILL)

    def rx(self, fd: int, tmpls: UdpTemplates, hdr_len: int = 12, mergeable: bool = True,
           max_dgrams: int = 64, opts: int = 0, flush: bool = True) -> int:
        """Datagrams delivered; self.last says why it stopped (UDP_STOP_*), how many were
        dropped as undeliverable, the socket error (STOP_ERROR) and the spilled datagram
        (STOP_UNKNOWN: from a peer no template covers, see spilled())."""
        o = opts | (0 if flush else lib.PC_UDP_RX_NO_FLUSH)
        return check(lib.pc_udp_rx(self.ring._vq, fd, tmpls.c, tmpls.n, hdr_len,
                                   1 if mergeable else 0, max_dgrams, o, self._spill,
                                   UDP_SPILL, self.last), "udp_rx")

    def spilled(self) -> tuple[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
        """The datagram the last rx() left in the spill buffer, and its peer (address, port)."""
        r = self.last
        raw = bytes(ffi.buffer(r.spill_addr, 16))
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(raw)
        if r.spill_family == 4:
            addr = ipaddress.IPv4Address(raw[12:])
        return ffi.buffer(self._spill, r.spill_len)[:], addr, r.spill_port


class UdpRuns:
    """A classified batch's frames (an index list) cut into runs of one UDP tuple
    (pc_udp_runs), so the UDP fast path decides per run; send() then sends every run the
    caller gave a socket (``runs[r].fd``) straight from guest memory."""

    def __init__(self, recs: PacketRecords, frames: Sequence[int]) -> None:
        self.recs = recs
        n = self.n = len(frames)
        self.idx = ffi.new("uint32_t[]", list(frames)) if n else ffi.NULL
        self.runs = ffi.new("struct pc_udp_run[]", max(n, 1))
        self._items: object = None
        self.count = check(lib.pc_udp_runs(recs.recs, recs.count, self.idx, n, self.runs,
                                           max(n, 1)), "udp_runs") if n else 0

    def frames(self, r: int) -> list[int]:
        """Frame indices of run ``r``."""
        run = self.runs[r]
        return [self.idx[k] for k in range(run.first, run.first + run.count)]

    def send(self) -> int:
        """Send the runs with an fd; returns how many datagrams failed (see errors())."""
        b = self.recs.batch
        self._items = ffi.new("struct pc_dgram_ref[]", max(self.n, 1))
        return check(lib.pc_send_udp_runs(b.frames, b.count, b.iov, b.max_iov, self.recs.recs,
                                          self.recs.count, self.idx, self.n, self.runs,
                                          self.count, self._items), "send_udp_runs")

    def errors(self, r: int) -> list[tuple[int, int]]:
        """(frame, negative errno) of run ``r``'s datagrams that failed."""
        run = self.runs[r]
        items = self._items
        return [(self.idx[k], items[k].err) for k in range(run.first, run.first + run.count)
                if items[k].err]
