# SPDX-License-Identifier: MIT
"""The established-TCP data path (csrc/tcp_path.c).

Payload is sent from guest memory (zero copy), host data peeked straight into guest RX
buffers as TCP segments (one copy). Python decides per batch or per event; C moves the
bytes. See the peek-offset contract in csrc/tcp_path.c: the socket must have SO_PEEK_OFF
enabled before TcpPath.rx() is used.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence

from passt_py.core._lib import BytesLike, _ip16, check, ffi, lib
from passt_py.core.classifier import PacketRecords
from passt_py.core.virtq import TxBatch, Virtqueue

TCP_FIN = lib.PC_TCP_FIN
TCP_SYN = lib.PC_TCP_SYN
TCP_RST = lib.PC_TCP_RST
TCP_PSH = lib.PC_TCP_PSH
TCP_ACK = lib.PC_TCP_ACK
TCP_URG = lib.PC_TCP_URG
TCP_ECE = lib.PC_TCP_ECE
TCP_CWR = lib.PC_TCP_CWR

TCP_RX_GSO = lib.PC_TCP_RX_GSO
TCP_RX_CSUM_PARTIAL = lib.PC_TCP_RX_CSUM_PARTIAL
TCP_RX_DATA_VALID = lib.PC_TCP_RX_DATA_VALID
TCP_RX_NO_FLUSH = lib.PC_TCP_RX_NO_FLUSH
TCP_STOP_WINDOW = lib.PC_TCP_STOP_WINDOW      # max_bytes delivered
TCP_STOP_NOBUFS = lib.PC_TCP_STOP_NOBUFS      # guest RX buffers ran out: wait for an RX kick
TCP_STOP_DRAINED = lib.PC_TCP_STOP_DRAINED    # the socket had less than asked (or nothing)
TCP_STOP_EOF = lib.PC_TCP_STOP_EOF            # the peer closed and nothing is left to peek
TCP_STOP_LIMIT = lib.PC_TCP_STOP_LIMIT        # per-call limit (1024 iovecs/chains): call again
TCP_STOP_STOPPED = lib.PC_TCP_STOP_STOPPED    # RX ring not running
TCP_STOP_AGAIN = lib.PC_TCP_STOP_AGAIN        # out of buffers, but new ones came: call again


def send_payloads(fd: int, batch: TxBatch, items: Sequence[tuple[int, int, int]]) -> int:
    """sendmsg() (frame, offset, length) ranges of a batch to fd straight from guest memory.

    One flow per call, ranges in stream order. Returns the bytes the kernel accepted: less
    than the total when the socket buffer filled (0 if it took nothing). Raises CoreError for
    socket errors (EPIPE, ECONNRESET...) and EINVAL for a range outside its frame.
    """
    if not items:
        return 0
    refs = ffi.new("struct pc_payload_ref[]", len(items))
    for k, (frame, off, length) in enumerate(items):
        refs[k].frame, refs[k].off, refs[k].len = frame, off, length
    return _send_refs(fd, batch, refs, len(items))


def _send_refs(fd: int, batch: TxBatch, refs: object, count: int) -> int:
    """pc_send_payloads() of ``count`` refs: bytes taken (0 on EAGAIN), CoreError otherwise."""
    ret = lib.pc_send_payloads(fd, batch.frames, batch.count, batch.iov, batch.max_iov, refs,
                               count)
    if ret == -errno.EAGAIN:
        return 0
    return check(ret, "send_payloads")


def tcp_runs(recs: PacketRecords) -> tuple[object, int, object]:
    """Cut a classified batch into runs (struct pc_tcp_run): (runs, how many, payload refs).

    A data run is in-order data of one connection, so the TCP code decides once per run; the
    refs array holds (frame, payload offset, length) for every frame, a run's being
    ``refs[first:first + count]``, ready for :func:`send_payload_runs`. Arrays are reused per
    batch object and valid until the next call.
    """
    batch = recs.batch
    arrays = getattr(batch, "_tcp_runs", None)
    if arrays is None:
        arrays = batch._tcp_runs = (ffi.new("struct pc_tcp_run[]", batch.max_frames),
                                    ffi.new("struct pc_payload_ref[]", batch.max_frames))
    runs, refs = arrays
    n = check(lib.pc_tcp_runs(recs.recs, recs.count, refs, runs, batch.max_frames), "tcp_runs")
    return runs, n, refs


def send_payload_runs(fd: int, batch: TxBatch, refs: object,
                      runs: Sequence[tuple[int, int]]) -> int:
    """:func:`send_payloads` for runs (first ref, count) of a :func:`tcp_runs` refs array.

    One sendmsg() for all of them, without per-frame work in Python: a single run is passed
    as a pointer into ``refs``; several (one connection's runs, interleaved with others') are
    gathered into one array first.
    """
    if not runs:
        return 0
    if len(runs) == 1:
        ptr, count = refs + runs[0][0], runs[0][1]   # type: ignore[operator]
    else:
        count = sum(n for _first, n in runs)
        ptr = ffi.new("struct pc_payload_ref[]", count)
        size = ffi.sizeof("struct pc_payload_ref")
        at = 0
        for first, n in runs:
            ffi.memmove(ptr + at, refs + first, n * size)   # type: ignore[operator]
            at += n
    return _send_refs(fd, batch, ptr, count)


class TcpTemplate:
    """Header template of one flow as the guest sees it (struct pc_tcp_flow).

    src/sport is the remote side (us, to the guest), dst/dport the guest. The TCP code updates
    ``seq`` (sequence number of the byte at the socket's peek offset), ``ack``, ``window``
    (the raw, already scaled-down field), ``flags`` (default ACK|PSH; PSH only goes on the last
    segment of an rx() call), ``ts_val``/``ts_ecr`` with ``use_ts``, as its state changes.
    """

    _FIELDS = ("seq", "ack", "window", "mss", "ttl", "flags", "ts_val", "ts_ecr", "sport",
               "dport")

    def __init__(self, eth_dst: bytes, eth_src: bytes,
                 src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int,
                 mss: int = 1460, ttl: int = 64, seq: int = 0, ack: int = 0,
                 window: int = 65535, flags: int = TCP_ACK | TCP_PSH,
                 use_ts: bool = False, ts_val: int = 0, ts_ecr: int = 0) -> None:
        if src.version != dst.version:
            raise ValueError("address families differ")
        if len(eth_dst) != 6 or len(eth_src) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        c = self.c = ffi.new("struct pc_tcp_flow *")
        ffi.memmove(c.eth_dst, eth_dst, 6)
        ffi.memmove(c.eth_src, eth_src, 6)
        ffi.memmove(c.src, _ip16(src), 16)
        ffi.memmove(c.dst, _ip16(dst), 16)
        c.ipver = src.version
        c.sport, c.dport, c.mss, c.ttl = sport, dport, mss, ttl
        c.seq, c.ack, c.window, c.flags = seq, ack, window, flags
        c.use_ts = 1 if use_ts else 0
        c.ts_val, c.ts_ecr = ts_val, ts_ecr

    @property
    def ipver(self) -> int:
        """4 or 6."""
        return self.c.ipver

    @property
    def use_ts(self) -> bool:
        """Send the timestamps option (ts_val, ts_ecr) on every segment."""
        return bool(self.c.use_ts)

    @use_ts.setter
    def use_ts(self, on: bool) -> None:
        self.c.use_ts = 1 if on else 0

    def __getattr__(self, name: str) -> int:
        if name in TcpTemplate._FIELDS:
            return getattr(self.c, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in TcpTemplate._FIELDS:
            setattr(self.c, name, value)
        else:
            object.__setattr__(self, name, value)


class TcpRxResult:
    """What the last TcpPath.rx() did: payload bytes, segments, RX chains used, bad chains,
    whether the guest was notified, and why it stopped (TCP_STOP_*)."""

    __slots__ = ("bytes", "segs", "bufs", "bad", "notified", "stop")

    def __init__(self, res: object = None) -> None:
        if res is None:
            self.bytes = self.segs = self.bufs = self.bad = self.stop = 0
            self.notified = False
        else:
            self.bytes, self.segs, self.bufs, self.bad = res.bytes, res.segs, res.bufs, res.bad
            self.notified, self.stop = bool(res.notified), res.stop

    def __repr__(self) -> str:
        return (f"TcpRxResult(bytes={self.bytes}, segs={self.segs}, bufs={self.bufs}, "
                f"bad={self.bad}, notified={self.notified}, stop={self.stop})")


def tcp_build(tmpl: TcpTemplate, flags: int, options: BytesLike = b"",
              payload: BytesLike = b"") -> bytes:
    """One Ethernet frame of tmpl's flow with full checksums (tap back-ends, pcap, tests).

    options: TCP option bytes, padded by the caller to a multiple of 4 (at most 40).
    """
    out = ffi.new("uint8_t[]", 14 + 40 + 60 + len(payload))
    opt = ffi.from_buffer(options) if options else ffi.NULL
    pay = ffi.from_buffer(payload) if payload else ffi.NULL
    n = check(lib.pc_tcp_build(tmpl.c, flags, opt, len(options), pay, len(payload), out,
                               len(out)), "tcp_build")
    return ffi.buffer(out, n)[:]


class TcpPath:
    """The host-to-guest TCP data path on one RX ring: rx() per flow event, ctl() per control
    segment; the ring's flush() after a batch of rx(flush=False) calls. Holds C scratch
    (~100 KiB)."""

    def __init__(self, ring: Virtqueue) -> None:
        self.ring = ring
        self._raw = ffi.new("char[]", lib.pc_tcp_scratch_size())
        self._scratch = ffi.cast("struct pc_tcp_scratch *", self._raw)
        self._res = ffi.new("struct pc_tcp_rx_result *")
        self._rxres = ffi.new("struct pc_rx_result *")
        self.last = TcpRxResult()

    def rx(self, fd: int, tmpl: TcpTemplate, max_bytes: int, hdr_len: int = 12,
           mergeable: bool = True, opts: int = 0, flush: bool = True) -> int:
        """Peek up to max_bytes from fd into guest RX buffers as segments of tmpl's flow.

        opts: TCP_RX_GSO (guest negotiated GUEST_TSO4/6 for this family), TCP_RX_CSUM_PARTIAL
        or TCP_RX_DATA_VALID (guest negotiated GUEST_CSUM); see NetDevice.tcp_rx_opts().
        Returns payload bytes delivered (advance tmpl.seq by it); details, including why it
        stopped (EOF, no buffers...), in self.last. flush=False leaves the used-ring update
        and notification for the ring's flush(). Raises CoreError on socket errors
        (ECONNRESET...).
        """
        o = opts | (0 if flush else TCP_RX_NO_FLUSH)
        ret = lib.pc_tcp_rx(self.ring._vq, self._scratch, fd, tmpl.c, hdr_len,
                            1 if mergeable else 0, max(0, min(max_bytes, 0xFFFFFFFF)), o,
                            self._res)
        self.last = TcpRxResult(self._res)
        return check(ret, "tcp_rx")

    def ctl(self, tmpl: TcpTemplate, flags: int, options: BytesLike | None = None,
            hdr_len: int = 12, mergeable: bool = True, data_valid: bool = False) -> bool:
        """Place one header-only segment (flags from TCP_*, seq/ack/window from tmpl).

        options: TCP option bytes (padded to a multiple of 4); None sends tmpl's timestamps
        option when tmpl.use_ts. Returns False if the guest has no RX buffer right now.
        """
        opt = ffi.from_buffer(options) if options else ffi.NULL
        n = check(lib.pc_tcp_ctl(self.ring._vq, tmpl.c, flags, opt,
                                 len(options) if options else 0, hdr_len,
                                 1 if mergeable else 0,
                                 TCP_RX_DATA_VALID if data_valid else 0, self._rxres),
                  "tcp_ctl")
        return bool(n and self._rxres.placed)


def set_peek_offset(sock: socket.socket | int, offset: int) -> None:
    """Enable SO_PEEK_OFF on a TCP socket at offset (bytes in flight to the guest)."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    s = socket.socket(fileno=fd)
    try:
        s.setsockopt(socket.SOL_SOCKET, _SO_PEEK_OFF, offset)
    finally:
        s.detach()


_SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)
