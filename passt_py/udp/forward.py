# SPDX-License-Identifier: MIT
"""UDP port forwarding (-u): listening sockets on the host, flows from host peers to the guest.

Theory of operation: for every forwarded host port one listening socket per enabled family
(or for the bind address's family). A datagram from a new host peer creates a flow whose
initiating side is that peer and whose target is the guest's address at the mapped port, with
the peer's address translated (127.0.0.1 -> map_host_loopback, ...). Known peers are found per
datagram by (listener fd, peer sockaddr), an alias in the flow table, without address parsing.
The guest's replies match the flow's guest-side tuple and leave through the listening socket
to the peer (tx.py sends with sendto() on the shared socket).

With the RX ring running, the listener's datagrams go straight into the guest's buffers: one C
call covers the LISTENER_TEMPLATES most recent peers; a datagram from another peer comes back
(spilled), takes the copying route once, and its flow moves in front of the recent ones.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable

from passt_py import core
from passt_py.config.log import trace
from passt_py.config.portspec import Forward, PortForwards
from passt_py.flow import Flow, FlowRefused, FlowSide, FlowType, Pif
from passt_py.link import fwd, hostsock
from passt_py.loop import ERR, HUP, IN
from passt_py.udp.context import RECV_BATCH, IPAddr, UdpContext, UdpSockState, sockaddr
from passt_py.udp.rx import set_template

log = logging.getLogger(__name__)

#: Host peers of a -u listener whose datagrams the ring path places itself (most recent
#: first); a datagram from another peer comes back to Python once, which moves it in front.
LISTENER_TEMPLATES = 8


@dataclass
class _Listener:
    """One -u listening socket: host ``port`` forwarded to guest ``target_port``."""

    sock: socket.socket
    version: int
    oaddr: IPAddr          # the bound address (unspecified for a wildcard bind)
    port: int
    target_port: int
    ring_flows: list[Flow] = field(default_factory=list)   # see LISTENER_TEMPLATES
    tmpls: core.UdpTemplates | None = None


class UdpForwarder:
    """The -u listening sockets and the flows host peers start through them."""

    def __init__(self, ctx: UdpContext, on_close: Callable[[Flow], None]) -> None:
        self._ctx = ctx
        self._on_close = on_close
        self._listeners: list[_Listener] = []

    @property
    def count(self) -> int:
        """How many listening sockets are open."""
        return len(self._listeners)

    def start(self, rules: PortForwards | Iterable[Forward]) -> int:
        """Open the -u listening sockets; returns how many were bound (failures are logged)."""
        return fwd.open_listeners(self._ctx.view, rules, self._listen, "UDP")

    def _listen(self, rule: Forward, version: int, port: int) -> None:
        """Bind one listening socket and put it in the loop (raises OSError)."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        addr = rule.bind_addr if rule.bind_addr is not None else fwd.unspecified(version)
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            if version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if rule.ifname is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, rule.ifname.encode())
            if self._ctx.view.freebind:
                hostsock.set_freebind(sock, version)
            sock.bind(sockaddr(addr, port))
        except OSError:
            sock.close()
            raise
        lst = _Listener(sock, version, addr, port, rule.target(port))
        self._listeners.append(lst)
        self._ctx.loop.add(sock.fileno(), IN, lambda mask, l=lst: self._on_listener(l, mask))

    def stop(self) -> None:
        """Close every listening socket and the flows forwarded through them."""
        flows = self._ctx.flows
        listeners, self._listeners = self._listeners, []
        socks = {id(lst.sock) for lst in listeners}
        for flow in list(flows):
            state: UdpSockState | None = flow.data  # type: ignore[assignment]
            if flow.type == FlowType.UDP and id(state.sock) in socks:  # type: ignore[union-attr]
                flows.close(flow)
        for lst in listeners:
            self._ctx.loop.remove(lst.sock.fileno())
            lst.sock.close()

    def _on_listener(self, lst: _Listener, mask: int) -> None:
        """Datagrams from host peers to a forwarded port: on to the guest."""
        ctx = self._ctx
        if mask & (ERR | HUP):
            try:
                lst.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                pass
        if mask & IN and ctx.ring_active():
            self._ring_listener(lst)
            return
        frames = []
        for _ in range(RECV_BATCH):
            try:
                n, peer = lst.sock.recvfrom_into(ctx.buf)
            except BlockingIOError:
                break
            except OSError as e:
                trace(log, "UDP forward port %d: receive error %s", lst.port, e)
                continue
            flow = self._forward_flow(lst, peer)
            if flow is None:
                ctx.dropped += 1
                continue
            tap = flow.side(Pif.TAP)
            frames.append(ctx.frame(tap, memoryview(ctx.buf)[:n]))
            ctx.activity(flow, Pif.HOST)
        if frames:
            ctx.to_guest(frames)

    def _ring_listener(self, lst: _Listener) -> None:
        """A -u listener's datagrams straight into the guest's RX buffers (udp_ring).

        The C call covers the listener's recent peers; a datagram from another one comes
        back (spilled), takes the copying route once and its flow joins the recent ones.
        """
        ctx = self._ctx
        path = ctx.rx_path
        assert path is not None
        for _ in range(RECV_BATCH):          # bounded: each round takes at least a datagram
            tmpls = self._listener_templates(lst)
            path.deliver(lst.sock.fileno(), tmpls, RECV_BATCH)
            res = path.last
            ctx.dropped += res.dropped
            for i, flow in enumerate(lst.ring_flows):
                if tmpls.take_count(i):
                    ctx.activity(flow, Pif.HOST)
            if res.stop == core.UDP_STOP_NOBUFS:
                ctx.wait_rx(lst.sock)
            if res.stop != core.UDP_STOP_UNKNOWN:
                return
            payload, addr, port = path.spilled()
            flow = self._forward_flow(lst, sockaddr(addr, port))
            if flow is None:
                ctx.dropped += 1
                continue
            ctx.activity(flow, Pif.HOST)
            frame = ctx.frame(flow.side(Pif.TAP), payload)
            if not path.push(frame):
                ctx.to_guest([frame])       # queued for the guest's next RX buffers
            self._make_recent(lst, flow)

    @staticmethod
    def _make_recent(lst: _Listener, flow: Flow) -> None:
        """``flow`` in front of the listener's ring peers; its templates are rebuilt."""
        if flow in lst.ring_flows:
            lst.ring_flows.remove(flow)
        lst.ring_flows.insert(0, flow)
        del lst.ring_flows[LISTENER_TEMPLATES:]
        lst.tmpls = None

    def _listener_templates(self, lst: _Listener) -> core.UdpTemplates:
        """The C templates of a listener's recent flows, rebuilt when they changed."""
        if lst.tmpls is not None and (not lst.ring_flows or lst.tmpls.mac == self._ctx.guest.mac) \
                and not any(f.closed for f in lst.ring_flows):
            return lst.tmpls
        lst.ring_flows = [f for f in lst.ring_flows if not f.closed]
        tmpls = lst.tmpls = core.UdpTemplates(LISTENER_TEMPLATES)
        for i, flow in enumerate(lst.ring_flows):
            set_template(self._ctx, tmpls, i, flow, any_peer=False)
        tmpls.n = len(lst.ring_flows)        # none yet: every datagram comes back (spilled)
        return tmpls

    def _forward_flow(self, lst: _Listener, peer: tuple[object, ...]) -> Flow | None:
        """The flow for datagrams from ``peer`` to ``lst``, created if new (None: drop)."""
        # Per datagram, (listener, peer sockaddr) finds a known flow without address parsing.
        flows = self._ctx.flows
        key = (lst.sock.fileno(), peer)
        flow = flows.lookup_alias(FlowType.UDP, key)
        if flow is None:
            flow = self._find_or_create(lst, peer)
            if flow is not None:
                flows.add_alias(flow, key)
        return flow

    def _find_or_create(self, lst: _Listener, peer: tuple[object, ...]) -> Flow | None:
        """The flow of ``peer`` on ``lst`` by its addresses, or a new one (None: refused)."""
        ctx = self._ctx
        try:
            peer_addr = ipaddress.ip_address(str(peer[0]).partition("%")[0])
            peer_port = int(peer[1])  # type: ignore[call-overload]
        except (ValueError, IndexError, TypeError):
            return None
        host = FlowSide(Pif.HOST, peer_addr, peer_port, lst.oaddr, lst.port)
        flow = ctx.flows.lookup(FlowType.UDP, host)
        if flow is not None:
            return flow
        if not ctx.view.udp:
            return None
        src = fwd.nat_from_host(ctx.view, peer_addr, peer_port)
        dst = fwd.guest_address(ctx.view, ctx.guest, lst.version)
        if src is None or dst is None:
            return None
        tap = FlowSide(Pif.TAP, dst, lst.target_port, src, peer_port)
        try:
            flow = ctx.flows.new(FlowType.UDP, host, tap, ctx.timeout, self._on_close,
                                 UdpSockState(lst.sock, peer))
        except FlowRefused as e:
            trace(log, "UDP forward from %s:%d refused: %s", peer_addr, peer_port, e)
            return None
        trace(log, "new forwarded UDP flow %r", flow)
        return flow

    def adopt(self, tap: FlowSide, host: FlowSide, timeout: float) -> Flow:
        """A migrated forwarded flow through our listener on ``host``'s local address and
        port. Raises FlowRefused when there is no such listener."""
        lst = next((l for l in self._listeners
                    if l.port == host.oport and l.oaddr == host.oaddr), None)
        if lst is None:
            raise FlowRefused(f"no UDP listener on [{host.oaddr}]:{host.oport}")
        return self._ctx.flows.new(FlowType.UDP, host, tap, timeout, self._on_close,
                                   UdpSockState(lst.sock, sockaddr(host.eaddr, host.eport)))
