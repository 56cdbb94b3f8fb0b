"""TCP translation: guest connections terminated here and re-originated as host sockets.

Theory of operation (passt's model, RFC 9293 semantics on the guest side):

- Outbound: a guest SYN for a new tuple creates a TCP flow and a non-blocking host socket,
  connect()ed to the destination after address translation (passt_py.link.fwd: the gateway is the
  host's loopback...). The guest's MSS goes to the socket (TCP_MAXSEG, before connect())
  unless the peer is on this host (loopback: no path to fit, and small segments cost CPU).
  An inbound connection's handshake is over before the guest's MSS is known: its socket keeps
  the MSS it negotiated (TCP_MAXSEG on an established socket changes nothing). The SYN-ACK
  goes to the guest only once the host connect completes; a refused, unreachable or
  timed-out connect (CONNECT_TIMEOUT) answers the guest with an RST.
- Inbound (-t): listening sockets per forwarded port and family; an accepted connection sends
  a SYN to the guest's address (the one it uses, else its lease) at the mapped port, from the
  peer's address as the guest must see it (127.0.0.1 -> the gateway...).
- No data buffers of our own. Guest -> host: a segment's payload is written to the socket as
  it arrives, in order only; what the socket does not take is not acknowledged, and the
  guest sends it again. The window we advertise is the host peer's receive window for a
  peer on this host, else also bounded by the free send-buffer space (pc_tcp_send_window()).
  Host -> guest: data stays in the socket's receive queue until the guest acknowledges it;
  it is read with MSG_PEEK from SO_PEEK_OFF (the offset advances with each peek) and
  discarded with MSG_TRUNC when acknowledged. Retransmission is
  go-back-N: rewind SO_PEEK_OFF to zero and send again from the guest's last ACK.
- Timers (one per connection, lazily re-armed): retransmission with exponential back-off
  from RTO_INITIAL up to RTO_MAX, RST both ways after MAX_RETRIES; fast retransmit on the
  third duplicate ACK; zero-window probes while the guest's window is closed and data waits;
  a short poll of the send buffer while the window we advertised is closed (the socket
  reports write space only after a failed write). Idle connections are reset after
  IDLE_TIMEOUT (2 h, passt's ACT_TIMEOUT), through the flow table's expiry.
- Close: guest FIN -> shutdown(SHUT_WR) on the socket; host end of stream -> FIN to the guest
  once every byte before it is acknowledged. Both done -> the socket is closed. RST from
  either side -> RST to the other (SO_LINGER 0 on the host side).
- ISNs follow RFC 6528: a keyed BLAKE2b of the 4-tuple (secret from os.urandom at start-up)
  plus a 4 microsecond clock.
- We never negotiate SACK or timestamps with the guest (the guest's offers are declined by
  leaving them out of our SYN / SYN-ACK); window scaling (RFC 7323) both ways, WS_OURS.
- Segments for unknown tuples get an RST (not RSTs themselves). Malformed segments, odd flag
  combinations and out-of-window segments are dropped; nothing raises out of from_guest.

The per-connection guest-side state is one dataclass, :class:`TcpState`: migration exports it
(``TcpHandler.export``) and rebuilds flows around restored sockets (``TcpHandler.adopt``).

Where the bytes go (Python decides per run of segments or per event, never per byte):
- guest -> host: the service hands each TX batch to :meth:`TcpHandler.take_batch` first; C
  cuts it into runs of in-order data segments per connection, and those of established
  connections are written with one sendmsg() per connection straight from guest memory
  (core.send_payload_runs); every other frame (handshake,
  FIN, RST, out of order, other protocols) is copied out and reaches :meth:`from_guest`
  through the demux, whose payload goes out by ``datapath.send_to_host``.
- host -> guest: ``datapath.host_to_guest`` (passt_py.tcp.copy.TcpDataPath): the service uses
  passt_py.tcp.ring.RingDataPath (C peeks into the guest's RX buffers and writes headers,
  stopping when they run out: the connection then waits for the guest's RX kick, rx_ready()),
  with or without a capture (-p: the rings record what they carry, whatever path it took);
  tests without rings use passt_py.tcp.copy.CopyingDataPath (frames through the link).
- the steady state in C: with the service's fast path (core.FastPath), a connection with
  nothing pending but data and ACKs (:meth:`TcpHandler._steady`) is handed to C after the
  batch that left it so (csrc/fast_tcp.c runs the same rules inside the loop's wait). Every
  Python entry point for it (its socket events C reports, its frames C leaves, its timer,
  closing, export) first takes its state back (:meth:`TcpHandler._fast_take`), including
  what C left for Python to do; it is handed over again once steady.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from passt_py import core
from passt_py.config.log import trace
from passt_py.config.portspec import Forward, PortForwards
from passt_py.flow import Flow, FlowRefused, FlowSide, FlowTable, FlowType, Pif
from passt_py.link import fwd
from passt_py.link.ip import IpPacket
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import ERR, HUP, IN, OUT, EventLoop, Timer
from passt_py.tcp.conn import (A_ARM, A_BATCH_END, A_CLOSE, A_CONTROL, A_DISARM, A_DISCARD,
                               A_MORE, A_RESET, A_RETRANSMIT, A_REWIND, A_RX_WAIT, A_SEND,
                               A_SHUT_WR, A_TO_GUEST, A_TRACE, MAX_RETRIES, MAX_WINDOW,
                               RTO_INITIAL, S_TO_GUEST, S_TO_HOST, WND_NONE, WND_SYN, WS_OURS,
                               Actions, TcpConn, default_mss)
from passt_py.tcp.copy import CopyingDataPath, TcpDataPath
from passt_py.tcp.ring import RingDataPath
from passt_py.tcp.seg import (ACK, RST, SYN, FrameTemplate, TcpSegment, parse_tcp, rst_reply,
                              seq_add, seq_diff)
from passt_py.tcp.state import IPAddr, Phase, TcpState

__all__ = ["BYTES_PER_EVENT", "MAX_WINDOW", "Phase", "TcpHandler", "TcpState", "WS_OURS"]

log = logging.getLogger(__name__)

_NO_PAYLOAD = memoryview(b"")

CONNECT_TIMEOUT = 10.0      # passt's SYN_TIMEOUT: host connect or guest SYN-ACK
IDLE_TIMEOUT = 7200.0       # passt's ACT_TIMEOUT: reset after two idle hours
WND_POLL = 0.01             # send-buffer poll while our advertised window is closed
BYTES_PER_EVENT = 1 << 20   # host -> guest bytes per connection and event (then deferred)
ACCEPT_BATCH = 64
SNDBUF_BIG = 4 << 20        # net.core.wmem_max from which sockets get a big send buffer...
RCVBUF_BIG = 2 << 20        # ...and rmem_max from which a big receive buffer (as passt does)...
BUF_HEADROOM = 8            # ...an eighth below the limit: a migration target can rebuild it
LISTEN_BACKLOG = 128
DISCARD_CHUNK = 1 << 20

SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)
ET = 1 << 31                # EPOLLET
_LINGER0 = struct.pack("ii", 1, 0)


class _Conn:
    """One connection's I/O side: its core (rules and state), socket, flow, frame template,
    timer, and the bookkeeping of where the loop and C have it."""

    __slots__ = ("core", "st", "sock", "fd", "flow", "tpl", "deadline", "timer", "batch_end",
                 "local", "fast", "offered")

    def __init__(self, conn: TcpConn, sock: socket.socket, local: bool) -> None:
        self.core = conn
        self.st = conn.st
        self.sock = sock
        self.fd = sock.fileno()
        self.flow: Flow | None = None
        st = conn.st
        self.tpl = FrameTemplate(st.our_addr, st.guest_addr, st.our_port, st.guest_port)
        self.deadline: float | None = None     # retransmission / probe / connect deadline
        self.timer: Timer | None = None
        self.batch_end = False                  # listed for _end_batch
        self.local = local                      # host peer on this host (_peer_is_local)
        self.fast = False                       # C runs its steady state (core.FastPath)
        self.offered = False                    # listed for TcpHandler._fast_give_offered


@dataclass
class _Listener:
    """One -t listening socket: host ``port`` forwarded to guest ``target_port``."""

    sock: socket.socket
    version: int
    addr: IPAddr
    port: int
    target_port: int


def _sockaddr(addr: IPAddr, port: int) -> tuple[object, ...]:
    return (str(addr), port) if addr.version == 4 else (str(addr), port, 0, 0)


def _addr_of(name: tuple[object, ...]) -> tuple[IPAddr, int]:
    return ipaddress.ip_address(str(name[0]).partition("%")[0]), int(name[1])  # type: ignore


def _sysctl_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _big_buffers() -> tuple[int, int]:
    """The send / receive buffer sizes to ask for where the system allows big ones
    (net.core.wmem_max and rmem_max), else 0 (autotuning): then every connection gets a big
    one from the start, as passt does. Autotuning grows a buffer only after it was found
    full, and each time the send buffer is full the guest's data past it is refused and must
    be resent.

    Not quite the largest: BUF_HEADROOM of the limit is left, so that a full queue can be
    rebuilt on a migration target with the same limits and no CAP_NET_ADMIN (no forced
    sizes). A target refills the queue in its own segments, whose overhead differs a little
    from the source's: a queue that filled a buffer at the limit does not fit in one
    (measured: 8.27 MB queued in an 8 MiB buffer, EAGAIN on restore)."""
    wmem, rmem = (_sysctl_int(f"/proc/sys/net/core/{n}") for n in ("wmem_max", "rmem_max"))
    return (wmem - wmem // BUF_HEADROOM if wmem >= SNDBUF_BIG else 0,
            rmem - rmem // BUF_HEADROOM if rmem >= RCVBUF_BIG else 0)


def _is_loopback(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A loopback destination, IPv4-mapped ones included."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _clamp_mss(sock: socket.socket, mss: int) -> None:
    """The guest's MSS for the host side too, before connect() (it only shapes a handshake
    still to come), so that a remote peer sees the segment size the guest would have used.
    Not for a peer on this host: there is no path to fit, and loopback segments of a
    1500-byte MTU's MSS cost the kernel about twice the CPU per byte (measured: tcp-tx at MTU
    1500 with the guest's TSO, 16 Gbit/s at 0.44 s/GB clamped, 31 at 0.24 not)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, max(88, mss))
    except OSError:
        pass


