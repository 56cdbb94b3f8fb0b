# SPDX-License-Identifier: MIT
"""Opening TCP connections: the guest's SYN, an accepted -t connection, a migrated one.

Theory of operation: each way in makes a host socket ready (non-blocking, peek offset on,
big buffers where the system allows, the guest's MSS towards a remote peer), a TcpState with
an RFC 6528 initial sequence number, a flow in the table and a connection core; the handler
then runs the connection. A SYN that cannot be served (no route, full table, refused
connect) gets an RST at once.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from passt_py.config.log import trace
from passt_py.flow import Flow, FlowRefused, FlowSide, FlowType, Pif
from passt_py.link import fwd, hostsock
from passt_py.loop import ERR, HUP, IN, OUT
from passt_py.tcp.connection import Connection
from passt_py.tcp.conn import WS_OURS, default_mss
from passt_py.tcp.seg import ACK, RST, FrameTemplate, TcpSegment, rst_reply, seq_add
from passt_py.tcp.sockets import (ET, LINGER0, SO_PEEK_OFF, addr_of, big_buffers, clamp_mss,
                                  is_loopback, peer_is_local, sockaddr)
from passt_py.tcp.state import IPAddr, Phase, TcpState

if TYPE_CHECKING:
    from passt_py.tcp.handler import TcpHandler
    from passt_py.tcp.listen import Listener

log = logging.getLogger(__name__)


class TcpOpener:
    """Builds connections around new or restored host sockets for the handler."""

    def __init__(self, handler: TcpHandler) -> None:
        self._h = handler
        self._secret = os.urandom(16)
        self.big_snd, self.big_rcv = big_buffers()

    def isn(self, a: IPAddr, ap: int, b: IPAddr, bp: int) -> int:
        """RFC 6528: M + F(localip, localport, remoteip, remoteport, secretkey)."""
        h = hashlib.blake2b(a.packed + ap.to_bytes(2, "big") + b.packed + bp.to_bytes(2, "big"),
                            key=self._secret, digest_size=4).digest()
        return (int.from_bytes(h, "big") + time.monotonic_ns() // 4000) & 0xFFFFFFFF

    def set_bufsize(self, sock: socket.socket) -> None:
        """Big buffers, where the system allows them (sockets.big_buffers)."""
        for size, opt in ((self.big_snd, socket.SO_SNDBUF), (self.big_rcv, socket.SO_RCVBUF)):
            if size:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:
                    pass

    def outbound(self, tap: FlowSide, seg: TcpSegment) -> None:
        """The guest's SYN for a new tuple: connect() a host socket (the SYN-ACK goes out
        once it completes), or answer with an RST."""
        target = fwd.nat_from_guest(self._h.view, tap.oaddr, tap.oport)
        pkt_rst = (tap.eaddr, tap.oaddr)
        if target is None or self._h.flows.full:
            if self._h.flows.full:
                self._h.flows.refuse()
            self._rst_syn(pkt_rst, seg)
            return
        family = socket.AF_INET if target.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        mss = seg.mss or default_mss(tap.eaddr.version)
        try:
            if not is_loopback(target):
                clamp_mss(sock, mss)
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            self.set_bufsize(sock)
            hostsock.bind_outbound(sock, self._h.view, target)      # -o, --outbound-if4/6
            err = sock.connect_ex(sockaddr(target, tap.oport))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            local_addr, local_port = addr_of(sock.getsockname())
        except OSError as e:
            trace(log, "TCP: connect to %s:%d failed: %s", target, tap.oport, e)
            sock.close()
            self._rst_syn(pkt_rst, seg)
            return
        st = TcpState(version=tap.eaddr.version, guest_addr=tap.eaddr, guest_port=tap.eport,
                      our_addr=tap.oaddr, our_port=tap.oport, inbound=False,
                      phase=Phase.CONNECTING, seq_from_guest=seq_add(seg.seq, 1),
                      isn_guest=seg.seq, wnd_from_guest=seg.wnd, mss_guest=mss)
        if seg.ws is not None:
            st.ws_from_guest, st.ws_to_guest = seg.ws, WS_OURS
        isn = self.isn(tap.oaddr, tap.oport, tap.eaddr, tap.eport)
        st.isn_ours = st.seq_to_guest = st.seq_acked_by_guest = isn
        c = Connection(self._h.new_core(st), sock, peer_is_local(target, local_addr))
        host = FlowSide(Pif.HOST, target, tap.oport, local_addr, local_port)
        try:
            c.flow = self._h.flows.new(FlowType.TCP, tap, host, self._h.idle_timeout,
                                       self._h.on_close, c)
        except FlowRefused as e:
            trace(log, "TCP: flow refused: %s", e)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            sock.close()
            self._rst_syn(pkt_rst, seg)
            return
        self._watch(c)
        self._h.timers.arm(c, self._h.connect_timeout)
        trace(log, "new TCP flow %r", c.flow)

    def _rst_syn(self, addrs: tuple[IPAddr, IPAddr], seg: TcpSegment) -> None:
        guest_addr, our_addr = addrs
        frame = rst_reply(our_addr, guest_addr, seg, *self._h.macs())
        if frame is not None:
            self._h.to_guest([frame])

    def inbound(self, lst: Listener, sock: socket.socket, peer: tuple[object, ...]) -> None:
        """A connection accepted on a -t port: our SYN to the guest's address, from the
        peer's address as the guest must see it (refused: the peer gets an RST)."""
        sock.setblocking(False)
        self.set_bufsize(sock)
        flow = None
        try:
            peer_addr, peer_port = addr_of(peer)
            local_addr, local_port = addr_of(sock.getsockname())
            src = fwd.nat_from_host(self._h.view, peer_addr, peer_port) if self._h.view.tcp \
                else None
            dst = fwd.guest_address(self._h.view, self._h.guest, lst.version)
            if src is None or dst is None or src.version != dst.version:
                raise FlowRefused("no guest address for this family")
            st = TcpState(version=dst.version, guest_addr=dst, guest_port=lst.target_port,
                          our_addr=src, our_port=peer_port, inbound=True, phase=Phase.SYN_SENT)
            isn = self.isn(src, peer_port, dst, lst.target_port)
            st.isn_ours = st.seq_to_guest = st.seq_acked_by_guest = isn
            st.ws_to_guest = 0                   # until the guest's SYN-ACK says otherwise
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            c = Connection(self._h.new_core(st), sock, peer_is_local(peer_addr, local_addr))
            tap = FlowSide(Pif.TAP, dst, lst.target_port, src, peer_port)
            host = FlowSide(Pif.HOST, peer_addr, peer_port, local_addr, local_port)
            flow = self._h.flows.new(FlowType.TCP, host, tap, self._h.idle_timeout,
                                     self._h.on_close, c)
        except (FlowRefused, OSError, ValueError) as e:
            trace(log, "TCP forward port %d: connection refused: %s", lst.port, e)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            except OSError:
                pass
            sock.close()
            return
        c.flow = flow
        self._watch(c)
        self._h.run(c, c.core.syn())
        trace(log, "new forwarded TCP flow %r", flow)

    def adopt(self, state: TcpState, sock: socket.socket) -> Flow:
        """Rebuild a connection from ``state`` around a connected host socket.

        The socket's receive queue must start at seq_acked_by_guest (unacknowledged data is
        still queued there); sending resumes from the guest's last ACK (in-flight frames may
        have been lost with the old guest link) with the peek offset at zero. Raises
        FlowRefused if the tuple is taken or the table is full.
        """
        st = replace(state)
        if st.phase != Phase.ESTABLISHED:
            raise FlowRefused(f"cannot adopt a connection in phase {st.phase!r}")
        sock.setblocking(False)
        self.set_bufsize(sock)     # the restore may have forced bigger ones: the next hop
        conn = self._h.new_core(st)
        resume = conn.adopted()
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        local_addr, local_port = addr_of(sock.getsockname())
        peer_addr, peer_port = addr_of(sock.getpeername())
        c = Connection(conn, sock, peer_is_local(peer_addr, local_addr))
        tap = FlowSide(Pif.TAP, st.guest_addr, st.guest_port, st.our_addr, st.our_port)
        host = FlowSide(Pif.HOST, peer_addr, peer_port, local_addr, local_port)
        first, second = (host, tap) if st.inbound else (tap, host)
        c.flow = self._h.flows.new(FlowType.TCP, first, second, self._h.idle_timeout,
                                   self._h.on_close, c)
        try:
            self._watch(c)
        except OSError:
            st.phase = Phase.CLOSED          # the caller owns and closes the socket
            self._h.flows.close(c.flow)
            raise
        self._h.run(c, resume)
        self._h.loop.defer(lambda: self._h.resync(c))
        return c.flow

    def reset_guest_end(self, state: TcpState) -> None:
        """A migrated connection that could not be rebuilt here: RST to the guest's end now,
        rather than on its next segment (an application that only waits would never learn).
        Our SND.NXT is the guest's RCV.NXT or within its window (then it answers with a
        challenge ACK, which meets no flow and gets the RST it needs)."""
        tpl = FrameTemplate(state.our_addr, state.guest_addr, state.our_port, state.guest_port)
        dst_mac, src_mac = self._h.macs()
        self._h.to_guest([tpl.control(dst_mac, src_mac, state.seq_to_guest,
                                      state.seq_from_guest, RST | ACK, 0)])

    def _watch(self, c: Connection) -> None:
        """The socket's events, edge-triggered, to the handler."""
        self._h.loop.add(c.fd, IN | OUT | ERR | HUP | ET, lambda m, c=c: self._h.on_sock(c, m))
