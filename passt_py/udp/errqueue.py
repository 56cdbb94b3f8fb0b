# SPDX-License-Identifier: MIT
"""ICMP errors met by a UDP flow's host socket, relayed to the guest.

Theory of operation: flow sockets enable IP_RECVERR / IPV6_RECVERR (sockets.py); an ICMP error
(port unreachable, fragmentation needed, time exceeded...) then lands on the socket's error
queue, read here with MSG_ERRQUEUE. Each entry carries a sock_extended_err with the ICMP type
and code, the offending node's address, and the payload of the datagram that met the error;
the guest gets the matching ICMP/ICMPv6 error quoting the datagram it sent, rebuilt from that
payload and the flow's guest-side tuple. The error comes from the address the guest talked to,
or from the offending node's address translated for the guest when that is another node.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct

from passt_py.config.log import trace
from passt_py.flow import Flow, Pif
from passt_py.link import fwd
from passt_py.link.ip import IPPROTO_UDP, udp_segment
from passt_py.udp import icmp
from passt_py.udp.context import RECV_SIZE, IPAddr, UdpContext

log = logging.getLogger(__name__)

ERRQUEUE_BATCH = 16      # error-queue entries drained per event

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


class ErrorRelay:
    """Reads flow sockets' error queues and turns what it finds into ICMP for the guest."""

    def __init__(self, ctx: UdpContext) -> None:
        self._ctx = ctx

    def drain(self, flow: Flow, sock: socket.socket) -> None:
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
            self._ctx.to_guest(frames)

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
        view = self._ctx.view
        offender = _parse_offender(raw[_EXTENDED_ERR.size:])
        src: IPAddr | None = tap.oaddr
        if offender is not None and offender != host.eaddr:
            src = fwd.nat_from_host(view, offender, 0)
            if src is None or src.version != tap.oaddr.version:
                src = tap.oaddr
        seg = udp_segment(tap.eaddr, tap.oaddr, tap.eport, tap.oport, payload)
        quoted = icmp.quote_packet(tap.eaddr, tap.oaddr, IPPROTO_UDP, seg)
        trace(log, "UDP flow %d: relaying ICMP type %d code %d from %s", flow.id, etype, code,
              src)
        return icmp.error_frame(view, self._ctx.guest, src, tap.eaddr, etype, code, info,
                                quoted)
