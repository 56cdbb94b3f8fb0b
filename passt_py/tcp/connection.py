# SPDX-License-Identifier: MIT
"""One TCP connection's I/O side: what the handler keeps beside the connection core.

The core (passt_py.tcp.conn) holds the rules and the guest-side state; this record holds the
socket, the flow, the frame template, the timer, and where the loop and C have the connection.
"""
from __future__ import annotations

import socket

from passt_py.flow import Flow
from passt_py.loop import Timer
from passt_py.tcp.conn import TcpConn
from passt_py.tcp.seg import FrameTemplate


class Connection:
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
        self.local = local                      # host peer on this host (sockets.peer_is_local)
        self.fast = False                       # C runs its steady state (core.FastPath)
        self.offered = False                    # offered to C (passt_py.tcp.fast)
