# SPDX-License-Identifier: MIT
"""ICMP and ICMPv6 echo through unprivileged ping sockets, and ICMP errors for the guest.

Theory of operation: each echo request from the guest belongs to a ping flow keyed by (guest
address, echo id, destination). The flow owns one ping socket (SOCK_DGRAM with IPPROTO_ICMP or
IPPROTO_ICMPV6), which needs no privileges where ``net.ipv4.ping_group_range`` admits our group
(it governs IPv6 too). The kernel owns the echo id on such sockets (it is the socket's local
"port"), so requests leave with the kernel's id and replies come back with it: the flow maps it
back to the guest's id. Sequence number and payload pass untouched. Replies reach the guest as
echo replies from the address it pinged, with fresh checksums. Flows expire after
``PING_TIMEOUT`` s without requests.

If the kernel refuses ping sockets (EACCES/EPERM from ``socket()``), one warning explains the
sysctl and requests are dropped from then on, quietly. With -o / --outbound-if4/6 the ping
socket is bound to that address and device, as the TCP and UDP ones are (link.hostsock).

The module also builds ICMP/ICMPv6 error messages to the guest (destination unreachable and
friends, quoting the guest's packet), used by UDP to relay host-side errors and by any handler
that refuses a new flow.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Callable, ClassVar

from passt_py import core
from passt_py.config.log import trace
from passt_py.flow import Flow, FlowRefused, FlowSide, FlowTable, FlowType, Pif
from passt_py.link import fwd, hostsock
from passt_py.link.ip import (IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, IpPacket,
                              ip_frame, ipv4_header, ipv6_header, l4_checksum)
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import ERR, HUP, IN, EventLoop
from passt_py.migrate.record import WireField

log = logging.getLogger(__name__)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

PING_TIMEOUT = 60.0
RECV_BATCH = 32          # replies read per readiness event (bounded work per event)
RECV_SIZE = 65536

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_PKT_FILTERED = 13   # communication administratively prohibited

ICMPV6_DEST_UNREACH = 1
ICMPV6_PKT_TOOBIG = 2
ICMPV6_TIME_EXCEED = 3
ICMPV6_PARAMPROB = 4
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ICMPV6_ADM_PROHIBITED = 1
ICMPV6_PORT_UNREACH = 4

#: RFC 1812 4.3.2.3: an ICMPv4 error quotes as much as fits in 576 bytes.
ICMP4_ERROR_MAX = 576
#: RFC 4443 2.4(c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
ICMP6_ERROR_MAX = 1280

_ECHO = struct.Struct("!BBHHH")   # type, code, checksum, id, sequence


# ---- ICMP error messages towards the guest ----

def error_message(version: int, src: IPAddr, dst: IPAddr, icmp_type: int, code: int,
                  info: int, quoted: bytes) -> bytes:
    """An ICMP(v6) error message (header + quote) from ``src`` to ``dst``, checksummed.

    ``info`` fills the second word: the next-hop MTU for "fragmentation needed" (low 16 bits)
    and "packet too big", the pointer for parameter problems, zero otherwise. ``quoted`` is cut
    so the whole IP packet stays within the RFC limits.
    """
    if version == 4:
        room = ICMP4_ERROR_MAX - IPV4_HLEN - 8
        if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
            rest = struct.pack("!HH", 0, info & 0xFFFF)
        elif icmp_type == ICMP_PARAMETERPROB:
            rest = struct.pack("!B3x", info & 0xFF)
        else:
            rest = b"\0\0\0\0"
        msg = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest + quoted[:room])
        struct.pack_into("!H", msg, 2, core.csum_icmp4(msg))
        return bytes(msg)
    room = ICMP6_ERROR_MAX - IPV6_HLEN - 8
    msg = bytearray(struct.pack("!BBHI", icmp_type, code, 0, info & 0xFFFFFFFF) + quoted[:room])
    struct.pack_into("!H", msg, 2, l4_checksum(src, dst, IPPROTO_ICMPV6, msg))
    return bytes(msg)


def quote_packet(src: IPAddr, dst: IPAddr, proto: int, l4: bytes, ttl: int = 64) -> bytes:
    """An IP packet as the guest sent it (rebuilt from its parts), for quoting in an error."""
    if src.version == 4:
        return ipv4_header(src, dst, proto, len(l4), ttl) + l4  # type: ignore[arg-type]
    return ipv6_header(src, dst, proto, len(l4), ttl) + l4      # type: ignore[arg-type]


def error_frame(view: NetView, guest: GuestState, src: IPAddr, dst: IPAddr, icmp_type: int,
                code: int, info: int, quoted: bytes) -> bytes:
    """A complete Ethernet frame carrying an ICMP(v6) error to the guest."""
    proto = IPPROTO_ICMP if src.version == 4 else IPPROTO_ICMPV6
    msg = error_message(src.version, src, dst, icmp_type, code, info, quoted)
    return ip_frame(guest.mac, view.our_mac, src, dst, proto, msg)


def refused_frame(view: NetView, guest: GuestState, pkt: IpPacket) -> bytes:
    """The "administratively prohibited" error a guest gets when its new flow is refused."""
    quoted = quote_packet(pkt.src, pkt.dst, pkt.proto, bytes(pkt.l4), pkt.ttl)
    if pkt.version == 4:
        return error_frame(view, guest, pkt.dst, pkt.src, ICMP_DEST_UNREACH,
                           ICMP_PKT_FILTERED, 0, quoted)
    return error_frame(view, guest, pkt.dst, pkt.src, ICMPV6_DEST_UNREACH,
                       ICMPV6_ADM_PROHIBITED, 0, quoted)


# ---- echo ----

@dataclass(frozen=True)
class PingFlowState:
    """A ping flow as migration carries it (see IcmpHandler.export/adopt)."""

    guest_addr: IPAddr     # the guest's address and its echo id
    guest_id: int
    dest: IPAddr           # the address the guest pinged
    host_addr: IPAddr      # where the requests go on the host side
    host_id: int           # the echo id the host socket used

    #: Wire schema (passt_py.migrate.record): ids never change or get reused.
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField(1, "guest_addr"), WireField(2, "guest_id"), WireField(3, "dest"),
        WireField(4, "host_addr"), WireField(5, "host_id"))


class _PingState:
    """What a ping flow needs besides its sides: the socket and the guest's echo id."""

    __slots__ = ("sock", "guest_id")

    def __init__(self, sock: socket.socket, guest_id: int) -> None:
        self.sock = sock
        self.guest_id = guest_id


