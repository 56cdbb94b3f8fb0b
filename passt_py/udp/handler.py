"""UDP translation: guest datagrams through per-flow host sockets, and -u port forwarding.

Theory of operation — guest-initiated flows: the first datagram of a new (guest address,
source port, destination, destination port) tuple creates a UDP flow. Its host socket is bound,
like passt, to the same port number the guest used (SO_REUSEADDR, so several flows from one
guest port can share it; each is connected to its own peer and the kernel prefers connected
sockets), falling back to an ephemeral port when the port is taken. It is connected to the
destination after address translation (passt_py.link.fwd), so the kernel filters what comes back.
Replies are sent to the guest as UDP frames from the address and port the guest talked to.

Host errors: flow sockets enable IP_RECVERR / IPV6_RECVERR; an ICMP error (port unreachable,
fragmentation needed, time exceeded...) lands on the socket's error queue, which is read with
MSG_ERRQUEUE and relayed to the guest as the matching ICMP/ICMPv6 error quoting the datagram the
guest sent (rebuilt from the returned payload and the flow's guest-side tuple).

Port forwarding (-u): for every forwarded host port one listening socket per enabled family
(or for the bind address's family). A datagram from a new host peer creates a flow whose
initiating side is that peer and whose target is the guest's address at the mapped port, with
the peer's address translated (127.0.0.1 -> map_host_loopback, ...). The guest's replies match
the flow's guest-side tuple and leave through the listening socket to the peer.

Timeouts are passt's: UDP_TIMEOUT (30 s) while traffic went one way only, UDP_TIMEOUT_BIDIR
(120 s) once the target side has answered.

Sizes: datagrams up to 65507 (IPv4) / 65527 (IPv6) bytes of payload pass both ways. A datagram
from the host is delivered to the guest whole even when the frame exceeds view.mtu (the RX path
uses mergeable buffers, and a receiving stack accepts packets above its own MTU); only a
datagram that could not be one IP packet is impossible, and the kernel never returns one.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Sequence

from passt_py import core
from passt_py.config.log import trace
from passt_py.config.portspec import Forward, PortForwards
from passt_py.flow import Flow, FlowRefused, FlowSide, FlowTable, FlowTableFull, FlowType, Pif
from passt_py.link import fwd
from passt_py.link.ip import IPPROTO_UDP, IpPacket, UdpDatagram, udp_frame, udp_segment
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import ERR, HUP, IN, EventLoop
from passt_py.migrate.record import WireField
from passt_py.udp import icmp

if TYPE_CHECKING:
    from passt_py.udp.ring import UdpRingPath

log = logging.getLogger(__name__)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

UDP_TIMEOUT = 30.0
UDP_TIMEOUT_BIDIR = 120.0
RECV_BATCH = 64          # datagrams read per readiness event (bounded work per event)
ERRQUEUE_BATCH = 16      # error-queue entries drained per event
RECV_SIZE = 65536
#: Host peers of a -u listener whose datagrams the ring path places itself (most recent
#: first); a datagram from another peer comes back to Python once, which moves it in front.
LISTENER_TEMPLATES = 8
MAX_PAYLOAD4 = 65507
MAX_PAYLOAD6 = 65527

# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>: not all exported by Python 3.11.
SOL_IP = 0
SOL_IPV6 = 41
IP_RECVERR = 11
IPV6_RECVERR = 25
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")   # ee_errno, origin, type, code, pad, info, data

_RELAY_TYPES4 = {icmp.ICMP_DEST_UNREACH, icmp.ICMP_TIME_EXCEEDED, icmp.ICMP_PARAMETERPROB}
_RELAY_TYPES6 = {icmp.ICMPV6_DEST_UNREACH, icmp.ICMPV6_PKT_TOOBIG, icmp.ICMPV6_TIME_EXCEED,
                 icmp.ICMPV6_PARAMPROB}


class _UdpState:
    """A UDP flow's socket; ``peer`` is set (and the socket shared) for forwarded flows."""

    __slots__ = ("sock", "peer", "tmpls", "fast_rx", "fast_tx")

    def __init__(self, sock: socket.socket, peer: tuple[object, ...] | None) -> None:
        self.sock = sock
        self.peer = peer
        self.tmpls: core.UdpTemplates | None = None     # for the ring path
        # core.FastPath generation its entries (host side, guest side) were added in, or -1
        self.fast_rx = -1
        self.fast_tx = -1


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


