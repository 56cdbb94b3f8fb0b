# SPDX-License-Identifier: MIT
"""What every piece of the UDP translation shares: the context, a flow's socket state, limits.

Theory of operation: UdpHandler (passt_py.udp.handler) is split along its seams — per-flow
sockets (sockets.py), the guest-to-host path (tx.py), the host-to-guest path (rx.py), the -u
listeners (forward.py), the ICMP error relay (errqueue.py) and the C fast path's entries
(fast.py). They all read and write the same few things: the loop, the network view, the flow
table, the way frames go to the guest, the timeouts, one receive buffer, the drop count and the
sockets muted until the guest adds RX buffers. Those live in one UdpContext, built by the
handler and handed to each piece, so no piece reaches into another's attributes.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Callable

from passt_py import core
from passt_py.flow import Flow, FlowSide, FlowTable, Pif
from passt_py.link.ip import udp_frame
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import IN, EventLoop

if TYPE_CHECKING:
    from passt_py.udp.ring import UdpRingPath

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

UDP_TIMEOUT = 30.0
UDP_TIMEOUT_BIDIR = 120.0
RECV_BATCH = 64          # datagrams read per readiness event (bounded work per event)
RECV_SIZE = 65536
MAX_PAYLOAD4 = 65507
MAX_PAYLOAD6 = 65527


class UdpSockState:
    """A UDP flow's socket; ``peer`` is set (and the socket shared) for forwarded flows."""

    __slots__ = ("sock", "peer", "tmpls", "fast_rx", "fast_tx")

    def __init__(self, sock: socket.socket, peer: tuple[object, ...] | None) -> None:
        self.sock = sock
        self.peer = peer
        self.tmpls: core.UdpTemplates | None = None     # for the ring path
        # core.FastPath generation its entries (host side, guest side) were added in, or -1
        self.fast_rx = -1
        self.fast_tx = -1


def sockaddr(addr: IPAddr, port: int) -> tuple[object, ...]:
    """The socket-module address tuple for ``addr``/``port`` in its own family."""
    return (str(addr), port) if addr.version == 4 else (str(addr), port, 0, 0)


class UdpContext:
    """The state the UDP pieces share (see the module docstring for why it is one object)."""

    def __init__(self, loop: EventLoop, view: NetView, guest: GuestState, flows: FlowTable,
                 to_guest: Callable[[list[bytes]], None], timeout: float,
                 timeout_bidir: float, rx_path: UdpRingPath | None,
                 fast: core.FastPath | None) -> None:
        self.loop = loop
        self.view = view
        self.guest = guest
        self.flows = flows
        self.to_guest = to_guest
        self.timeout = timeout
        self.timeout_bidir = timeout_bidir
        self.rx_path = rx_path
        # Established flows' datagrams, both ways, handled in C inside the loop's wait.
        self.fast = fast
        self.buf = bytearray(RECV_SIZE)
        self.dropped = 0            # datagrams lost by the Python paths (C counts its own)
        self.frames_built = 0       # datagrams to the guest whose frame Python built
        self._rx_waiting: list[socket.socket] = []   # muted until the guest adds RX buffers

    def ring_active(self) -> bool:
        """Host datagrams can go straight into the guest's RX ring (udp_ring)."""
        return self.rx_path is not None and self.rx_path.active

    def activity(self, flow: Flow, pif: Pif) -> None:
        """Traffic from side ``pif``: from the target side it makes the flow bidirectional."""
        if flow.sides[1].pif == pif:
            self.flows.touch(flow, self.timeout_bidir)
        else:
            self.flows.touch(flow)

    def frame(self, tap: FlowSide, payload: bytes | memoryview) -> bytes:
        """The frame of a host datagram for the guest, built in Python (the copying path:
        no ring path, the ring is not running, or the ring path spilled it)."""
        self.frames_built += 1
        return udp_frame(self.guest.mac, self.view.our_mac, tap.oaddr, tap.eaddr, tap.oport,
                         tap.eport, payload)

    def wait_rx(self, sock: socket.socket) -> None:
        """The guest's RX ring is full: stop reading ``sock`` until it adds buffers; what
        arrives meanwhile waits in the socket (the kernel drops only beyond its buffer)."""
        if any(s is sock for s in self._rx_waiting):
            return
        try:
            self.loop.modify(sock.fileno(), 0)
        except (OSError, ValueError, KeyError):
            return
        self._rx_waiting.append(sock)

    def rx_ready(self) -> None:
        """The guest added RX buffers: read the sockets that were waiting for them again."""
        waiting, self._rx_waiting = self._rx_waiting, []
        for sock in waiting:
            if sock.fileno() < 0:
                continue                    # its flow closed meanwhile
            try:
                self.loop.modify(sock.fileno(), IN)
            except (OSError, ValueError, KeyError):
                pass
