# SPDX-License-Identifier: MIT
"""The guest's link: L2 demux of frames from the guest, and the one path of frames to it.

Frames from the guest arrive in batches (one TX ring drain); the guest's MAC and addresses
are learnt from each, and it goes to the handler for its protocol. Frames to
the guest are queued by any handler and pushed to the RX ring once per event-loop batch, so
a burst of replies costs one used-ring flush and one notification; what finds the running
ring full waits (bounded, in order) for the guest's next RX buffers instead of being lost,
as a NIC's queue would hold it: a dropped ACK costs the guest's TCP a stall and a resend,
a dropped ARP or DHCP reply a timeout. A malformed frame is
dropped here or by its handler, never raised out: one bad frame must not cost other flows.
A capture (-p) is not this module's business: the C core records frames in the rings, those
pushed from here included.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Protocol

from passt_py.config.log import TRACE
from passt_py.link import arp
from passt_py.link.ethernet import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, parse_header
from passt_py.link.ip import (IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IpPacket,
                              UdpDatagram, parse_ip, parse_udp)
from passt_py.link.netview import GuestState, NetView

log = logging.getLogger(__name__)

DHCP_SERVER_PORT = 67
DHCPV6_SERVER_PORT = 547
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
NDP_TYPES = range(133, 138)     # RS, RA, NS, NA, redirect
#: Frames to the guest held while its running RX ring is full; beyond this, new ones drop.
HOLD_MAX = 1024


class ReplyHandler(Protocol):
    """A sans-IO responder (DHCP, DHCPv6): one frame in, at most one reply out."""

    def handle(self, frame: bytes, pkt: IpPacket, udp: UdpDatagram,
               guest: GuestState) -> bytes | None: ...


class NdpHandler(Protocol):
    """The NDP responder: one frame in, frames out."""

    def handle(self, frame: bytes, pkt: IpPacket, guest: GuestState) -> list[bytes]: ...


class IcmpHandler(Protocol):
    """ICMP echo translation."""

    def from_guest(self, pkt: IpPacket) -> None: ...


class UdpHandler(Protocol):
    """UDP translation."""

    def from_guest(self, pkt: IpPacket, dgram: UdpDatagram) -> None: ...


class TcpHandler(Protocol):
    """TCP translation."""

    def from_guest(self, pkt: IpPacket) -> None: ...


class GuestLink:
    """Demultiplexes guest frames to protocol handlers and batches frames to the guest."""

    def __init__(self, view: NetView, guest: GuestState,
                 deliver: Callable[[list[bytes]], int],
                 defer: Callable[[Callable[[], None]], None],
                 rx_running: Callable[[], bool] = lambda: False) -> None:
        self.view = view
        self.guest = guest
        self._deliver = deliver
        self._defer = defer
        self._rx_running = rx_running
        self._out: list[bytes] = []
        self.dhcp: ReplyHandler | None = None
        self.dhcpv6: ReplyHandler | None = None
        self.ndp: NdpHandler | None = None
        self.icmp: IcmpHandler | None = None
        self.udp: UdpHandler | None = None
        self.tcp: TcpHandler | None = None
        self.dropped_rx = 0

    # ---- towards the guest ----
    def to_guest(self, frames: list[bytes]) -> None:
        """Queue frames (bytes-like) for the guest; they are pushed once at the end of this
        batch."""
        if not frames:
            return
        if not self._out:
            self._defer(self.flush)
        room = HOLD_MAX - len(self._out)    # held frames wait for a kick: keep the bound
        if len(frames) > room:
            self.dropped_rx += len(frames) - room
            frames = frames[:room]
        self._out.extend(frames)

    def flush(self) -> None:
        """Push queued frames to the RX ring (also on the guest's RX kick, for held ones).

        What the running ring has no buffer for stays queued, up to HOLD_MAX frames, for the
        kick the ring asked for; frames for a ring that does not run (no guest driver yet, a
        front-end gone) are dropped: they would be stale by the time one does.
        """
        frames, self._out = self._out, []
        if not frames:
            return
        placed = self._deliver(frames)
        if placed == len(frames):
            return
        if self._rx_running():
            self._out = frames[placed:]     # at most HOLD_MAX: to_guest() keeps the bound
            return
        self.dropped_rx += len(frames) - placed
        log.log(TRACE, "guest RX ring not running: dropped %d frames", len(frames) - placed)

    @property
    def held(self) -> int:
        """Frames waiting for the guest's RX buffers (or for this batch's flush)."""
        return len(self._out)

    def drop_held(self) -> None:
        """The guest's link went down: frames held for its RX buffers would arrive stale."""
        if self._out:
            self.dropped_rx += len(self._out)
            self._out = []

    # ---- from the guest ----
    def from_guest(self, frames: list[bytes]) -> None:
        """Handle one TX batch from the guest."""
        for frame in frames:
            try:
                self._demux(frame)
            except Exception:  # noqa: BLE001 - a handler bug must not stop the batch
                log.exception("error handling a guest frame of %d bytes", len(frame))

    def _demux(self, frame: bytes) -> None:
        eth = parse_header(frame)
        if eth is None:
            return
        if not eth.src[0] & 1 and eth.src != self.guest.mac:
            self.guest.mac = eth.src
        if eth.ethertype == ETH_P_ARP:
            if self.view.ip4 is not None:
                self._arp(frame)
            return
        if eth.ethertype not in (ETH_P_IP, ETH_P_IPV6):
            return
        pkt = parse_ip(frame, eth.ethertype)
        if pkt is None:
            return
        self._learn(pkt)
        if pkt.proto == IPPROTO_UDP:
            self._udp(frame, pkt)
        elif pkt.proto == IPPROTO_TCP:
            if self.tcp is not None and self.view.tcp:
                self.tcp.from_guest(pkt)
        elif pkt.proto == IPPROTO_ICMP and pkt.version == 4:
            if len(pkt.l4) >= 8 and pkt.l4[0] == ICMP_ECHO_REQUEST and self.icmp is not None:
                self.icmp.from_guest(pkt)
        elif pkt.proto == IPPROTO_ICMPV6 and pkt.version == 6 and len(pkt.l4) >= 4:
            kind = pkt.l4[0]
            if kind in NDP_TYPES:
                if self.ndp is not None:
                    self.to_guest(self.ndp.handle(frame, pkt, self.guest))
            elif kind == ICMPV6_ECHO_REQUEST and self.icmp is not None and len(pkt.l4) >= 8:
                self.icmp.from_guest(pkt)

    def _arp(self, frame: bytes) -> None:
        assert self.view.ip4 is not None
        reply = arp.reply_to(frame, self.view.our_mac, self.view.ip4.addr)
        if reply is not None:
            self.to_guest([reply])
            return
        pkt = arp.parse(frame)
        if pkt is not None and pkt.op == arp.ARP_OP_REPLY and pkt.tha == self.view.our_mac:
            self.guest.mac = pkt.sha
            self.guest.arp_answered = True

    def _udp(self, frame: bytes, pkt: IpPacket) -> None:
        dgram = parse_udp(pkt.l4)
        if dgram is None:
            return
        server = None
        if pkt.version == 4 and dgram.dport == DHCP_SERVER_PORT:
            server = self.dhcp
        elif pkt.version == 6 and dgram.dport == DHCPV6_SERVER_PORT:
            server = self.dhcpv6
        if server is not None:
            reply = server.handle(frame, pkt, dgram, self.guest)
            if reply is not None:
                self.to_guest([reply])
            return
        if dgram.dport in (DHCP_SERVER_PORT, DHCPV6_SERVER_PORT) and pkt.dst.is_multicast:
            return
        if pkt.version == 4 and pkt.dst == ipaddress.IPv4Address("255.255.255.255"):
            return
        if self.udp is not None and self.view.udp:
            self.udp.from_guest(pkt, dgram)

    def _learn(self, pkt: IpPacket) -> None:
        src = pkt.src
        if src.is_unspecified or src.is_multicast:
            return
        if pkt.version == 4:
            self.guest.addr4 = src  # type: ignore[assignment]
        elif src.is_link_local:
            self.guest.addr6_ll = src  # type: ignore[assignment]
        else:
            self.guest.addr6 = src  # type: ignore[assignment]