def _sockaddr(addr: IPAddr, port: int) -> tuple[object, ...]:
    return (str(addr), port) if addr.version == 4 else (str(addr), port, 0, 0)


def _parse_offender(raw: bytes) -> IPAddr | None:
    """The offending node's address from the sockaddr after sock_extended_err, if any."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    try:
        if family == socket.AF_INET and len(raw) >= 8:
            return ipaddress.IPv4Address(raw[4:8])
        if family == socket.AF_INET6 and len(raw) >= 24:
            return ipaddress.IPv6Address(raw[8:24])
    except ValueError:
        return None
    return None


class UdpHandler:
    """UDP flows between the guest and host sockets, plus -u forwarding listeners."""

    def __init__(self, loop: EventLoop, view: NetView, guest: GuestState, flows: FlowTable,
                 to_guest: Callable[[list[bytes]], None], timeout: float = UDP_TIMEOUT,
                 timeout_bidir: float = UDP_TIMEOUT_BIDIR,
                 rx_path: UdpRingPath | None = None, fast: core.FastPath | None = None) -> None:
        self._loop = loop
        self._view = view
        self._guest = guest
        self._flows = flows
        self._to_guest = to_guest
        self._timeout = timeout
        self._timeout_bidir = timeout_bidir
        self._buf = bytearray(RECV_SIZE)
        self._listeners: list[_Listener] = []
        self._rx_path = rx_path
        self._rx_waiting: list[socket.socket] = []   # muted until the guest adds RX buffers
        self._dropped = 0
        # Established flows' datagrams, both ways, handled in C inside the loop's wait; the
        # flow table asks it for the activity it saw before expiring a flow.
        self._fast = fast
        if fast is not None:
            flows.set_activity_probe(FlowType.UDP, self._fast_activity)

    @property
    def dropped(self) -> int:
        """Datagrams lost either way (undeliverable, refused by the host, no flow)."""
        return self._dropped + (int(self._fast.stats().dropped) if self._fast else 0)

    # ---- from the guest ----
    def from_guest(self, pkt: IpPacket, dgram: UdpDatagram) -> None:
        """Send one guest datagram on its flow, creating the flow if it is new."""
        try:
            self._from_guest(pkt, dgram)
        except Exception:  # noqa: BLE001 - malformed input must never escape
            log.exception("error handling a UDP datagram from the guest")

    def take_batch(self, recs: "core.PacketRecords", frames: Sequence[int]) -> list[int]:
        """Send datagrams of known outbound flows straight from guest memory.

        ``frames`` are indices into ``recs`` (a classified TX batch) not taken by anyone yet.
        A well-formed, unsegmented UDP datagram whose flow exists and owns a connected socket
        goes out with the others in one C call (sendmmsg, no copy). Everything else is
        returned, in order, for the copying path, which creates flows, answers DHCP and
        relays errors; a tuple without a flow stays without one for the whole batch, so its
        datagrams all go there. Never raises.
        """
        if not self._view.udp:
            return list(frames)
        rest: list[int] = []
        sent: list[tuple[int, Flow]] = []
        try:
            runs = core.UdpRuns(recs, frames)
            r_ = runs.runs
            for r in range(runs.count):
                run = r_[r]
                flow = (self._flows.lookup_packet(FlowType.UDP, recs, runs.idx[run.first])
                        if run.udp else None)
                # A forwarded flow's replies leave through its listener with sendto().
                state: _UdpState | None = flow.data if flow is not None else None
                if state is None or state.peer is not None:
                    rest += runs.frames(r)
                    continue
                run.fd = state.sock.fileno()
                sent.append((r, flow))  # type: ignore[arg-type]
                if self._fast is not None and state.fast_tx != self._fast.gen:
                    self._fast_tx(flow, state)
            failed = runs.send() if sent else 0
        except Exception:  # noqa: BLE001 - a broken batch is the copying path's business
            log.exception("UDP fast path failed: batch left to the copying path")
            return list(frames)
        for r, flow in sent:
            ok = r_[r].count
            if failed and r_[r].failed:
                for i, code in runs.errors(r):
                    if code == -errno.ECONNREFUSED:
                        # A pending error from an earlier ICMP message, cleared by this
                        # send: retry.
                        rec = recs[i]
                        code = self._resend(flow, recs.read(i, rec.payload_off,
                                                            rec.payload_len))
                    if code:
                        ok -= 1
                        self._dropped += 1
                        trace(log, "UDP flow %d: send failed: %s", flow.id,
                              errno.errorcode.get(-code))
            if ok:
                self._activity(flow, Pif.TAP)
        return rest

    def _resend(self, flow: Flow, payload: bytes) -> int:
        """One more send of a datagram whose first attempt met a stale error: 0 or -errno."""
        state: _UdpState = flow.data  # type: ignore[assignment]
        try:
            state.sock.send(payload)
        except OSError as e:
            return -(e.errno or errno.EIO)
        return 0

    def _from_guest(self, pkt: IpPacket, dgram: UdpDatagram) -> None:
        if not self._view.udp or pkt.src.is_multicast or pkt.src.is_unspecified:
            return
        if dgram.sport == 0 or dgram.dport == 0:
            return
        tap = FlowSide(Pif.TAP, pkt.src, dgram.sport, pkt.dst, dgram.dport)
        flow = self._flows.lookup(FlowType.UDP, tap)
        if flow is None:
            flow = self._new_outbound(tap, pkt)
            if flow is None:
                self._dropped += 1
                return
        state: _UdpState = flow.data  # type: ignore[assignment]
        for attempt in range(2):
            try:
                if state.peer is None:
                    state.sock.send(dgram.payload)
                else:
                    state.sock.sendto(dgram.payload, state.peer)
                break
            except ConnectionRefusedError:
                # A pending error from an earlier ICMP message; it is cleared now: retry once.
                if attempt:
                    self._dropped += 1
                    return
            except OSError as e:
                self._dropped += 1
                trace(log, "UDP flow %d: send failed: %s", flow.id, e)
                return
        self._activity(flow, Pif.TAP)

    # ---- the C fast path's share (core.FastPath) ----
    def _fast_tx(self, flow: Flow, state: _UdpState) -> None:
        """The guest's datagrams of ``flow`` go to its socket from C from now on."""
        fast = self._fast
        assert fast is not None
        tap = flow.side(Pif.TAP)
        if fast.add_tx(tap.eaddr, tap.oaddr, tap.eport, tap.oport, state.sock.fileno()):
            state.fast_tx = fast.gen

    def _fast_forget(self, flow: Flow, state: _UdpState) -> None:
        """Before the socket closes: no C entry may name its fd any more."""
        fast = self._fast
        if fast is None:
            return
        if state.fast_rx == fast.gen:
            fast.remove_rx(state.sock.fileno())
        if state.fast_tx == fast.gen:
            tap = flow.side(Pif.TAP)
            fast.remove_tx(tap.eaddr, tap.oaddr, tap.eport, tap.oport)
        state.fast_rx = state.fast_tx = -1

    def _fast_activity(self, flow: Flow) -> bool:
        """The flow table's probe before expiring ``flow``: did C move datagrams of it since
        last asked? Counted as the Python paths count (host side: bidirectional)."""
        fast = self._fast
        state: _UdpState = flow.data  # type: ignore[assignment]
        if fast is None:
            return False
        rx = fast.rx_count(state.sock.fileno()) if state.fast_rx == fast.gen else 0
        tx = 0
        if state.fast_tx == fast.gen:
            tap = flow.side(Pif.TAP)
            tx = fast.tx_count(tap.eaddr, tap.oaddr, tap.eport, tap.oport)
        if rx:
            self._activity(flow, Pif.HOST)
        if tx:
            self._activity(flow, Pif.TAP)
        return bool(rx or tx)

    def _activity(self, flow: Flow, pif: Pif) -> None:
        """Traffic from side ``pif``: from the target side it makes the flow bidirectional."""
        if flow.sides[1].pif == pif:
            self._flows.touch(flow, self._timeout_bidir)
        else:
            self._flows.touch(flow)

    def _new_outbound(self, tap: FlowSide, pkt: IpPacket) -> Flow | None:
        target = fwd.nat_from_guest(self._view, tap.oaddr, tap.oport)
        if target is None:
            return None
        if self._flows.full:
            self._flows.refuse()
            self._to_guest([icmp.refused_frame(self._view, self._guest, pkt)])
            return None
        for port in (tap.eport, 0):
            try:
                sock = self._flow_socket(target.version, port)
            except OSError as e:
                if port == 0:
                    log.debug("UDP: cannot open a socket for %s: %s", target, e)
                    return None
                continue
            try:
                sock.connect(_sockaddr(target, tap.oport))
                local = sock.getsockname()
                host = FlowSide(Pif.HOST, target, tap.oport,
                                ipaddress.ip_address(local[0]), local[1])
                flow = self._flows.new(FlowType.UDP, tap, host, self._timeout,
                                       self._on_close, _UdpState(sock, None))
            except FlowTableFull:
                sock.close()
                self._to_guest([icmp.refused_frame(self._view, self._guest, pkt)])
                return None
            except (OSError, FlowRefused, ValueError) as e:
                sock.close()
                trace(log, "UDP: flow to %s:%d on port %d not created: %s",
                      target, tap.oport, port, e)
                continue
            self._loop.add(sock.fileno(), IN, lambda mask, f=flow: self._on_flow_ready(f, mask))
            trace(log, "new UDP flow %r", flow)
            return flow
        return None

    def _flow_socket(self, version: int, port: int) -> socket.socket:
        """A non-blocking socket reporting ICMP errors, bound to ``port`` (0: ephemeral)."""
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
            sock.bind(_sockaddr(fwd.unspecified(version), port))
        except OSError:
            sock.close()
            raise
        return sock

    # ---- from the host ----
    def _on_flow_ready(self, flow: Flow, mask: int) -> None:
        """Relay datagrams and errors arriving on a flow's own socket."""
        if flow.closed:
            return
        state: _UdpState = flow.data  # type: ignore[assignment]
        if mask & (ERR | HUP):
            self._drain_errors(flow, state.sock)
        if mask & IN and not flow.closed:
            if self._rx_path is not None and self._rx_path.active:
                self._ring_flow(flow, state)
                return
            frames = []
            tap = flow.side(Pif.TAP)
            for _ in range(RECV_BATCH):
                try:
                    n = state.sock.recv_into(self._buf)
                except BlockingIOError:
                    break
                except OSError as e:
                    # An ICMP error reported through recv (also queued): relay it.
                    trace(log, "UDP flow %d: receive error %s", flow.id, e)
                    self._drain_errors(flow, state.sock)
                    continue
                frames.append(self._frame(tap, memoryview(self._buf)[:n]))
            if frames:
                self._activity(flow, Pif.HOST)
                self._to_guest(frames)

    def _ring_flow(self, flow: Flow, state: _UdpState) -> None:
        """A flow socket's datagrams straight into the guest's RX buffers (udp_ring)."""
        tmpls = state.tmpls
        if tmpls is None or tmpls.mac != self._guest.mac:
            tmpls = state.tmpls = core.UdpTemplates(1)
            self._set_template(tmpls, 0, flow, any_peer=True)
            tmpls.n = 1
        path = self._rx_path
        assert path is not None
        n = path.deliver(state.sock.fileno(), tmpls, RECV_BATCH)
        res = path.last
        self._dropped += res.dropped
        if n:
            self._activity(flow, Pif.HOST)
        fast = self._fast
        if fast is not None and state.fast_rx != fast.gen:
            # From now on C takes this socket's readiness itself (and gives back errors).
            if fast.add_rx(state.sock.fileno(), tmpls):
                state.fast_rx = fast.gen
        if res.stop == core.UDP_STOP_ERROR:
            # An ICMP error reported through recv (also queued): relay it.
            trace(log, "UDP flow %d: receive error %s", flow.id, errno.errorcode.get(-res.err))
            self._drain_errors(flow, state.sock)
        elif res.stop == core.UDP_STOP_NOBUFS:
            self._wait_rx(state.sock)

    def _ring_listener(self, lst: _Listener) -> None:
        """A -u listener's datagrams straight into the guest's RX buffers (udp_ring).

        The C call covers the listener's recent peers; a datagram from another one comes
        back (spilled), takes the copying route once and its flow joins the recent ones.
        """
        path = self._rx_path
        assert path is not None
        for _ in range(RECV_BATCH):          # bounded: each round takes at least a datagram
            tmpls = self._listener_templates(lst)
            path.deliver(lst.sock.fileno(), tmpls, RECV_BATCH)
            res = path.last
            self._dropped += res.dropped
            for i, flow in enumerate(lst.ring_flows):
                if tmpls.take_count(i):
                    self._activity(flow, Pif.HOST)
            if res.stop == core.UDP_STOP_NOBUFS:
                self._wait_rx(lst.sock)
            if res.stop != core.UDP_STOP_UNKNOWN:
                return
            payload, addr, port = path.spilled()
            flow = self._forward_flow(lst, _sockaddr(addr, port))
            if flow is None:
                self._dropped += 1
                continue
            self._activity(flow, Pif.HOST)
            frame = self._frame(flow.side(Pif.TAP), payload)
            if not path.push(frame):
                self._to_guest([frame])     # queued for the guest's next RX buffers
            if flow in lst.ring_flows:
                lst.ring_flows.remove(flow)
            lst.ring_flows.insert(0, flow)
            del lst.ring_flows[LISTENER_TEMPLATES:]
            lst.tmpls = None

    def _listener_templates(self, lst: _Listener) -> core.UdpTemplates:
        """The C templates of a listener's recent flows, rebuilt when they changed."""
        if lst.tmpls is not None and (not lst.ring_flows or lst.tmpls.mac == self._guest.mac) \
                and not any(f.closed for f in lst.ring_flows):
            return lst.tmpls
        lst.ring_flows = [f for f in lst.ring_flows if not f.closed]
        tmpls = lst.tmpls = core.UdpTemplates(LISTENER_TEMPLATES)
        for i, flow in enumerate(lst.ring_flows):
            self._set_template(tmpls, i, flow, any_peer=False)
        tmpls.n = len(lst.ring_flows)        # none yet: every datagram comes back (spilled)
        return tmpls

    def _set_template(self, tmpls: core.UdpTemplates, i: int, flow: Flow,
                      any_peer: bool) -> None:
        """Entry ``i`` of ``tmpls``: the headers of ``flow``'s datagrams to the guest, taken
        from any peer (its own connected socket) or from its host peer only (a listener)."""
        tap, host = flow.side(Pif.TAP), flow.side(Pif.HOST)
        tmpls.set(i, self._guest.mac, self._view.our_mac, tap.oaddr, tap.eaddr, tap.oport,
                  tap.eport, peer=None if any_peer else (host.eaddr, host.eport))

    def _wait_rx(self, sock: socket.socket) -> None:
        """The guest's RX ring is full: stop reading ``sock`` until it adds buffers; what
        arrives meanwhile waits in the socket (the kernel drops only beyond its buffer)."""
        if any(s is sock for s in self._rx_waiting):
            return
        try:
            self._loop.modify(sock.fileno(), 0)
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
                self._loop.modify(sock.fileno(), IN)
            except (OSError, ValueError, KeyError):
                pass

    def _frame(self, tap: FlowSide, payload: bytes | memoryview) -> bytes:
        """The frame of a host datagram for the guest, built in Python (the copying path:
        no ring path, the ring is not running, or the ring path spilled it)."""
        return udp_frame(self._guest.mac, self._view.our_mac, tap.oaddr, tap.eaddr, tap.oport,
                         tap.eport, payload)

    def _drain_errors(self, flow: Flow, sock: socket.socket) -> None:
        """Read the socket's error queue and relay ICMP errors to the guest."""
        frames = []
        for _ in range(ERRQUEUE_BATCH):
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(RECV_SIZE, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            for level, kind, raw in ancdata:
                if (level, kind) not in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
                    continue
                frame = self._error_frame(flow, data, raw)
                if frame is not None:
                    frames.append(frame)
        try:
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)   # clear what is left
        except OSError:
            pass
        if frames:
            self._to_guest(frames)

    def _error_frame(self, flow: Flow, payload: bytes, raw: bytes) -> bytes | None:
        """The guest's ICMP error for one sock_extended_err, or None if not relayed."""
        if len(raw) < _EXTENDED_ERR.size:
            return None
        _eno, origin, etype, code, _pad, info, _data = _EXTENDED_ERR.unpack_from(raw)
        tap = flow.side(Pif.TAP)
        host = flow.side(Pif.HOST)
        if tap.eaddr.version == 4:
            if origin != SO_EE_ORIGIN_ICMP or etype not in _RELAY_TYPES4:
                return None
        elif origin != SO_EE_ORIGIN_ICMP6 or etype not in _RELAY_TYPES6:
            return None
        offender = _parse_offender(raw[_EXTENDED_ERR.size:])
        src: IPAddr | None = tap.oaddr
        if offender is not None and offender != host.eaddr:
            src = fwd.nat_from_host(self._view, offender, 0)
            if src is None or src.version != tap.oaddr.version:
                src = tap.oaddr
        seg = udp_segment(tap.eaddr, tap.oaddr, tap.eport, tap.oport, payload)
        quoted = icmp.quote_packet(tap.eaddr, tap.oaddr, IPPROTO_UDP, seg)
        trace(log, "UDP flow %d: relaying ICMP type %d code %d from %s", flow.id, etype, code,
              src)
        return icmp.error_frame(self._view, self._guest, src, tap.eaddr, etype, code, info,
                                quoted)

    def _on_close(self, flow: Flow) -> None:
        state: _UdpState = flow.data  # type: ignore[assignment]
        if state.peer is None:          # forwarded flows share their listener's socket
            self._fast_forget(flow, state)
            self._loop.remove(state.sock.fileno())
            state.sock.close()

    # ---- port forwarding ----
    def start_forwards(self, rules: PortForwards | Iterable[Forward]) -> int:
        """Open the -u listening sockets; returns how many were bound (failures are logged)."""
        forwards = rules.forwards if isinstance(rules, PortForwards) else tuple(rules)
        bound = failed = 0
        for rule in forwards:
            for port in range(rule.first, rule.last + 1):
                for version in self._rule_versions(rule):
                    try:
                        self._listen(rule, version, port)
                        bound += 1
                    except OSError as e:
                        failed += 1
                        log.debug("UDP forward: cannot bind port %d (IPv%d): %s",
                                  port, version, e)
        if failed:
            log.warning("UDP forwarding: %d of %d listening sockets could not be bound",
                        failed, bound + failed)
        return bound

    def _rule_versions(self, rule: Forward) -> list[int]:
        if rule.bind_addr is not None:
            fam = fwd.family_view(self._view, rule.bind_addr.version)
            return [rule.bind_addr.version] if fam is not None else []
        return [v for v, fam in ((4, self._view.ip4), (6, self._view.ip6)) if fam is not None]

    def _listen(self, rule: Forward, version: int, port: int) -> None:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        addr = rule.bind_addr if rule.bind_addr is not None else fwd.unspecified(version)
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            if version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if rule.ifname is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, rule.ifname.encode())
            sock.bind(_sockaddr(addr, port))
        except OSError:
            sock.close()
            raise
        lst = _Listener(sock, version, addr, port, rule.target(port))
        self._listeners.append(lst)
        self._loop.add(sock.fileno(), IN, lambda mask, l=lst: self._on_listener(l, mask))

    def stop_forwards(self) -> None:
        """Close every listening socket and the flows forwarded through them."""
        listeners, self._listeners = self._listeners, []
        socks = {id(lst.sock) for lst in listeners}
        for flow in list(self._flows):
            if flow.type == FlowType.UDP and id(flow.data.sock) in socks:  # type: ignore[union-attr]
                self._flows.close(flow)
        for lst in listeners:
            self._loop.remove(lst.sock.fileno())
            lst.sock.close()

    def _on_listener(self, lst: _Listener, mask: int) -> None:
        """Datagrams from host peers to a forwarded port: on to the guest."""
        if mask & (ERR | HUP):
            try:
                lst.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                pass
        if mask & IN and self._rx_path is not None and self._rx_path.active:
            self._ring_listener(lst)
            return
        frames = []
        for _ in range(RECV_BATCH):
            try:
                n, peer = lst.sock.recvfrom_into(self._buf)
            except BlockingIOError:
                break
            except OSError as e:
                trace(log, "UDP forward port %d: receive error %s", lst.port, e)
                continue
            flow = self._forward_flow(lst, peer)
            if flow is None:
                self._dropped += 1
                continue
            tap = flow.side(Pif.TAP)
            frames.append(self._frame(tap, memoryview(self._buf)[:n]))
            self._activity(flow, Pif.HOST)
        if frames:
            self._to_guest(frames)

    def _forward_flow(self, lst: _Listener, peer: tuple[object, ...]) -> Flow | None:
        """The flow for datagrams from ``peer`` to ``lst``, created if new (None: drop)."""
        # Per datagram, (listener, peer sockaddr) finds a known flow without address parsing.
        key = (lst.sock.fileno(), peer)
        flow = self._flows.lookup_alias(FlowType.UDP, key)
        if flow is None:
            flow = self._find_or_create_forward(lst, peer)
            if flow is not None:
                self._flows.add_alias(flow, key)
        return flow

    def _find_or_create_forward(self, lst: _Listener,
                                peer: tuple[object, ...]) -> Flow | None:
        try:
            peer_addr = ipaddress.ip_address(str(peer[0]).partition("%")[0])
            peer_port = int(peer[1])  # type: ignore[call-overload]
        except (ValueError, IndexError, TypeError):
            return None
        host = FlowSide(Pif.HOST, peer_addr, peer_port, lst.oaddr, lst.port)
        flow = self._flows.lookup(FlowType.UDP, host)
        if flow is not None:
            return flow
        if not self._view.udp:
            return None
        src = fwd.nat_from_host(self._view, peer_addr, peer_port)
        dst = fwd.guest_address(self._view, self._guest, lst.version)
        if src is None or dst is None:
            return None
        tap = FlowSide(Pif.TAP, dst, lst.target_port, src, peer_port)
        try:
            flow = self._flows.new(FlowType.UDP, host, tap, self._timeout, self._on_close,
                                   _UdpState(lst.sock, peer))
        except FlowRefused as e:
            trace(log, "UDP forward from %s:%d refused: %s", peer_addr, peer_port, e)
            return None
        trace(log, "new forwarded UDP flow %r", flow)
        return flow

    # ---- migration ----
    def export(self, flow: Flow) -> "UdpFlowState":
        """What the target needs to re-create ``flow``: its two tuples and whether it is
        bidirectional (UDP flows have no other state; the socket is re-created, bound alike)."""
        tap, host = flow.side(Pif.TAP), flow.side(Pif.HOST)
        state: _UdpState = flow.data  # type: ignore[assignment]
        return UdpFlowState(forwarded=state.peer is not None,
                            guest_addr=tap.eaddr, guest_port=tap.eport,
                            our_addr=tap.oaddr, our_port=tap.oport,
                            host_addr=host.eaddr, host_port=host.eport,
                            local_addr=host.oaddr, local_port=host.oport,
                            bidir=flow.timeout >= self._timeout_bidir)

    def adopt(self, st: "UdpFlowState") -> Flow:
        """Re-create an exported flow: an outbound one gets a socket bound to the same local
        port (another one if that is taken) and connected to the same peer; a forwarded one
        goes through our listener on the same address and port. Raises FlowRefused/OSError."""
        if not all(0 <= p <= 0xFFFF for p in (st.guest_port, st.our_port, st.local_port,
                                                st.host_port)):
            raise ValueError(f"port out of range in {st}")   # a hostile migration stream
        tap = FlowSide(Pif.TAP, st.guest_addr, st.guest_port, st.our_addr, st.our_port)
        timeout = self._timeout_bidir if st.bidir else self._timeout
        if st.forwarded:
            lst = next((l for l in self._listeners
                        if l.port == st.local_port and l.oaddr == st.local_addr), None)
            if lst is None:
                raise FlowRefused(f"no UDP listener on [{st.local_addr}]:{st.local_port}")
            host = FlowSide(Pif.HOST, st.host_addr, st.host_port, st.local_addr, st.local_port)
            return self._flows.new(FlowType.UDP, host, tap, timeout, self._on_close,
                                   _UdpState(lst.sock, _sockaddr(st.host_addr, st.host_port)))
        version = st.host_addr.version
        try:
            sock = self._flow_socket(version, st.local_port)
        except OSError:
            sock = self._flow_socket(version, 0)
        try:
            sock.connect(_sockaddr(st.host_addr, st.host_port))
            local = sock.getsockname()
            host = FlowSide(Pif.HOST, st.host_addr, st.host_port,
                            ipaddress.ip_address(local[0]), local[1])
            flow = self._flows.new(FlowType.UDP, tap, host, timeout, self._on_close,
                                   _UdpState(sock, None))
        except BaseException:
            sock.close()
            raise
        self._loop.add(sock.fileno(), IN, lambda mask, f=flow: self._on_flow_ready(f, mask))
        return flow

    def close_all(self) -> int:
        """Close every UDP flow (the guest went away); listeners stay. Returns the count."""
        return self._flows.close_types((FlowType.UDP,))

    @property
    def listeners(self) -> int:
        """How many -u listening sockets are open."""
        return len(self._listeners)

