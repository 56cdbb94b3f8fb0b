# SPDX-License-Identifier: MIT
"""UDP translation: guest datagrams through per-flow host sockets, and -u port forwarding.

Theory of operation: UdpHandler is the face the rest of the back-end sees (service.py, the tap
demux, migration); the work is done by pieces split along the real seams, sharing one
UdpContext (context.py):

- sockets.py — guest-initiated flows' host sockets: bound to the guest's own source port when
  free, connected to the translated destination, closed with the flow (expiry: UDP_TIMEOUT
  while traffic went one way only, UDP_TIMEOUT_BIDIR once the target side answered; passt's).
- tx.py — guest to host: the batch route straight from guest memory (sendmmsg) for known
  flows, the copying route for the rest (it creates flows).
- rx.py — host to guest on a flow's own socket: into the RX ring by C when it runs, else
  framed in Python; replies come from the address and port the guest talked to.
- errqueue.py — ICMP errors from the sockets' error queues, relayed as ICMP/ICMPv6 errors
  quoting the datagram the guest sent.
- forward.py — the -u listeners and the flows host peers start through them.
- fast.py — the flows' entries in the C fast path (core.FastPath) and the traffic it saw.

Sizes: datagrams up to 65507 (IPv4) / 65527 (IPv6) bytes of payload pass both ways. A datagram
from the host is delivered to the guest whole even when the frame exceeds view.mtu (the RX path
uses mergeable buffers, and a receiving stack accepts packets above its own MTU); only a
datagram that could not be one IP packet is impossible, and the kernel never returns one.

Migration carries a flow as a UdpFlowState (its two tuples and whether it is bidirectional);
the record's WIRE ids are the stream format and never change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Sequence

from passt_py import core
from passt_py.config.portspec import Forward, PortForwards
from passt_py.flow import Flow, FlowSide, FlowTable, FlowType, Pif
from passt_py.link.ip import IpPacket, UdpDatagram
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import EventLoop
from passt_py.migrate.record import WireField
from passt_py.udp.context import (MAX_PAYLOAD4, MAX_PAYLOAD6, RECV_BATCH, UDP_TIMEOUT,
                                  UDP_TIMEOUT_BIDIR, IPAddr, UdpContext, UdpSockState)
from passt_py.udp.errqueue import ErrorRelay
from passt_py.udp.fast import UdpFastEntries
from passt_py.udp.forward import UdpForwarder
from passt_py.udp.rx import UdpFlowReceiver
from passt_py.udp.sockets import UdpFlowSockets
from passt_py.udp.tx import UdpGuestPath

if TYPE_CHECKING:
    from passt_py.udp.ring import UdpRingPath

__all__ = ["MAX_PAYLOAD4", "MAX_PAYLOAD6", "RECV_BATCH", "UDP_TIMEOUT", "UDP_TIMEOUT_BIDIR",
           "UdpFlowState", "UdpHandler"]


@dataclass(frozen=True)
class UdpFlowState:
    """A UDP flow as migration carries it (see UdpHandler.export/adopt)."""

    forwarded: bool        # started by a host peer through a -u listener
    guest_addr: IPAddr     # the guest side: its address/port and the one it talks to
    guest_port: int
    our_addr: IPAddr
    our_port: int
    host_addr: IPAddr      # the host side: the peer and our local socket address
    host_port: int
    local_addr: IPAddr
    local_port: int
    bidir: bool            # the target side answered already (longer timeout)

    #: Wire schema (passt_py.migrate.record): ids never change or get reused.
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField(1, "forwarded"), WireField(2, "guest_addr"), WireField(3, "guest_port"),
        WireField(4, "our_addr"), WireField(5, "our_port"), WireField(6, "host_addr"),
        WireField(7, "host_port"), WireField(8, "local_addr"), WireField(9, "local_port"),
        WireField(10, "bidir"))


class UdpHandler:
    """UDP flows between the guest and host sockets, plus -u forwarding listeners."""

    def __init__(self, loop: EventLoop, view: NetView, guest: GuestState, flows: FlowTable,
                 to_guest: Callable[[list[bytes]], None], timeout: float = UDP_TIMEOUT,
                 timeout_bidir: float = UDP_TIMEOUT_BIDIR,
                 rx_path: UdpRingPath | None = None, fast: core.FastPath | None = None) -> None:
        ctx = self._ctx = UdpContext(loop, view, guest, flows, to_guest, timeout,
                                     timeout_bidir, rx_path, fast)
        self._fast = UdpFastEntries(ctx)
        receiver = UdpFlowReceiver(ctx, ErrorRelay(ctx), self._fast)
        self._sockets = UdpFlowSockets(ctx, self._fast, receiver.on_ready)
        self._tx = UdpGuestPath(ctx, self._sockets, self._fast)
        self._forwarder = UdpForwarder(ctx, self._sockets.on_close)
        # The flow table asks the fast path for the activity it saw before expiring a flow.
        if fast is not None:
            flows.set_activity_probe(FlowType.UDP, self._fast.activity)

    @property
    def dropped(self) -> int:
        """Datagrams lost either way (undeliverable, refused by the host, no flow)."""
        fast = self._ctx.fast
        return self._ctx.dropped + (int(fast.stats().dropped) if fast else 0)

    @property
    def frames_built(self) -> int:
        """Datagrams to the guest whose frame Python built (the copying route), as opposed
        to those C placed in the RX ring itself; for tests and diagnostics."""
        return self._ctx.frames_built

    def set_timeouts(self, timeout: float, timeout_bidir: float) -> None:
        """Flow timeouts from now on (one-way, bidirectional); flows touched later use them."""
        self._ctx.timeout, self._ctx.timeout_bidir = timeout, timeout_bidir

    # ---- both ways ----
    def from_guest(self, pkt: IpPacket, dgram: UdpDatagram) -> None:
        """Send one guest datagram on its flow, creating the flow if it is new."""
        self._tx.from_guest(pkt, dgram)

    def take_batch(self, recs: "core.PacketRecords", frames: Sequence[int]) -> list[int]:
        """Send datagrams of known outbound flows straight from guest memory; returns the
        indices left to the copying path, in order (see UdpGuestPath.take_batch)."""
        return self._tx.take_batch(recs, frames)

    def rx_ready(self) -> None:
        """The guest added RX buffers: read the sockets that were waiting for them again."""
        self._ctx.rx_ready()

    def fast_activity(self, flow: Flow) -> bool:
        """What the flow table asks before expiring ``flow``: did C move datagrams of it
        since last asked? (Public for tests and diagnostics; see UdpFastEntries.activity.)"""
        return self._fast.activity(flow)

    # ---- port forwarding ----
    def start_forwards(self, rules: PortForwards | Iterable[Forward]) -> int:
        """Open the -u listening sockets; returns how many were bound (failures are logged)."""
        return self._forwarder.start(rules)

    def stop_forwards(self) -> None:
        """Close every listening socket and the flows forwarded through them."""
        self._forwarder.stop()

    @property
    def listeners(self) -> int:
        """How many -u listening sockets are open."""
        return self._forwarder.count

    # ---- migration ----
    def export(self, flow: Flow) -> "UdpFlowState":
        """What the target needs to re-create ``flow``: its two tuples and whether it is
        bidirectional (UDP flows have no other state; the socket is re-created, bound alike)."""
        tap, host = flow.side(Pif.TAP), flow.side(Pif.HOST)
        state: UdpSockState = flow.data  # type: ignore[assignment]
        return UdpFlowState(forwarded=state.peer is not None,
                            guest_addr=tap.eaddr, guest_port=tap.eport,
                            our_addr=tap.oaddr, our_port=tap.oport,
                            host_addr=host.eaddr, host_port=host.eport,
                            local_addr=host.oaddr, local_port=host.oport,
                            bidir=flow.timeout >= self._ctx.timeout_bidir)

    def adopt(self, st: "UdpFlowState") -> Flow:
        """Re-create an exported flow: an outbound one gets a socket bound to the same local
        port (another one if that is taken) and connected to the same peer; a forwarded one
        goes through our listener on the same address and port. Raises FlowRefused/OSError."""
        if not all(0 <= p <= 0xFFFF for p in (st.guest_port, st.our_port, st.local_port,
                                                st.host_port)):
            raise ValueError(f"port out of range in {st}")   # a hostile migration stream
        tap = FlowSide(Pif.TAP, st.guest_addr, st.guest_port, st.our_addr, st.our_port)
        timeout = self._ctx.timeout_bidir if st.bidir else self._ctx.timeout
        if st.forwarded:
            host = FlowSide(Pif.HOST, st.host_addr, st.host_port, st.local_addr, st.local_port)
            return self._forwarder.adopt(tap, host, timeout)
        return self._sockets.adopt_outbound(tap, st.host_addr, st.host_port, st.local_port,
                                            timeout)

    def close_all(self) -> int:
        """Close every UDP flow (the guest went away); listeners stay. Returns the count."""
        return self._ctx.flows.close_types((FlowType.UDP,))
