# SPDX-License-Identifier: MIT
"""The hand-over of steady TCP connections to C and back (csrc/fast_tcp.c).

Theory of operation: a connection whose core says it is steady (TcpConn.steady) after the
batch that left it so is registered with the fast path with its state (give); C then runs its
in-order data and ACKs inside the loop's wait. Every Python entry point for the connection
(its socket events C reports, its frames C leaves, its timer, closing, export) first takes
the state back (take), including what C left for Python to do; it is offered again once
steady. A migration holds every connection in Python (hold) until it is over.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from passt_py import core
from passt_py.config.log import trace
from passt_py.flow import Flow, FlowType
from passt_py.tcp.connection import Connection
from passt_py.tcp.conn import S_TO_GUEST, S_TO_HOST
from passt_py.tcp.ring import RingDataPath
from passt_py.tcp.state import Phase

if TYPE_CHECKING:
    from passt_py.tcp.handler import TcpHandler

log = logging.getLogger(__name__)


class FastHandover:
    """Which connections C runs, and the moves of their state between C and the cores."""

    def __init__(self, handler: TcpHandler, fast: core.FastPath | None) -> None:
        self._h = handler
        self.path = fast                        # None: everything stays in Python
        self.conns: dict[int, Connection] = {}       # by fd: the connections C runs
        self._offers: list[Connection] = []
        self.hold = False                       # a migration froze the sockets
        if fast is not None:
            self._in = fast.tcp_state()
            self._out = fast.tcp_state()
            handler.flows.set_activity_probe(FlowType.TCP, self._activity)

    def offer(self, c: Connection) -> None:
        """Look at ``c`` after this batch: C may run it if nothing else is pending then."""
        if c.fast or c.offered or self.path is None or self.hold:
            return
        c.offered = True
        if not self._offers:
            self._h.loop.defer(self._give_offered)
        self._offers.append(c)

    def _give_offered(self) -> None:
        offers, self._offers = self._offers, []
        for c in offers:
            c.offered = False
            if not c.fast and self._steady(c):
                self.give(c)

    def _steady(self, c: Connection) -> bool:
        """The core says steady (TcpConn.steady: a wait for RX buffers C takes over), no
        migration holds the sockets and no batch work is due."""
        return not self.hold and not c.batch_end and c.core.steady()

    def give(self, c: Connection) -> None:
        """Hand ``c``'s state to C (it stays in Python if C's table is full)."""
        fast = self.path
        assert fast is not None
        st, s, k = c.st, self._in, c.core
        s.tmpl = RingDataPath.template(c.tpl, *self._h.macs()).c[0]
        s.tmpl.seq, s.tmpl.ack = st.seq_to_guest, st.seq_from_guest
        s.tmpl.window, s.tmpl.mss = k.last_wnd_raw, k.seg_size
        s.una, s.acked_to_guest = st.seq_acked_by_guest, st.seq_acked_to_guest
        s.wnd_from_guest, s.wnd_to_guest = st.wnd_from_guest, st.wnd_to_guest
        s.ws_from_guest, s.ws_to_guest = st.ws_from_guest, st.ws_to_guest
        s.retries, s.fd, s.last_wnd_raw, s.local = k.retries, c.fd, k.last_wnd_raw, c.local
        s.rto, s.rto0, s.deadline = k.rto, self._h.rto0, c.deadline or 0.0
        s.timer_at = c.timer.deadline if c.timer is not None else 0.0
        s.rx_wait = k.rx_wait           # C waits for the guest's RX kick in its place
        try:
            given = fast.add_tcp(s)
        except core.CoreError as e:
            log.warning("TCP flow %s stays in Python: %s", self._h.fid(c), e)
            return
        if given:
            c.fast = True
            self.conns[c.fd] = c
            if c.core.rx_wait:
                c.core.rx_wait = False
                self._h.rx_waiting.remove(c)

    def take(self, c: Connection, act: bool = True) -> None:
        """Take ``c``'s state back from C; with ``act``, do what C left for Python."""
        c.fast = False
        self.conns.pop(c.fd, None)
        fast, s = self.path, self._out
        if fast is None or not fast.remove_tcp(c.fd, s):
            return
        st, k = c.st, c.core
        st.seq_to_guest, st.seq_from_guest = s.tmpl.seq, s.tmpl.ack
        st.seq_acked_by_guest, st.seq_acked_to_guest = s.una, s.acked_to_guest
        st.wnd_from_guest, st.wnd_to_guest = s.wnd_from_guest, s.wnd_to_guest
        k.last_wnd_raw, k.retries, k.rto = s.last_wnd_raw, s.retries, s.rto
        k.stats[S_TO_HOST] += s.to_host
        k.stats[S_TO_GUEST] += s.to_guest
        self._h.fast_bytes += s.to_host + s.to_guest
        self._h.datapath.frames_sent += s.segs
        if s.events and c.flow is not None:
            self._h.flows.touch(c.flow)
        if s.deadline:
            self._h.timers.arm(c, s.deadline - time.monotonic())   # lazily: a later timer moves
        else:
            self._h.timers.disarm(c)
        why = s.back
        if not act or st.phase != Phase.ESTABLISHED:
            return
        if why & core.FAST_BACK_ERR:
            trace(log, "TCP flow %s: host send failed", self._h.fid(c))
            self._h.reset(c)
            return
        self._h.run(c, k.steady_back(bool(why & core.FAST_BACK_FULL),
                                   bool(why & core.FAST_BACK_ACK),
                                   bool(why & core.FAST_BACK_H2G)))

    def _activity(self, flow: Flow) -> bool:
        """Flow expiry's probe: traffic C moved for the connection since last asked."""
        c: Connection = flow.data  # type: ignore[assignment]
        if not c.fast or self.path is None or not self.path.tcp_events(c.fd):
            return False
        self._h.flows.touch(flow)
        return True

    def release(self) -> None:
        """Take every connection back from C (its templates are about to go stale)."""
        for c in list(self.conns.values()):
            self.take(c)