class IcmpHandler:
    """ICMP/ICMPv6 echo translation between the guest and host ping sockets."""

    def __init__(self, loop: EventLoop, view: NetView, guest: GuestState, flows: FlowTable,
                 to_guest: Callable[[list[bytes]], None],
                 timeout: float = PING_TIMEOUT) -> None:
        self._loop = loop
        self._view = view
        self._guest = guest
        self._flows = flows
        self._to_guest = to_guest
        self._timeout = timeout
        self._denied_warned = False
        self.dropped = 0

    def from_guest(self, pkt: IpPacket) -> None:
        """Forward one echo request from the guest; anything else is ignored."""
        try:
            self._from_guest(pkt)
        except Exception:  # noqa: BLE001 - malformed input must never escape
            log.exception("error handling an ICMP echo request from the guest")

    def _from_guest(self, pkt: IpPacket) -> None:
        if not self._view.icmp or len(pkt.l4) < _ECHO.size:
            return
        kind, _code, _csum, ident, seq = _ECHO.unpack_from(pkt.l4)
        if pkt.version == 4:
            if kind != ICMP_ECHO or pkt.proto != IPPROTO_ICMP:
                return
            ftype, req_type = FlowType.PING4, ICMP_ECHO
        else:
            if kind != ICMPV6_ECHO_REQUEST or pkt.proto != IPPROTO_ICMPV6:
                return
            ftype, req_type = FlowType.PING6, ICMPV6_ECHO_REQUEST
        tap = FlowSide(Pif.TAP, pkt.src, ident, pkt.dst, ident)
        flow = self._flows.lookup(ftype, tap)
        if flow is None:
            flow = self._new_flow(ftype, tap, pkt)
            if flow is None:
                self.dropped += 1
                return
        state: _PingState = flow.data  # type: ignore[assignment]
        host = flow.sides[1]
        request = _ECHO.pack(req_type, 0, 0, host.eport, seq) + bytes(pkt.l4[_ECHO.size:])
        dest = (str(host.eaddr), 0) if pkt.version == 4 else (str(host.eaddr), 0, 0, 0)
        try:
            state.sock.sendto(request, dest)
        except OSError as e:
            self.dropped += 1
            trace(log, "ping flow %d: send to %s failed: %s", flow.id, host.eaddr, e)
            return
        self._flows.touch(flow)
        trace(log, "ping flow %d: guest id %d seq %d -> %s id %d", flow.id, ident, seq,
              host.eaddr, host.eport)

    def _new_flow(self, ftype: FlowType, tap: FlowSide, pkt: IpPacket) -> Flow | None:
        target = fwd.nat_from_guest(self._view, pkt.dst, None)
        if target is None:
            return None
        if self._flows.full:
            self._flows.refuse()
            return None
        family = socket.AF_INET if pkt.version == 4 else socket.AF_INET6
        proto = IPPROTO_ICMP if pkt.version == 4 else IPPROTO_ICMPV6
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, proto)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                self._warn_denied()
            else:
                log.debug("cannot open ping socket: %s", e)
            return None
        try:
            hostsock.bind_outbound(sock, self._view, target, always=True)   # -o, --outbound-if
            host_id = sock.getsockname()[1]
            host = FlowSide(Pif.HOST, target, host_id, fwd.unspecified(pkt.version), host_id)
            flow = self._flows.new(ftype, tap, host, self._timeout, self._on_close,
                                   _PingState(sock, tap.eport))
        except (OSError, FlowRefused) as e:
            log.debug("ping flow to %s not created: %s", pkt.dst, e)
            sock.close()
            return None
        self._loop.add(sock.fileno(), IN, lambda mask, f=flow: self._on_ready(f, mask))
        log.debug("new ping flow %r", flow)
        return flow

    def _warn_denied(self) -> None:
        if not self._denied_warned:
            self._denied_warned = True
            log.warning("ping sockets are not permitted for this group (see sysctl "
                        "net.ipv4.ping_group_range): ICMP echo requests from the guest "
                        "will be dropped")

    def _on_ready(self, flow: Flow, mask: int) -> None:
        """Relay echo replies arriving on a flow's ping socket."""
        if flow.closed:
            return
        state: _PingState = flow.data  # type: ignore[assignment]
        if mask & (ERR | HUP):
            # Without IP_RECVERR an ICMP error only sets the socket error: clear it.
            try:
                state.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                pass
        tap = flow.sides[0]
        v4 = tap.eaddr.version == 4
        frames: list[bytes] = []
        for _ in range(RECV_BATCH):
            try:
                data = state.sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                trace(log, "ping flow %d: receive error %s", flow.id, e)
                continue
            if len(data) < _ECHO.size:
                continue
            if data[0] != (ICMP_ECHOREPLY if v4 else ICMPV6_ECHO_REPLY):
                continue
            msg = bytearray(data)
            struct.pack_into("!HH", msg, 2, 0, state.guest_id)
            if v4:
                struct.pack_into("!H", msg, 2, core.csum_icmp4(msg))
                proto = IPPROTO_ICMP
            else:
                struct.pack_into("!H", msg, 2,
                                 l4_checksum(tap.oaddr, tap.eaddr, IPPROTO_ICMPV6, msg))
                proto = IPPROTO_ICMPV6
            frames.append(ip_frame(self._guest.mac, self._view.our_mac, tap.oaddr, tap.eaddr,
                                   proto, bytes(msg)))
        if frames:
            self._to_guest(frames)

    def _on_close(self, flow: Flow) -> None:
        state: _PingState = flow.data  # type: ignore[assignment]
        self._loop.remove(state.sock.fileno())
        state.sock.close()

    # ---- migration ----
    def export(self, flow: Flow) -> "PingFlowState":
        """What the target needs to re-create a ping flow (its socket is made anew)."""
        tap, host = flow.sides
        return PingFlowState(guest_addr=tap.eaddr, guest_id=tap.eport, dest=tap.oaddr,
                             host_addr=host.eaddr, host_id=host.eport)

    def adopt(self, st: "PingFlowState") -> Flow:
        """Re-create an exported ping flow; the host echo id is kept when it is free (so
        replies still on their way match), else the kernel picks one. Raises FlowRefused or
        OSError."""
        if not (0 <= st.guest_id <= 0xFFFF and 0 <= st.host_id <= 0xFFFF):
            raise ValueError(f"echo id out of range in {st}")   # a hostile migration stream
        version = st.guest_addr.version
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        proto = IPPROTO_ICMP if version == 4 else IPPROTO_ICMPV6
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, proto)
        try:
            try:
                hostsock.bind_outbound(sock, self._view, st.host_addr, st.host_id, always=True)
            except OSError:
                hostsock.bind_outbound(sock, self._view, st.host_addr, 0, always=True)
            host_id = sock.getsockname()[1]
            tap = FlowSide(Pif.TAP, st.guest_addr, st.guest_id, st.dest, st.guest_id)
            host = FlowSide(Pif.HOST, st.host_addr, host_id, fwd.unspecified(version), host_id)
            ftype = FlowType.PING4 if version == 4 else FlowType.PING6
            flow = self._flows.new(ftype, tap, host, self._timeout, self._on_close,
                                   _PingState(sock, st.guest_id))
        except BaseException:
            sock.close()
            raise
        self._loop.add(sock.fileno(), IN, lambda mask, f=flow: self._on_ready(f, mask))
        return flow

    def close_all(self) -> int:
        """Close every ping flow (the guest went away); returns how many were closed."""
        return self._flows.close_types((FlowType.PING4, FlowType.PING6))
