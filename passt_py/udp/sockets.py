# SPDX-License-Identifier: MIT
"""Guest-initiated UDP flows: their host sockets, from creation to close.

Theory of operation: the first datagram of a new (guest address, source port, destination,
destination port) tuple creates a UDP flow. Its host socket is bound, like passt, to the same
port number the guest used (SO_REUSEADDR, so several flows from one guest port can share it;
each is connected to its own peer and the kernel prefers connected sockets), falling back to an
ephemeral port when the port is taken; with -o / --outbound-if4/6 it is bound to that address
and device (passt_py.link.hostsock). It is connected to the destination after address
translation (passt_py.link.fwd), so the kernel filters what comes back, and it reports ICMP
errors on its error queue (IP_RECVERR / IPV6_RECVERR, relayed by errqueue.py). The socket
joins the loop with the flow's receiver (rx.py). A migrated flow gets a socket bound to the
same local port when it is free. When the flow table closes the flow (expiry: UDP_TIMEOUT
while traffic went one way only, UDP_TIMEOUT_BIDIR once the target side answered), its fast
path entries go first, then the socket; forwarded flows share their listener's socket, which
stays open.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Callable

from passt_py.config.log import trace
from passt_py.flow import Flow, FlowRefused, FlowSide, FlowTableFull, FlowType, Pif
from passt_py.link import fwd, hostsock
from passt_py.link.ip import IpPacket
from passt_py.link.netview import NetView
from passt_py.loop import IN
from passt_py.udp import icmp
from passt_py.udp.context import IPAddr, UdpContext, UdpSockState, sockaddr
from passt_py.udp.errqueue import IP_RECVERR, IPV6_RECVERR, SOL_IP, SOL_IPV6
from passt_py.udp.fast import UdpFastEntries

log = logging.getLogger(__name__)


def flow_socket(view: NetView, peer: IPAddr, port: int) -> socket.socket:
    """A non-blocking socket towards ``peer`` reporting ICMP errors, bound to ``port``
    (0: ephemeral) on the outbound address and device, if configured (hostsock)."""
    version = peer.version
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if version == 4:
            sock.setsockopt(SOL_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
        hostsock.bind_outbound(sock, view, peer, port, always=True)
    except OSError:
        sock.close()
        raise
    return sock


class UdpFlowSockets:
    """Opens, registers and closes the host sockets of guest-initiated flows."""

    def __init__(self, ctx: UdpContext, fast: UdpFastEntries,
                 on_ready: Callable[[Flow, int], None]) -> None:
        self._ctx = ctx
        self._fast = fast
        self._on_ready = on_ready

    def new_outbound(self, tap: FlowSide, pkt: IpPacket) -> Flow | None:
        """A flow for the guest's new tuple ``tap`` (``pkt`` is its first datagram), or None
        when it cannot be had (a full table answers the guest with an ICMP error)."""
        ctx = self._ctx
        target = fwd.nat_from_guest(ctx.view, tap.oaddr, tap.oport)
        if target is None:
            return None
        if ctx.flows.full:
            ctx.flows.refuse()
            ctx.to_guest([icmp.refused_frame(ctx.view, ctx.guest, pkt)])
            return None
        for port in (tap.eport, 0):
            try:
                sock = flow_socket(ctx.view, target, port)
            except OSError as e:
                if port == 0:
                    log.debug("UDP: cannot open a socket for %s: %s", target, e)
                    return None
                continue
            try:
                flow = self._connect(sock, tap, target, tap.oport, ctx.timeout)
            except FlowTableFull:
                sock.close()
                ctx.to_guest([icmp.refused_frame(ctx.view, ctx.guest, pkt)])
                return None
            except (OSError, FlowRefused, ValueError) as e:
                sock.close()
                trace(log, "UDP: flow to %s:%d on port %d not created: %s",
                      target, tap.oport, port, e)
                continue
            self._register(sock, flow)
            trace(log, "new UDP flow %r", flow)
            return flow
        return None

    def adopt_outbound(self, tap: FlowSide, peer: IPAddr, peer_port: int, local_port: int,
                       timeout: float) -> Flow:
        """A migrated outbound flow: bound to ``local_port`` (another one if that is taken),
        connected to the same peer. Raises FlowRefused/OSError."""
        try:
            sock = flow_socket(self._ctx.view, peer, local_port)
        except OSError:
            sock = flow_socket(self._ctx.view, peer, 0)
        try:
            flow = self._connect(sock, tap, peer, peer_port, timeout)
        except BaseException:
            sock.close()
            raise
        self._register(sock, flow)
        return flow

    def _connect(self, sock: socket.socket, tap: FlowSide, peer: IPAddr, peer_port: int,
                 timeout: float) -> Flow:
        """Connect ``sock`` to the peer and enter its flow (the caller closes on errors)."""
        sock.connect(sockaddr(peer, peer_port))
        local = sock.getsockname()
        host = FlowSide(Pif.HOST, peer, peer_port, ipaddress.ip_address(local[0]), local[1])
        return self._ctx.flows.new(FlowType.UDP, tap, host, timeout, self.on_close,
                                   UdpSockState(sock, None))

    def _register(self, sock: socket.socket, flow: Flow) -> None:
        """Datagrams and errors on ``sock`` go to the flow's receiver from now on."""
        self._ctx.loop.add(sock.fileno(), IN, lambda mask, f=flow: self._on_ready(f, mask))

    def on_close(self, flow: Flow) -> None:
        """The flow table closed ``flow``: its fast path entries and own socket go."""
        state: UdpSockState = flow.data  # type: ignore[assignment]
        if state.peer is None:          # forwarded flows share their listener's socket
            self._fast.forget(flow, state)
            self._ctx.loop.remove(state.sock.fileno())
            state.sock.close()