def _peer_is_local(peer: IPAddr, ours: IPAddr) -> bool:
    """The host peer is on this host: a loopback address, or our own address (the kernel
    picks the destination itself as source when we connect to one of our addresses)."""
    return _is_loopback(peer) or peer == ours


class TcpHandler:
    """TCP connections between the guest and host sockets, plus -t forwarding listeners."""

    def __init__(self, loop: EventLoop, view: NetView, guest: GuestState, flows: FlowTable,
                 to_guest: Callable[[list[bytes]], None], datapath: TcpDataPath | None = None,
                 rto: float = RTO_INITIAL, max_retries: int = MAX_RETRIES,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, fast: core.FastPath | None = None) -> None:
        self._loop = loop
        self._view = view
        self._guest = guest
        self._flows = flows
        self._to_guest = to_guest
        self.datapath: TcpDataPath = datapath or CopyingDataPath(to_guest)
        self._rto0 = rto
        self._max_retries = max_retries
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._secret = os.urandom(16)
        self._big_snd, self._big_rcv = _big_buffers()
        self._scratch = bytearray(DISCARD_CHUNK)
        self._listeners: list[_Listener] = []
        self._batch_end: list[_Conn] = []      # work due at the end of this loop batch
        self._rx_waiting: list[_Conn] = []
        # Established connections whose steady state C runs (csrc/fast_tcp.c): only with the
        # ring data path, whose RX ring and header templates C shares.
        self._fast = fast if isinstance(self.datapath, RingDataPath) else None
        self._fast_conns: dict[int, _Conn] = {}     # by fd
        self._offers: list[_Conn] = []
        self._fast_hold = False                     # a migration froze the sockets
        if self._fast is not None:
            self._fast_in = self._fast.tcp_state()
            self._fast_out = self._fast.tcp_state()
            flows.set_activity_probe(FlowType.TCP, self._fast_activity)
        self.fast_bytes = 0             # bytes C moved (both ways) for connections it ran
        self.dropped = 0
        self.resets = 0
        self.retransmits = 0

    # ---- helpers ----
    def _isn(self, a: IPAddr, ap: int, b: IPAddr, bp: int) -> int:
        """RFC 6528: M + F(localip, localport, remoteip, remoteport, secretkey)."""
        h = hashlib.blake2b(a.packed + ap.to_bytes(2, "big") + b.packed + bp.to_bytes(2, "big"),
                            key=self._secret, digest_size=4).digest()
        return (int.from_bytes(h, "big") + time.monotonic_ns() // 4000) & 0xFFFFFFFF

    def _set_bufsize(self, sock: socket.socket) -> None:
        """Big buffers, where the system allows them (_big_buffers)."""
        for size, opt in ((self._big_snd, socket.SO_SNDBUF), (self._big_rcv, socket.SO_RCVBUF)):
            if size:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:
                    pass

    def _our_mss(self, version: int) -> int:
        return max(536, min(0xFFFF, self._view.mtu - (40 if version == 4 else 60)))

    def _new_core(self, st: TcpState) -> TcpConn:
        return TcpConn(st, self._our_mss(st.version), self._rto0, self._max_retries)

    def _macs(self) -> tuple[bytes, bytes]:
        return self._guest.mac, self._view.our_mac

    def _send_window(self, c: _Conn) -> int:
        """The window we offer the guest: what the host peer's receive window allows.

        As passt does: a peer on this host takes data as fast as it reads, so its own window
        (TCP_INFO) is the whole limit; a remote peer's data waits in our send buffer, so its
        free space bounds the window too. A send buffer as the only bound would throttle a
        local stream to a buffer's worth per round trip (the guest waits for our ACK), and a
        socket that refuses part of a batch costs the guest a resend, nothing more.
        """
        return core.tcp_send_window(c.fd, c.local, MAX_WINDOW)

    def _wnd_raw(self, c: _Conn, space: int | None = None) -> int:
        """The window field to send for ``space`` bytes (None: what the socket allows, or
        what the core fixes); starts the send-buffer poll when it closes."""
        if space is None:
            space = c.core._space()
            if space is None:
                space = self._send_window(c)
        raw = c.core.window_raw(space)
        if c.core.wants_window_poll(raw):
            self._loop.call_later(WND_POLL, lambda: self._poll_window(c))
        return raw

    def _send_control(self, c: _Conn, flags: int, seq: int, ack: int, opts: bytes,
                      wnd: int | None) -> None:
        """One segment without payload (ACK, SYN, FIN, RST...) to the guest."""
        if wnd == WND_NONE:
            raw = 0
        elif wnd == WND_SYN:
            raw = min(0xFFFF, self._send_window(c))
        else:
            raw = self._wnd_raw(c, wnd)
        c.core.control_sent(flags, ack, raw)
        dst_mac, src_mac = self._macs()
        self._to_guest([c.tpl.control(dst_mac, src_mac, seq, ack, flags, raw, opts)])

    def _run(self, c: _Conn, actions: Actions) -> None:
        """Carry out the core's actions in order; nothing after the connection closed."""
        st = c.st
        for act in actions:
            if st.phase == Phase.CLOSED:
                return
            kind = act[0]
            if kind == A_CONTROL:
                self._send_control(c, *act[1:])
            elif kind == A_BATCH_END:
                self._at_batch_end(c)
            elif kind == A_ARM:
                self._arm(c, act[1])
            elif kind == A_DISARM:
                self._disarm(c)
            elif kind == A_TO_GUEST:
                self._host_to_guest(c)
            elif kind == A_SEND:
                self._send_to_host(c, act[1], act[2])
            elif kind == A_DISCARD:
                self._discard(c, act[1])
            elif kind == A_REWIND:
                self._rewind(c)
            elif kind == A_CLOSE:
                self._close(c, rst_host=act[1])
            elif kind == A_RESET:
                self._reset(c)
            elif kind == A_SHUT_WR:
                try:
                    c.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            elif kind == A_RX_WAIT:
                self._rx_waiting.append(c)
            elif kind == A_MORE:
                self._loop.defer(lambda: self._more(c))
            elif kind == A_RETRANSMIT:
                self.retransmits += 1
            elif kind == A_TRACE:
                trace(log, "TCP flow %s: %s", self._fid(c), act[1])

    # ---- timer (one per connection, re-armed lazily) ----
    def _arm(self, c: _Conn, delay: float) -> None:
        deadline = time.monotonic() + delay
        c.deadline = deadline
        c.core.armed = True
        if c.timer is None or c.timer.deadline > deadline + 0.001:
            if c.timer is not None:
                c.timer.cancel()
            c.timer = self._loop.call_later(delay, lambda: self._on_timer(c))

    def _disarm(self, c: _Conn) -> None:
        c.deadline = None
        c.core.armed = False

    def _on_timer(self, c: _Conn) -> None:
        if c.fast:
            self._fast_take(c)      # while c.timer is this one: no second timer armed
        c.timer = None
        self._fast_offer(c)
        if c.st.phase == Phase.CLOSED or c.deadline is None:
            return
        now = time.monotonic()
        if c.deadline > now + 0.0005:
            c.timer = self._loop.call_later(c.deadline - now, lambda: self._on_timer(c))
            return
        c.deadline = None
        self._run(c, c.core.timeout())

    def _poll_window(self, c: _Conn) -> None:
        """Our window was closed: tell the guest as soon as the send buffer drains."""
        c.core.wnd_poll = False
        self._fast_offer(c)
        if c.st.phase != Phase.ESTABLISHED or c.st.guest_fin:
            return
        if self._wnd_raw(c) > 0:
            self._run(c, [c.core.control(ACK)])

    # ---- from the guest ----
    def from_guest(self, pkt: IpPacket) -> None:
        """Handle one guest TCP segment (malformed ones are dropped, nothing raises)."""
        try:
            self._from_guest(pkt)
        except Exception:  # noqa: BLE001 - malformed input must never escape
            log.exception("error handling a TCP segment from the guest")

    def _from_guest(self, pkt: IpPacket) -> None:
        if pkt.src.is_multicast or pkt.src.is_unspecified or pkt.dst.is_multicast:
            return
        seg = parse_tcp(pkt.l4)
        if seg is None:
            self.dropped += 1
            return
        tap = FlowSide(Pif.TAP, pkt.src, seg.sport, pkt.dst, seg.dport)
        flow = self._flows.lookup(FlowType.TCP, tap)
        if flow is None:
            if seg.flags & (SYN | ACK | RST) == SYN:
                self._new_outbound(tap, seg)
            else:
                self._rst_unknown(pkt, seg)
            return
        c: _Conn = flow.data  # type: ignore[assignment]
        if c.fast:
            self._fast_take(c)
        self._flows.touch(flow)
        self._run(c, c.core.segment(seg))

    def _rst_unknown(self, pkt: IpPacket, seg: TcpSegment) -> None:
        frame = rst_reply(pkt.dst, pkt.src, seg, *self._macs())
        if frame is not None:
            self._to_guest([frame])

    def _new_outbound(self, tap: FlowSide, seg: TcpSegment) -> None:
        target = fwd.nat_from_guest(self._view, tap.oaddr, tap.oport)
        pkt_rst = (tap.eaddr, tap.oaddr)
        if target is None or self._flows.full:
            if self._flows.full:
                self._flows.refuse()
            self._rst_syn(pkt_rst, seg)
            return
        family = socket.AF_INET if target.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        mss = seg.mss or default_mss(tap.eaddr.version)
        try:
            if not _is_loopback(target):
                _clamp_mss(sock, mss)
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            self._set_bufsize(sock)
            err = sock.connect_ex(_sockaddr(target, tap.oport))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            local_addr, local_port = _addr_of(sock.getsockname())
        except OSError as e:
            trace(log, "TCP: connect to %s:%d failed: %s", target, tap.oport, e)
            sock.close()
            self._rst_syn(pkt_rst, seg)
            return
        st = TcpState(version=tap.eaddr.version, guest_addr=tap.eaddr, guest_port=tap.eport,
                      our_addr=tap.oaddr, our_port=tap.oport, inbound=False,
                      phase=Phase.CONNECTING, seq_from_guest=seq_add(seg.seq, 1),
                      isn_guest=seg.seq, wnd_from_guest=seg.wnd, mss_guest=mss)
        if seg.ws is not None:
            st.ws_from_guest, st.ws_to_guest = seg.ws, WS_OURS
        isn = self._isn(tap.oaddr, tap.oport, tap.eaddr, tap.eport)
        st.isn_ours = st.seq_to_guest = st.seq_acked_by_guest = isn
        c = _Conn(self._new_core(st), sock, _peer_is_local(target, local_addr))
        host = FlowSide(Pif.HOST, target, tap.oport, local_addr, local_port)
        try:
            c.flow = self._flows.new(FlowType.TCP, tap, host, self._idle_timeout,
                                     self._on_close, c)
        except FlowRefused as e:
            trace(log, "TCP: flow refused: %s", e)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            sock.close()
            self._rst_syn(pkt_rst, seg)
            return
        self._loop.add(c.fd, IN | OUT | ERR | HUP | ET, lambda m, c=c: self._on_sock(c, m))
        self._arm(c, self._connect_timeout)
        trace(log, "new TCP flow %r", c.flow)

    def _rst_syn(self, addrs: tuple[IPAddr, IPAddr], seg: TcpSegment) -> None:
        guest_addr, our_addr = addrs
        frame = rst_reply(our_addr, guest_addr, seg, *self._macs())
        if frame is not None:
            self._to_guest([frame])

    def _send_to_host(self, c: _Conn, data: memoryview, fin: bool) -> None:
        """Guest payload the core accepted, to the socket (the core learns what it took)."""
        n = 0
        if data:
            try:
                n = self.datapath.send_to_host(c.sock, data)
            except OSError as e:
                trace(log, "TCP flow %s: host send failed: %s", self._fid(c), e)
                self._reset(c)
                return
        self._run(c, c.core.host_took(n, len(data), fin))

    def settle(self) -> None:
        """Drop acknowledged bytes now, not at the batch's end: before a migration freezes
        the sockets, whose receive queues must then start at the guest's last ACK. The
        connections C ran come back first, and stay with Python until fast_resume()."""
        self._fast_hold = True
        for c in list(self._fast_conns.values()):
            self._fast_take(c, act=False)
        for c in self._batch_end:
            self._discard(c, c.core.take_discard())

    def _discard(self, c: _Conn, n: int) -> None:
        """Drop ``n`` acknowledged bytes from the socket's receive queue."""
        left = n
        for _ in range(n // DISCARD_CHUNK + 2):
            if left <= 0:
                return
            try:
                got = c.sock.recv_into(self._scratch, min(left, DISCARD_CHUNK), socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if got <= 0:
                return
            left -= got

    # ---- guest data straight from the TX batch (zero copy) ----
    def take_batch(self, recs: core.PacketRecords) -> list[int]:
        """Send in-order guest data of established connections straight from the TX batch.

        ``recs`` is the classified batch; C cuts it into runs of in-order data segments (ACK,
        maybe PSH) of one connection (core.tcp_runs), so the work here is per run, not per
        frame: a run the connection's core accepts as it is (TcpConn.run_verdict) is written
        with one sendmsg() per connection from guest memory (core.send_payload_runs), its
        last ACK field and window processed by the core; bare ACKs are handled from their
        records (:meth:`_take_pure_ack`). Everything else (control segments, other
        protocols, anything out of order) is left for the copying path: returns those frame
        indices, in order. Once a connection has a frame left there, its later frames in the
        batch are left too, so its segments keep their order. Never raises: on any error the
        whole batch goes to the copying path.
        """
        batch = recs.batch
        try:
            runs, nruns, refs = core.tcp_runs(recs)
        except Exception:  # noqa: BLE001 - a broken batch is the copying path's business
            return list(range(batch.count))
        rest: list[int] = []
        groups: dict[int, tuple[_Conn, list[tuple[int, int, int]]]] = {}
        held: set[int] = set()
        for k in range(nruns):
            run = runs[k]
            first, count = run.first, run.count
            if run.other:                # not TCP at all: the other paths' business
                rest.extend(range(first, first + count))
                continue
            if not run.data:
                # A run of rising bare ACKs of one connection: its last one says it all.
                if not self._take_pure_ack(recs, first + count - 1, groups, held, count > 1):
                    rest.extend(range(first, first + count))
                continue
            flow = self._flows.lookup_packet(FlowType.TCP, recs, first)
            c = flow.data if flow is not None else None
            if c is not None and c.fast:
                self._fast_take(c)
            group = groups.get(flow.id) if flow is not None else None
            taken = group[1] if group is not None else []
            if c is None or flow.id in held or \
                    not c.core.run_verdict(run.seq, run.ack, sum(t[2] for t in taken)):
                if flow is not None:
                    held.add(flow.id)
                rest.extend(range(first, first + count))
                continue
            self._run(c, c.core.run_ack(run.ack, run.window))
            taken.append((first, count, run.bytes))
            if group is None:
                groups[flow.id] = (c, taken)
        for c, taken in groups.values():
            self._send_runs(c, batch, refs, taken)
        return rest

    def _take_pure_ack(self, recs: core.PacketRecords, i: int, groups: dict[int, object],
                       held: set[int], last_of_run: bool = False) -> bool:
        """Handle frame i here if it is a bare ACK of an established connection.

        The guest's ACKs for host data come one per RX batch or so; each would otherwise be
        copied out of the ring and parsed again. It gets exactly the copying path's handling
        (touch, then the core's segment rules, duplicate ACKs included) from the classified
        record. Not taken (returns False, and the connection's later frames wait too) when
        anything of the connection was left or taken earlier in this batch, so its segments
        keep their order.

        ``last_of_run``: frame i ends a run of bare ACKs each acknowledging more than the one
        before (core.tcp_runs), which it supersedes, unless it acknowledges data never sent:
        then each of the run's frames goes the copying path's way (False).
        """
        r = recs[i]                      # a well-formed TCP segment (not an "other" run)
        if r.payload_len or r.tcp_flags & 0x3F != ACK:
            return False
        flow = self._flows.lookup_packet(FlowType.TCP, recs, i)
        if flow is None:
            return False
        c: _Conn = flow.data  # type: ignore[assignment]
        if c.fast:
            self._fast_take(c)
        if flow.id in held or flow.id in groups or c.st.phase != Phase.ESTABLISHED or \
                (last_of_run and seq_diff(r.ack, c.st.seq_to_guest) > 0):
            held.add(flow.id)
            return False
        seg = TcpSegment(r.sport, r.dport, r.seq, r.ack, r.tcp_flags, r.window, None, None,
                         False, False, _NO_PAYLOAD)
        self._flows.touch(flow)
        try:
            self._run(c, c.core.segment(seg))
        except Exception:  # noqa: BLE001 - as in the demux: one bad frame, not the batch
            log.exception("error handling a TCP ACK from the guest")
        return True

    def _send_runs(self, c: _Conn, batch: core.TxBatch, refs: object,
                   taken: list[tuple[int, int, int]]) -> None:
        """One sendmsg() of a connection's runs (first frame, frames, bytes) of this batch."""
        if c.st.phase == Phase.CLOSED:
            return
        total = sum(t[2] for t in taken)
        try:
            n = core.send_payload_runs(c.fd, batch, refs, [(t[0], t[1]) for t in taken])
        except OSError as e:
            trace(log, "TCP flow %s: host send failed: %s", self._fid(c), e)
            self._reset(c)
            return
        if c.flow is not None:
            self._flows.touch(c.flow)
        self._run(c, c.core.host_took(n, total, False))

    def _at_batch_end(self, c: _Conn) -> None:
        """Have :meth:`_end_batch` look at ``c`` (once per batch, however often asked)."""
        if c.batch_end:
            return
        c.batch_end = True
        if not self._batch_end:
            self._loop.defer(self._end_batch)
        self._batch_end.append(c)

    def _end_batch(self) -> None:
        """Per connection, what the batch's segments made due: the acknowledged bytes leave
        the socket, then one ACK (unless data to the guest carried it meanwhile)."""
        conns, self._batch_end = self._batch_end, []
        for c in conns:
            c.batch_end = False
            self._run(c, c.core.batch_end())
            self._fast_offer(c)

    # ---- from the host ----
    def _on_sock(self, c: _Conn, mask: int) -> None:
        if c.fast:
            self._fast_take(c)      # mask may be FAST_EV_BACK alone: C handed it back
        self._sock_event(c, mask)
        self._fast_offer(c)

    def _sock_event(self, c: _Conn, mask: int) -> None:
        st = c.st
        if st.phase == Phase.CLOSED:
            return
        if mask & HUP:
            # Edge-triggered and never repeated: the end of the host's stream is noted in
            # whatever phase it comes (an inbound peer may write and close before the guest
            # answered our SYN). C never learns it, so a connection with it stays here.
            self._run(c, c.core.host_eof())
        if st.phase == Phase.CONNECTING:
            if not mask & (OUT | ERR | HUP):
                return
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                trace(log, "TCP flow %s: connect failed: %s", self._fid(c), os.strerror(err))
            self._run(c, c.core.connected(err))
            return
        if mask & ERR:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                trace(log, "TCP flow %s: socket error %s", self._fid(c), os.strerror(err))
                self._reset(c)
                return
        if st.phase != Phase.ESTABLISHED:
            return
        if mask & OUT and c.core.writable() and self._wnd_raw(c) > 0:
            self._run(c, [c.core.control(ACK)])
        if mask & (IN | HUP):
            self._host_to_guest(c)
        if c.flow is not None:
            self._flows.touch(c.flow)

    def _host_to_guest(self, c: _Conn) -> None:
        """Send host data the guest's window allows; FIN once the stream ended and is acked."""
        self._fast_offer(c)
        limit, actions = c.core.to_guest_limit(BYTES_PER_EVENT)
        if limit <= 0:
            self._run(c, actions)
            return
        st = c.st
        dst_mac, src_mac = self._macs()
        wnd_raw = self._wnd_raw(c)
        try:
            n, stop = self.datapath.host_to_guest(c.sock, c.tpl, dst_mac, src_mac,
                                                  st.seq_to_guest, st.seq_from_guest, wnd_raw,
                                                  c.core.seg_size, limit)
        except OSError as e:
            trace(log, "TCP flow %s: host receive failed: %s", self._fid(c), e)
            self._reset(c)
            return
        self._run(c, c.core.delivered(n, stop, wnd_raw))

    def rx_ready(self) -> None:
        """The guest added RX buffers: resume connections that were waiting for them."""
        waiting, self._rx_waiting = self._rx_waiting, []
        for c in waiting:
            c.core.rx_wait = False
            if c.st.phase == Phase.ESTABLISHED:
                self._host_to_guest(c)

    def _more(self, c: _Conn) -> None:
        c.core.more_due = False
        if c.st.phase == Phase.ESTABLISHED:
            self._host_to_guest(c)

    def _rewind(self, c: _Conn) -> None:
        """Peek offset back to zero, which must be the guest's last ACK (retransmission)."""
        self._discard(c, c.core.take_discard())
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        except OSError:
            pass

    # ---- the steady state in C (core.FastPath, csrc/fast_tcp.c) ----
    def _fast_offer(self, c: _Conn) -> None:
        """Look at ``c`` after this batch: C may run it if nothing else is pending then."""
        if c.fast or c.offered or self._fast is None or self._fast_hold:
            return
        c.offered = True
        if not self._offers:
            self._loop.defer(self._fast_give_offered)
        self._offers.append(c)

    def _fast_give_offered(self) -> None:
        offers, self._offers = self._offers, []
        for c in offers:
            c.offered = False
            if not c.fast and self._steady(c):
                self._fast_give(c)

    def _steady(self, c: _Conn) -> bool:
        """The core says steady (TcpConn.steady: a wait for RX buffers C takes over), no
        migration holds the sockets and no batch work is due."""
        return not self._fast_hold and not c.batch_end and c.core.steady()

    def _fast_give(self, c: _Conn) -> None:
        """Hand ``c``'s state to C (it stays in Python if C's table is full)."""
        fast = self._fast
        assert fast is not None
        st, s, k = c.st, self._fast_in, c.core
        s.tmpl = RingDataPath.template(c.tpl, *self._macs()).c[0]
        s.tmpl.seq, s.tmpl.ack = st.seq_to_guest, st.seq_from_guest
        s.tmpl.window, s.tmpl.mss = k.last_wnd_raw, k.seg_size
        s.una, s.acked_to_guest = st.seq_acked_by_guest, st.seq_acked_to_guest
        s.wnd_from_guest, s.wnd_to_guest = st.wnd_from_guest, st.wnd_to_guest
        s.ws_from_guest, s.ws_to_guest = st.ws_from_guest, st.ws_to_guest
        s.retries, s.fd, s.last_wnd_raw, s.local = k.retries, c.fd, k.last_wnd_raw, c.local
        s.rto, s.rto0, s.deadline = k.rto, self._rto0, c.deadline or 0.0
        s.timer_at = c.timer.deadline if c.timer is not None else 0.0
        s.rx_wait = k.rx_wait           # C waits for the guest's RX kick in its place
        try:
            given = fast.add_tcp(s)
        except core.CoreError as e:
            log.warning("TCP flow %s stays in Python: %s", self._fid(c), e)
            return
        if given:
            c.fast = True
            self._fast_conns[c.fd] = c
            if c.core.rx_wait:
                c.core.rx_wait = False
                self._rx_waiting.remove(c)

    def _fast_take(self, c: _Conn, act: bool = True) -> None:
        """Take ``c``'s state back from C; with ``act``, do what C left for Python."""
        c.fast = False
        self._fast_conns.pop(c.fd, None)
        fast, s = self._fast, self._fast_out
        if fast is None or not fast.remove_tcp(c.fd, s):
            return
        st, k = c.st, c.core
        st.seq_to_guest, st.seq_from_guest = s.tmpl.seq, s.tmpl.ack
        st.seq_acked_by_guest, st.seq_acked_to_guest = s.una, s.acked_to_guest
        st.wnd_from_guest, st.wnd_to_guest = s.wnd_from_guest, s.wnd_to_guest
        k.last_wnd_raw, k.retries, k.rto = s.last_wnd_raw, s.retries, s.rto
        k.stats[S_TO_HOST] += s.to_host
        k.stats[S_TO_GUEST] += s.to_guest
        self.fast_bytes += s.to_host + s.to_guest
        self.datapath.frames_sent += s.segs
        if s.events and c.flow is not None:
            self._flows.touch(c.flow)
        if s.deadline:
            self._arm(c, s.deadline - time.monotonic())   # lazily: a later timer moves
        else:
            self._disarm(c)
        why = s.back
        if not act or st.phase != Phase.ESTABLISHED:
            return
        if why & core.FAST_BACK_ERR:
            trace(log, "TCP flow %s: host send failed", self._fid(c))
            self._reset(c)
            return
        self._run(c, k.steady_back(bool(why & core.FAST_BACK_FULL),
                                   bool(why & core.FAST_BACK_ACK),
                                   bool(why & core.FAST_BACK_H2G)))

    def fast_release(self) -> None:
        """Take every connection back from C (its templates are about to go stale)."""
        for c in list(self._fast_conns.values()):
            self._fast_take(c)

    def fast_resume(self) -> None:
        """After a migration that did not happen (or a rollback): C may run connections
        again, from their next event on."""
        self._fast_hold = False

    def _fast_activity(self, flow: Flow) -> bool:
        """Flow expiry's probe: traffic C moved for the connection since last asked."""
        c: _Conn = flow.data  # type: ignore[assignment]
        if not c.fast or self._fast is None or not self._fast.tcp_events(c.fd):
            return False
        self._flows.touch(flow)
        return True

    # ---- closing ----
    def _fid(self, c: _Conn) -> str:
        return str(c.flow.id) if c.flow is not None else "?"

    def _reset(self, c: _Conn) -> None:
        """RST to the guest and to the host peer, then forget the connection."""
        if c.fast:
            self._fast_take(c, act=False)
        st = c.st
        if st.phase not in (Phase.CONNECTING, Phase.CLOSED):
            self._send_control(c, *c.core.control(RST | ACK)[1:])
        elif st.phase == Phase.CONNECTING:
            dst_mac, src_mac = self._macs()
            self._to_guest([c.tpl.control(dst_mac, src_mac, 0, st.seq_from_guest, RST | ACK,
                                          0)])
        self._close(c, rst_host=True)

    def _close(self, c: _Conn, rst_host: bool) -> None:
        if c.fast:
            self._fast_take(c, act=False)   # before the socket (and its fd number) goes
        st = c.st
        if st.phase == Phase.CLOSED:
            return
        st.phase = Phase.CLOSED
        self.resets += 1 if rst_host else 0
        log.debug("TCP flow %s closed%s: %d bytes to host, %d to guest; %d timeouts, %d fast "
                  "retransmits, %d socket-full, %d RX-full, %d out of order", self._fid(c),
                  " by RST" if rst_host else "", *c.core.stats)
        c.deadline = None
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        self._loop.remove(c.fd)
        due, c.core.discard_due = c.core.discard_due, 0
        if due and not rst_host:
            self._discard(c, due)           # unread data left at close() would reset the peer
        if rst_host:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass
        c.sock.close()
        if c.flow is not None:
            self._flows.close(c.flow)

    def _on_close(self, flow: Flow) -> None:
        """Flow table close (idle expiry, close_all): reset both sides if still open."""
        c: _Conn = flow.data  # type: ignore[assignment]
        if c.st.phase != Phase.CLOSED:
            self._reset(c)

    def close_all(self) -> int:
        """Reset every TCP connection (the guest went away); listeners stay. Returns count."""
        return self._flows.close_types((FlowType.TCP,))

    # ---- migration ----
    def export(self, flow: Flow) -> TcpState:
        """A copy of the flow's guest-side state record."""
        c: _Conn = flow.data  # type: ignore[assignment]
        if c.fast:
            self._fast_take(c, act=False)
        self._discard(c, c.core.take_discard())  # the queue must start at SND.UNA (settle)
        return replace(c.st)

    def adopt(self, state: TcpState, sock: socket.socket) -> Flow:
        """Rebuild a connection from ``state`` around a connected host socket.

        The socket's receive queue must start at seq_acked_by_guest (unacknowledged data is
        still queued there); sending resumes from the guest's last ACK (in-flight frames may
        have been lost with the old guest link) with the peek offset at zero. Raises
        FlowRefused if the tuple is taken or the table is full.
        """
        st = replace(state)
        if st.phase != Phase.ESTABLISHED:
            raise FlowRefused(f"cannot adopt a connection in phase {st.phase!r}")
        sock.setblocking(False)
        self._set_bufsize(sock)     # the restore may have forced bigger ones: the next hop
        conn = self._new_core(st)
        resume = conn.adopted()
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        local_addr, local_port = _addr_of(sock.getsockname())
        peer_addr, peer_port = _addr_of(sock.getpeername())
        c = _Conn(conn, sock, _peer_is_local(peer_addr, local_addr))
        tap = FlowSide(Pif.TAP, st.guest_addr, st.guest_port, st.our_addr, st.our_port)
        host = FlowSide(Pif.HOST, peer_addr, peer_port, local_addr, local_port)
        if st.inbound:
            c.flow = self._flows.new(FlowType.TCP, host, tap, self._idle_timeout,
                                     self._on_close, c)
        else:
            c.flow = self._flows.new(FlowType.TCP, tap, host, self._idle_timeout,
                                     self._on_close, c)
        try:
            self._loop.add(c.fd, IN | OUT | ERR | HUP | ET, lambda m, c=c: self._on_sock(c, m))
        except OSError:
            st.phase = Phase.CLOSED          # the caller owns and closes the socket
            self._flows.close(c.flow)
            raise
        self._run(c, resume)
        self._loop.defer(lambda: self._resync(c))
        return c.flow

    def reset_guest_end(self, state: TcpState) -> None:
        """A migrated connection that could not be rebuilt here: RST to the guest's end now,
        rather than on its next segment (an application that only waits would never learn).
        Our SND.NXT is the guest's RCV.NXT or within its window (then it answers with a
        challenge ACK, which meets no flow and gets the RST it needs)."""
        tpl = FrameTemplate(state.our_addr, state.guest_addr, state.our_port, state.guest_port)
        dst_mac, src_mac = self._macs()
        self._to_guest([tpl.control(dst_mac, src_mac, state.seq_to_guest, state.seq_from_guest,
                                    RST | ACK, 0)])

    def _resync(self, c: _Conn) -> None:
        """After adoption: tell the guest our window, resend what it has not acknowledged."""
        if c.st.phase == Phase.ESTABLISHED:
            self._run(c, [c.core.control(ACK), (A_TO_GUEST,)])

    def connections(self) -> Iterable[Flow]:
        """Every open TCP flow."""
        return [f for f in self._flows if f.type == FlowType.TCP]

    # ---- port forwarding ----
    def start_forwards(self, rules: PortForwards | Iterable[Forward]) -> int:
        """Open the -t listening sockets; returns how many were bound (failures logged)."""
        forwards = rules.forwards if isinstance(rules, PortForwards) else tuple(rules)
        bound = failed = 0
        for rule in forwards:
            for port in range(rule.first, rule.last + 1):
                for version in self._rule_versions(rule):
                    try:
                        self._listen(rule, version, port)
                        bound += 1
                    except OSError as e:
                        failed += 1
                        log.debug("TCP forward: cannot listen on port %d (IPv%d): %s",
                                  port, version, e)
        if failed:
            log.warning("TCP forwarding: %d of %d listening sockets could not be bound",
                        failed, bound + failed)
        return bound

    def _rule_versions(self, rule: Forward) -> list[int]:
        if rule.bind_addr is not None:
            fam = fwd.family_view(self._view, rule.bind_addr.version)
            return [rule.bind_addr.version] if fam is not None else []
        return [v for v, fam in ((4, self._view.ip4), (6, self._view.ip6)) if fam is not None]

    def _listen(self, rule: Forward, version: int, port: int) -> None:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        addr = rule.bind_addr if rule.bind_addr is not None else fwd.unspecified(version)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if rule.ifname is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, rule.ifname.encode())
            sock.bind(_sockaddr(addr, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        lst = _Listener(sock, version, addr, port, rule.target(port))
        self._listeners.append(lst)
        self._loop.add(sock.fileno(), IN, lambda _m, l=lst: self._on_listener(l))

    def stop_forwards(self) -> None:
        """Close every listening socket (connections already accepted stay)."""
        listeners, self._listeners = self._listeners, []
        for lst in listeners:
            self._loop.remove(lst.sock.fileno())
            lst.sock.close()

    @property
    def listeners(self) -> int:
        """How many -t listening sockets are open."""
        return len(self._listeners)

    def _on_listener(self, lst: _Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                trace(log, "TCP forward port %d: accept failed: %s", lst.port, e)
                return
            self._new_inbound(lst, sock, peer)

    def _new_inbound(self, lst: _Listener, sock: socket.socket, peer: tuple[object, ...]) -> None:
        sock.setblocking(False)
        self._set_bufsize(sock)
        flow = None
        try:
            peer_addr, peer_port = _addr_of(peer)
            local_addr, local_port = _addr_of(sock.getsockname())
            src = fwd.nat_from_host(self._view, peer_addr, peer_port) if self._view.tcp \
                else None
            dst = fwd.guest_address(self._view, self._guest, lst.version)
            if src is None or dst is None or src.version != dst.version:
                raise FlowRefused("no guest address for this family")
            st = TcpState(version=dst.version, guest_addr=dst, guest_port=lst.target_port,
                          our_addr=src, our_port=peer_port, inbound=True, phase=Phase.SYN_SENT)
            isn = self._isn(src, peer_port, dst, lst.target_port)
            st.isn_ours = st.seq_to_guest = st.seq_acked_by_guest = isn
            st.ws_to_guest = 0                   # until the guest's SYN-ACK says otherwise
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            c = _Conn(self._new_core(st), sock, _peer_is_local(peer_addr, local_addr))
            tap = FlowSide(Pif.TAP, dst, lst.target_port, src, peer_port)
            host = FlowSide(Pif.HOST, peer_addr, peer_port, local_addr, local_port)
            flow = self._flows.new(FlowType.TCP, host, tap, self._idle_timeout, self._on_close,
                                   c)
        except (FlowRefused, OSError, ValueError) as e:
            trace(log, "TCP forward port %d: connection refused: %s", lst.port, e)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass
            sock.close()
            return
        c.flow = flow
        self._loop.add(c.fd, IN | OUT | ERR | HUP | ET, lambda m, c=c: self._on_sock(c, m))
        self._run(c, c.core.syn())
        trace(log, "new forwarded TCP flow %r", flow)
