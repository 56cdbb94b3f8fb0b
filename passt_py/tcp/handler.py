# SPDX-License-Identifier: MIT
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

Who does what: passt_py.tcp.conn holds each connection's rules (TcpConn: events in, actions
out) and its state (passt_py.tcp.state.TcpState, what migration carries); this handler is the
adapter that carries the actions out and feeds the core what the sockets and rings did. Its
helpers: passt_py.tcp.open (connections from a guest SYN, a -t accept or a migration),
passt_py.tcp.listen (the -t sockets), passt_py.tcp.timers, passt_py.tcp.batch (guest data
straight from the TX batch) and passt_py.tcp.fast (the hand-over to C's steady state).

Where the bytes go (Python decides per run of segments or per event, never per byte):
- guest -> host: the service hands each TX batch to :meth:`TcpHandler.take_batch` first; C
  cuts it into runs of in-order data segments per connection, and those the core takes are
  written with one sendmsg() per connection straight from guest memory
  (core.send_payload_runs); every other frame (handshake, FIN, RST, out of order, other
  protocols) is copied out and reaches :meth:`TcpHandler.from_guest` through the demux, whose
  payload goes out by ``datapath.send_to_host``.
- host -> guest: ``datapath.host_to_guest`` (passt_py.tcp.copy.TcpDataPath): the service uses
  passt_py.tcp.ring.RingDataPath (C peeks into the guest's RX buffers and writes headers,
  stopping when they run out: the connection then waits for the guest's RX kick, rx_ready()),
  with or without a capture (-p: the rings record what they carry, whatever path it took);
  tests without rings use passt_py.tcp.copy.CopyingDataPath (frames through the link).
- the steady state in C: with the service's fast path (core.FastPath), a connection whose
  core says steady (TcpConn.steady) is handed to C after the batch that left it so
  (csrc/fast_tcp.c runs the same rules inside the loop's wait, checked against the core by
  tests/test_tcp_conn_differential.py). Every Python entry point for it first takes its state
  back (FastHandover.take), including what C left for Python to do.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from typing import Callable, Iterable

from passt_py import core
from passt_py.config.log import trace
from passt_py.config.portspec import Forward, PortForwards
from passt_py.flow import Flow, FlowSide, FlowTable, FlowType, Pif
from passt_py.link.ip import IpPacket
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import ERR, HUP, IN, OUT, EventLoop
from passt_py.tcp.batch import BatchTaker
from passt_py.tcp.conn import (A_ARM, A_BATCH_END, A_CLOSE, A_CONTROL, A_DISARM, A_DISCARD,
                               A_MORE, A_RESET, A_RETRANSMIT, A_REWIND, A_RX_WAIT, A_SEND,
                               A_SHUT_WR, A_TO_GUEST, A_TRACE, MAX_RETRIES, MAX_WINDOW,
                               RTO_INITIAL, WND_NONE, WND_SYN, WS_OURS, Actions, TcpConn)
from passt_py.tcp.connection import Connection
from passt_py.tcp.copy import CopyingDataPath, TcpDataPath
from passt_py.tcp.fast import FastHandover
from passt_py.tcp.listen import TcpListeners
from passt_py.tcp.open import TcpOpener
from passt_py.tcp.ring import RingDataPath
from passt_py.tcp.seg import ACK, RST, SYN, TcpSegment, parse_tcp, rst_reply
from passt_py.tcp.sockets import LINGER0, SO_PEEK_OFF
from passt_py.tcp.state import Phase, TcpState
from passt_py.tcp.timers import TcpTimers

__all__ = ["BYTES_PER_EVENT", "MAX_WINDOW", "Phase", "TcpHandler", "TcpState", "WS_OURS"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0      # passt's SYN_TIMEOUT: host connect or guest SYN-ACK
IDLE_TIMEOUT = 7200.0       # passt's ACT_TIMEOUT: reset after two idle hours
BYTES_PER_EVENT = 1 << 20   # host -> guest bytes per connection and event (then deferred)
DISCARD_CHUNK = 1 << 20


class TcpHandler:
    """TCP connections between the guest and host sockets, plus -t forwarding listeners."""

    def __init__(self, loop: EventLoop, view: NetView, guest: GuestState, flows: FlowTable,
                 to_guest: Callable[[list[bytes]], None], datapath: TcpDataPath | None = None,
                 rto: float = RTO_INITIAL, max_retries: int = MAX_RETRIES,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, fast: core.FastPath | None = None) -> None:
        self.loop = loop
        self.view = view
        self.guest = guest
        self.flows = flows
        self.to_guest = to_guest
        self.datapath: TcpDataPath = datapath or CopyingDataPath(to_guest)
        self.rto0 = rto
        self._max_retries = max_retries
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._scratch = bytearray(DISCARD_CHUNK)
        self._batch_end: list[Connection] = []      # work due at the end of this loop batch
        self.rx_waiting: list[Connection] = []
        # Established connections whose steady state C runs (csrc/fast_tcp.c): only with the
        # ring data path, whose RX ring and header templates C shares.
        self.handover = FastHandover(self, fast if isinstance(self.datapath, RingDataPath)
                                     else None)
        self.opener = TcpOpener(self)
        self._listeners = TcpListeners(self)
        self.timers = TcpTimers(self)
        self._batch = BatchTaker(self)
        self.fast_bytes = 0             # bytes C moved (both ways) for connections it ran
        self.dropped = 0
        self.resets = 0
        self.retransmits = 0

    # ---- helpers ----

    def our_mss(self, version: int) -> int:
        return max(536, min(0xFFFF, self.view.mtu - (40 if version == 4 else 60)))

    def new_core(self, st: TcpState) -> TcpConn:
        return TcpConn(st, self.our_mss(st.version), self.rto0, self._max_retries)

    def macs(self) -> tuple[bytes, bytes]:
        return self.guest.mac, self.view.our_mac

    def _send_window(self, c: Connection) -> int:
        """The window we offer the guest: what the host peer's receive window allows.

        As passt does: a peer on this host takes data as fast as it reads, so its own window
        (TCP_INFO) is the whole limit; a remote peer's data waits in our send buffer, so its
        free space bounds the window too. A send buffer as the only bound would throttle a
        local stream to a buffer's worth per round trip (the guest waits for our ACK), and a
        socket that refuses part of a batch costs the guest a resend, nothing more.
        """
        return core.tcp_send_window(c.fd, c.local, MAX_WINDOW)

    def wnd_raw(self, c: Connection, space: int | None = None) -> int:
        """The window field to send for ``space`` bytes (None: what the socket allows, or
        what the core fixes); starts the send-buffer poll when it closes."""
        if space is None:
            space = c.core._space()
            if space is None:
                space = self._send_window(c)
        raw = c.core.window_raw(space)
        if c.core.wants_window_poll(raw):
            self.timers.poll_window_later(c)
        return raw

    def _send_control(self, c: Connection, flags: int, seq: int, ack: int, opts: bytes,
                      wnd: int | None) -> None:
        """One segment without payload (ACK, SYN, FIN, RST...) to the guest."""
        if wnd == WND_NONE:
            raw = 0
        elif wnd == WND_SYN:
            raw = min(0xFFFF, self._send_window(c))
        else:
            raw = self.wnd_raw(c, wnd)
        c.core.control_sent(flags, ack, raw)
        dst_mac, src_mac = self.macs()
        self.to_guest([c.tpl.control(dst_mac, src_mac, seq, ack, flags, raw, opts)])

    def run(self, c: Connection, actions: Actions) -> None:
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
                self.timers.arm(c, act[1])
            elif kind == A_DISARM:
                self.timers.disarm(c)
            elif kind == A_TO_GUEST:
                self.host_to_guest(c)
            elif kind == A_SEND:
                self._send_to_host(c, act[1], act[2])
            elif kind == A_DISCARD:
                self._discard(c, act[1])
            elif kind == A_REWIND:
                self._rewind(c)
            elif kind == A_CLOSE:
                self._close(c, rst_host=act[1])
            elif kind == A_RESET:
                self.reset(c)
            elif kind == A_SHUT_WR:
                try:
                    c.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            elif kind == A_RX_WAIT:
                self.rx_waiting.append(c)
            elif kind == A_MORE:
                self.loop.defer(lambda: self._more(c))
            elif kind == A_RETRANSMIT:
                self.retransmits += 1
            elif kind == A_TRACE:
                trace(log, "TCP flow %s: %s", self.fid(c), act[1])

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
        flow = self.flows.lookup(FlowType.TCP, tap)
        if flow is None:
            if seg.flags & (SYN | ACK | RST) == SYN:
                self.opener.outbound(tap, seg)
            else:
                self._rst_unknown(pkt, seg)
            return
        c: Connection = flow.data  # type: ignore[assignment]
        if c.fast:
            self.handover.take(c)
        self.flows.touch(flow)
        self.run(c, c.core.segment(seg))

    def _rst_unknown(self, pkt: IpPacket, seg: TcpSegment) -> None:
        frame = rst_reply(pkt.dst, pkt.src, seg, *self.macs())
        if frame is not None:
            self.to_guest([frame])

    def _send_to_host(self, c: Connection, data: memoryview, fin: bool) -> None:
        """Guest payload the core accepted, to the socket (the core learns what it took)."""
        n = 0
        if data:
            try:
                n = self.datapath.send_to_host(c.sock, data)
            except OSError as e:
                trace(log, "TCP flow %s: host send failed: %s", self.fid(c), e)
                self.reset(c)
                return
        self.run(c, c.core.host_took(n, len(data), fin))

    def settle(self) -> None:
        """Drop acknowledged bytes now, not at the batch's end: before a migration freezes
        the sockets, whose receive queues must then start at the guest's last ACK. The
        connections C ran come back first, and stay with Python until fast_resume()."""
        self.handover.hold = True
        for c in list(self.handover.conns.values()):
            self.handover.take(c, act=False)
        for c in self._batch_end:
            self._discard(c, c.core.take_discard())

    def _discard(self, c: Connection, n: int) -> None:
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

    def _at_batch_end(self, c: Connection) -> None:
        """Have :meth:`_end_batch` look at ``c`` (once per batch, however often asked)."""
        if c.batch_end:
            return
        c.batch_end = True
        if not self._batch_end:
            self.loop.defer(self._end_batch)
        self._batch_end.append(c)

    def _end_batch(self) -> None:
        """Per connection, what the batch's segments made due: the acknowledged bytes leave
        the socket, then one ACK (unless data to the guest carried it meanwhile)."""
        conns, self._batch_end = self._batch_end, []
        for c in conns:
            c.batch_end = False
            self.run(c, c.core.batch_end())
            self.handover.offer(c)

    # ---- from the host ----
    def on_sock(self, c: Connection, mask: int) -> None:
        if c.fast:
            self.handover.take(c)      # mask may be FAST_EV_BACK alone: C handed it back
        self._sock_event(c, mask)
        self.handover.offer(c)

    def _sock_event(self, c: Connection, mask: int) -> None:
        st = c.st
        if st.phase == Phase.CLOSED:
            return
        if mask & HUP:
            # Edge-triggered and never repeated: the end of the host's stream is noted in
            # whatever phase it comes (an inbound peer may write and close before the guest
            # answered our SYN). C never learns it, so a connection with it stays here.
            self.run(c, c.core.host_eof())
        if st.phase == Phase.CONNECTING:
            if not mask & (OUT | ERR | HUP):
                return
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                trace(log, "TCP flow %s: connect failed: %s", self.fid(c), os.strerror(err))
            self.run(c, c.core.connected(err))
            return
        if mask & ERR:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                trace(log, "TCP flow %s: socket error %s", self.fid(c), os.strerror(err))
                self.reset(c)
                return
        if st.phase != Phase.ESTABLISHED:
            return
        if mask & OUT and c.core.writable() and self.wnd_raw(c) > 0:
            self.run(c, [c.core.control(ACK)])
        if mask & (IN | HUP):
            self.host_to_guest(c)
        if c.flow is not None:
            self.flows.touch(c.flow)

    def host_to_guest(self, c: Connection) -> None:
        """Send host data the guest's window allows; FIN once the stream ended and is acked."""
        self.handover.offer(c)
        limit, actions = c.core.to_guest_limit(BYTES_PER_EVENT)
        if limit <= 0:
            self.run(c, actions)
            return
        st = c.st
        dst_mac, src_mac = self.macs()
        wnd_raw = self.wnd_raw(c)
        try:
            n, stop = self.datapath.host_to_guest(c.sock, c.tpl, dst_mac, src_mac,
                                                  st.seq_to_guest, st.seq_from_guest, wnd_raw,
                                                  c.core.seg_size, limit)
        except OSError as e:
            trace(log, "TCP flow %s: host receive failed: %s", self.fid(c), e)
            self.reset(c)
            return
        self.run(c, c.core.delivered(n, stop, wnd_raw))

    def rx_ready(self) -> None:
        """The guest added RX buffers: resume connections that were waiting for them."""
        waiting, self.rx_waiting = self.rx_waiting, []
        for c in waiting:
            c.core.rx_wait = False
            if c.st.phase == Phase.ESTABLISHED:
                self.host_to_guest(c)

    def _more(self, c: Connection) -> None:
        c.core.more_due = False
        if c.st.phase == Phase.ESTABLISHED:
            self.host_to_guest(c)

    def _rewind(self, c: Connection) -> None:
        """Peek offset back to zero, which must be the guest's last ACK (retransmission)."""
        self._discard(c, c.core.take_discard())
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        except OSError:
            pass

    # ---- the steady state in C (core.FastPath, csrc/fast_tcp.c) ----

    def fast_release(self) -> None:
        """Take every connection back from C (its templates are about to go stale)."""
        self.handover.release()

    def fast_resume(self) -> None:
        """After a migration that did not happen (or a rollback): C may run connections
        again, from their next event on."""
        self.handover.hold = False

    def take_batch(self, recs: core.PacketRecords) -> list[int]:
        """Send what it can of a classified TX batch straight from guest memory; returns the
        indices of the frames left for the copying path (passt_py.tcp.batch)."""
        return self._batch.take(recs)

    # ---- closing ----
    def fid(self, c: Connection) -> str:
        return str(c.flow.id) if c.flow is not None else "?"

    def reset(self, c: Connection) -> None:
        """RST to the guest and to the host peer, then forget the connection."""
        if c.fast:
            self.handover.take(c, act=False)
        st = c.st
        if st.phase not in (Phase.CONNECTING, Phase.CLOSED):
            self._send_control(c, *c.core.control(RST | ACK)[1:])
        elif st.phase == Phase.CONNECTING:
            dst_mac, src_mac = self.macs()
            self.to_guest([c.tpl.control(dst_mac, src_mac, 0, st.seq_from_guest, RST | ACK,
                                          0)])
        self._close(c, rst_host=True)

    def _close(self, c: Connection, rst_host: bool) -> None:
        if c.fast:
            self.handover.take(c, act=False)   # before the socket (and its fd number) goes
        st = c.st
        if st.phase == Phase.CLOSED:
            return
        st.phase = Phase.CLOSED
        self.resets += 1 if rst_host else 0
        log.debug("TCP flow %s closed%s: %d bytes to host, %d to guest; %d timeouts, %d fast "
                  "retransmits, %d socket-full, %d RX-full, %d out of order", self.fid(c),
                  " by RST" if rst_host else "", *c.core.stats)
        c.deadline = None
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        self.loop.remove(c.fd)
        due, c.core.discard_due = c.core.discard_due, 0
        if due and not rst_host:
            self._discard(c, due)           # unread data left at close() would reset the peer
        if rst_host:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            except OSError:
                pass
        c.sock.close()
        if c.flow is not None:
            self.flows.close(c.flow)

    def on_close(self, flow: Flow) -> None:
        """Flow table close (idle expiry, close_all): reset both sides if still open."""
        c: Connection = flow.data  # type: ignore[assignment]
        if c.st.phase != Phase.CLOSED:
            self.reset(c)

    def close_all(self) -> int:
        """Reset every TCP connection (the guest went away); listeners stay. Returns count."""
        return self.flows.close_types((FlowType.TCP,))

    # ---- migration ----
    def export(self, flow: Flow) -> TcpState:
        """A copy of the flow's guest-side state record."""
        c: Connection = flow.data  # type: ignore[assignment]
        if c.fast:
            self.handover.take(c, act=False)
        self._discard(c, c.core.take_discard())  # the queue must start at SND.UNA (settle)
        return replace(c.st)

    def resync(self, c: Connection) -> None:
        """After adoption: tell the guest our window, resend what it has not acknowledged."""
        if c.st.phase == Phase.ESTABLISHED:
            self.run(c, [c.core.control(ACK), (A_TO_GUEST,)])

    def connections(self) -> Iterable[Flow]:
        """Every open TCP flow."""
        return [f for f in self.flows if f.type == FlowType.TCP]

    # ---- port forwarding (passt_py.tcp.listen) ----
    def start_forwards(self, rules: PortForwards | Iterable[Forward]) -> int:
        """Open the -t listening sockets; returns how many were bound (failures logged)."""
        return self._listeners.start(rules)

    def stop_forwards(self) -> None:
        """Close every listening socket (connections already accepted stay)."""
        self._listeners.stop()

    @property
    def listeners(self) -> int:
        """How many -t listening sockets are open."""
        return self._listeners.count()
