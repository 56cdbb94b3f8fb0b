# SPDX-License-Identifier: MIT
"""A loopback TCP connection handed to C's steady state (core.FastPath) on real rings.

Shared by tests/test_fast_tcp.py and tests/test_tcp_conn_differential.py: the ``conn``
fixture is our socket and its peer; :func:`register` hands our socket to C with a state built
by :func:`fast_state`; :func:`seg` builds the guest's segments; :func:`take` takes the state
back.
"""
from __future__ import annotations

import select
import socket
import time

import pytest
from scapy.all import IP, TCP, raw

from passt_py import core
from passt_py.core import TcpTemplate
from tests.ring_rig import GUEST4, GUEST_MAC, GW4, HDR, OUR_MAC, E, Wait, kick_rig

GPORT, OPORT = 40000, 5000          # the guest's port, the port it talks to
SEQ0, ACK0 = 1000, 5000             # our next sequence number, the guest's
SO_PEEK_OFF = 42
ET = select.EPOLLET


@pytest.fixture
def conn():
    """(ours, peer): a loopback TCP connection, ours non-blocking with SO_PEEK_OFF on."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    ours = socket.create_connection(lst.getsockname())
    peer, _ = lst.accept()
    lst.close()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    yield ours, peer
    ours.close()
    peer.close()


def fast_state(fast: core.FastPath, sock: socket.socket, seq: int = SEQ0, una: int | None = None,
           timer_at: float | None = None, wnd: int = 1 << 20, ws: int = 7):
    s = fast.tcp_state()
    s.tmpl = TcpTemplate(GUEST_MAC, OUR_MAC, GW4, GUEST4, OPORT, GPORT, ttl=255).c[0]
    s.tmpl.seq, s.tmpl.ack, s.tmpl.window, s.tmpl.mss = seq, ACK0, 1000, 1460
    s.una = seq if una is None else una
    s.acked_to_guest, s.wnd_from_guest, s.wnd_to_guest = ACK0, wnd, 1000 << 8
    s.ws_from_guest, s.ws_to_guest, s.local = ws, 8, 1
    s.fd, s.last_wnd_raw, s.rto, s.rto0 = sock.fileno(), 1000, 1.0, 1.0
    s.timer_at = time.monotonic() + 0.5 if timer_at is None else timer_at
    return s


def register(wait: Wait, r, sock: socket.socket, **kw) -> int:
    """Our socket watched as the service watches it; the connection handed to C."""
    wait.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLERR |
                     select.EPOLLHUP | select.EPOLLRDHUP | ET)
    wait.fast.set_rx(r.rxq, HDR, True, 0, 64)
    wait.fast.set_tcp(0, 0, 1 << 20, 0xFFFF << 8)
    assert wait.fast.add_tcp(fast_state(wait.fast, sock, **kw))
    return kick_rig(r, wait)


def seg(seq: int, ack: int, flags: str = "A", payload: bytes = b"", wnd: int = 8192) -> bytes:
    return raw(E() / IP(src=str(GUEST4), dst=str(GW4)) /
               TCP(sport=GPORT, dport=OPORT, seq=seq, ack=ack, flags=flags, window=wnd) /
               payload)


def take(wait: Wait, sock: socket.socket):
    out = wait.fast.tcp_state()
    assert wait.fast.remove_tcp(sock.fileno(), out)
    return out


