# SPDX-License-Identifier: MIT
"""TCP's timers: one per connection, re-armed lazily, and the send-buffer poll.

Theory of operation: a connection has one deadline (connect, handshake, retransmission or
probe) and at most one loop timer. Arming earlier replaces the timer; arming later only moves
the deadline, and the timer re-arms itself when it fires early. When the deadline passes, the
connection core decides what it means (TcpConn.timeout). While the window we advertised is
closed, the send buffer is polled (the socket reports write space only after a failed write).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from passt_py.tcp.connection import Connection
from passt_py.tcp.seg import ACK
from passt_py.tcp.state import Phase

if TYPE_CHECKING:
    from passt_py.tcp.handler import TcpHandler

WND_POLL = 0.01             # send-buffer poll while our advertised window is closed


class TcpTimers:
    """Arms, moves and fires the connections' timers for the handler."""

    def __init__(self, handler: TcpHandler) -> None:
        self._h = handler

    def arm(self, c: Connection, delay: float) -> None:
        """The connection's deadline ``delay`` from now."""
        deadline = time.monotonic() + delay
        c.deadline = deadline
        c.core.armed = True
        if c.timer is None or c.timer.deadline > deadline + 0.001:
            if c.timer is not None:
                c.timer.cancel()
            c.timer = self._h.loop.call_later(delay, lambda: self._on_timer(c))

    def disarm(self, c: Connection) -> None:
        """No deadline: the timer, if any, finds nothing to do."""
        c.deadline = None
        c.core.armed = False

    def _on_timer(self, c: Connection) -> None:
        """The loop timer fired: early (the deadline moved) re-arms, else the core decides."""
        if c.fast:
            self._h.handover.take(c)      # while c.timer is this one: no second timer armed
        c.timer = None
        self._h.handover.offer(c)
        if c.st.phase == Phase.CLOSED or c.deadline is None:
            return
        now = time.monotonic()
        if c.deadline > now + 0.0005:
            c.timer = self._h.loop.call_later(c.deadline - now, lambda: self._on_timer(c))
            return
        c.deadline = None
        self._h.run(c, c.core.timeout())

    def _poll_window(self, c: Connection) -> None:
        """Our window was closed: tell the guest as soon as the send buffer drains."""
        c.core.wnd_poll = False
        self._h.handover.offer(c)
        if c.st.phase != Phase.ESTABLISHED or c.st.guest_fin:
            return
        if self._h.wnd_raw(c) > 0:
            self._h.run(c, [c.core.control(ACK)])

    def poll_window_later(self, c: Connection) -> None:
        """Look at our closed window again in WND_POLL."""
        self._h.loop.call_later(WND_POLL, lambda: self._poll_window(c))
