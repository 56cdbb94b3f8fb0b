# SPDX-License-Identifier: MIT
"""A minimal guest-side TCP endpoint for handler-level tests of passt_py.tcp.handler.

``TcpEnv`` wires a TcpHandler to a real loop and a frame sink; ``GuestPeer`` plays one guest
connection: it builds segments as the guest would send them, and reads the handler's frames
for its port (cumulative ACKs, in-order data only, a ``drop`` hook to lose frames on purpose).
"""
from __future__ import annotations

import ipaddress
import random
import socket
import time
from typing import Callable

from l4_helpers import GUEST4, GUEST6, GUEST_MAC, GW4, GW6, OUR_MAC, Sink, make_guest, make_view

from passt_py.flow import FlowTable
from passt_py.link.ethernet import parse_header
from passt_py.link.ip import IPPROTO_TCP, parse_ip
from passt_py.loop import EventLoop
from passt_py.tcp.handler import TcpHandler
from passt_py.tcp.seg import (ACK, FIN, RST, SYN, FrameTemplate, TcpSegment, parse_tcp, seq_add,
                              seq_diff, syn_options)

FAMILY = {4: (socket.AF_INET, "127.0.0.1", GUEST4, GW4),
          6: (socket.AF_INET6, "::1", GUEST6, GW6)}


class Received:
    """One segment the handler sent to the guest, with the frame it came in."""

    def __init__(self, frame: bytes, src, dst, seg: TcpSegment) -> None:
        self.frame, self.src, self.dst, self.seg = frame, src, dst, seg


class TcpEnv:
    """A TcpHandler on a real loop; frames to the guest are routed to GuestPeers."""

    def __init__(self, max_flows: int = 4096, **kwargs) -> None:
        self.loop = EventLoop()
        self.view = make_view()
        self.guest = make_guest()
        self.flows = FlowTable(self.loop, max_flows=max_flows, sweep_interval=0.02)
        self.sink = Sink()
        kwargs.setdefault("rto", 0.2)
        self.tcp = TcpHandler(self.loop, self.view, self.guest, self.flows, self.sink, **kwargs)
        self.peers: dict[tuple[int, int], "GuestPeer"] = {}
        self.unclaimed: list[Received] = []
        self.accepting: dict[int, dict] = {}     # guest port -> GuestPeer kwargs
        self.socks: list[socket.socket] = []

    def inject(self, frame: bytes) -> None:
        """Hand one guest frame to the handler, as the demux does."""
        eth = parse_header(frame)
        pkt = parse_ip(frame, eth.ethertype)
        assert pkt is not None and pkt.proto == IPPROTO_TCP
        self.tcp.from_guest(pkt)

    def dispatch(self) -> None:
        """Route every frame the handler queued to its peer (by guest port)."""
        frames, self.sink.frames = self.sink.frames, []
        for frame in frames:
            eth = parse_header(frame)
            pkt = parse_ip(frame, eth.ethertype)
            assert pkt is not None and pkt.proto == IPPROTO_TCP, "not a TCP frame"
            seg = parse_tcp(pkt.l4)
            assert seg is not None, "the handler sent a malformed segment"
            rec = Received(bytes(frame), pkt.src, pkt.dst, seg)
            peer = self.peers.get((seg.dport, seg.sport))
            if peer is None and seg.flags & (SYN | ACK) == SYN and seg.dport in self.accepting:
                version = pkt.src.version
                peer = GuestPeer(self, version, seg.dport, pkt.src, seg.sport,
                                 **self.accepting[seg.dport])
            if peer is None:
                self.unclaimed.append(rec)
            else:
                peer.on_segment(rec)

    def pump(self, cond: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Run loop and peers until ``cond()`` holds or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.loop.run_once(0.005)
            self.dispatch()
            for peer in list(self.peers.values()):
                peer.tick()
            if cond():
                return True
        return cond()

    def listener(self, version: int) -> socket.socket:
        family, addr, _g, _gw = FAMILY[version]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.socks.append(sock)
        return sock

    def guest_connection(self, version: int, gport: int = 40000,
                         **kw) -> tuple[GuestPeer, socket.socket]:
        """A guest connection to a new loopback listener, established both ends: (guest
        end, the accepted non-blocking host socket); ``kw`` goes to GuestPeer."""
        lst = self.listener(version)
        peer = GuestPeer(self, version, gport, FAMILY[version][3], lst.getsockname()[1], **kw)
        assert peer.connect(), "no SYN-ACK"
        assert peer.established
        return peer, self.accept(lst)

    def accept(self, lst: socket.socket, timeout: float = 5.0) -> socket.socket:
        """The next connection on ``lst``, non-blocking, closed with the environment."""
        box: list[socket.socket] = []

        def accepted() -> bool:
            try:
                box.append(lst.accept()[0])
            except BlockingIOError:
                return False
            return True
        assert self.pump(accepted, timeout), "the host never saw the connection"
        box[0].setblocking(False)
        self.socks.append(box[0])
        return box[0]

    def close(self) -> None:
        self.tcp.stop_forwards()
        self.tcp.close_all()
        for sock in self.socks:
            sock.close()
        self.loop.close()


class GuestPeer:
    """One guest-side connection (the guest's stack, reduced to what the tests need)."""

    def __init__(self, env: TcpEnv, version: int, gport: int, raddr, rport: int,
                 mss: int = 1460, ws: int | None = 7, wnd: int = 65535,
                 guest_addr=None) -> None:
        self.env = env
        self.version = version
        self.gaddr = guest_addr or FAMILY[version][2]
        self.gport, self.raddr, self.rport = gport, raddr, rport
        self.tpl = FrameTemplate(self.gaddr, raddr, gport, rport)
        self.mss, self.ws_offer, self.wnd_bytes = mss, ws, wnd
        self.isn = random.getrandbits(32)
        self.snd_nxt = self.snd_una = self.isn
        self.rcv_nxt: int | None = None
        self.ws_peer = 0        # shift applied to windows the handler advertises
        self.ws_ours = 0        # shift applied to windows we advertise
        self.peer_wnd = 0
        self.data = bytearray()
        self.log: list[Received] = []
        self.established = False
        self.fin_rcvd = False
        self.rst_rcvd = False
        self.auto_ack = True
        self.drop: Callable[[Received], bool] | None = None
        self.ack_due = False
        self.pending = b""      # data to send (send_stream)
        self.pending_off = 0    # offset of snd_una in pending
        self.stream_base = self.isn   # sequence number of pending[0] (set by send_stream)
        self.last_progress = time.monotonic()
        self.rto = 0.3
        env.peers[(gport, rport)] = self

    # ---- sending ----
    def raw(self, flags: int, seq: int | None = None, ack: int | None = None,
            payload: bytes = b"", opts: bytes = b"", wnd: int | None = None) -> None:
        """Send one segment exactly as given."""
        if wnd is None:
            wnd = min(0xFFFF, self.wnd_bytes >> self.ws_ours)
        if ack is None:
            ack = self.rcv_nxt or 0
        frame = self.tpl.control(OUR_MAC, GUEST_MAC, self.snd_nxt if seq is None else seq,
                                 ack, flags, wnd, opts, payload)
        self.env.inject(bytes(frame))

    def syn(self) -> None:
        self.raw(SYN, seq=self.isn, ack=0, opts=syn_options(self.mss, self.ws_offer),
                 wnd=min(self.wnd_bytes, 0xFFFF))
        self.snd_nxt = seq_add(self.isn, 1)

    def connect(self, timeout: float = 3.0) -> bool:
        self.syn()
        return self.env.pump(lambda: self.established or self.rst_rcvd, timeout)

    def ack(self) -> None:
        self.raw(ACK)
        self.ack_due = False

    def fin(self) -> None:
        self.raw(FIN | ACK)
        self.snd_nxt = seq_add(self.snd_nxt, 1)

    def rst(self) -> None:
        self.raw(RST | ACK)

    def send_stream(self, data: bytes) -> None:
        """Start sending ``data`` (flow and retransmission handled by tick())."""
        self.pending = data
        self.pending_off = 0
        self.snd_una = self.snd_nxt
        self.stream_base = self.snd_nxt
        self._fill()

    def stream_done(self) -> bool:
        return bool(self.pending) and self.pending_off >= len(self.pending)

    def _fill(self) -> None:
        if not self.pending:
            return
        sent = seq_diff(self.snd_nxt, self.stream_base)
        acked = seq_diff(self.snd_una, self.stream_base)
        limit = acked + self.peer_wnd
        n = 0
        while sent < len(self.pending) and sent < limit and n < 64:
            size = min(self.mss, len(self.pending) - sent, limit - sent)
            self.raw(ACK, seq=seq_add(self.stream_base, sent),
                     payload=self.pending[sent:sent + size])
            sent += size
            n += 1
        self.snd_nxt = seq_add(self.stream_base, sent)

    # ---- receiving ----
    def on_segment(self, rec: Received) -> None:
        if self.drop is not None and self.drop(rec):
            return
        seg = rec.seg
        self.log.append(rec)
        if seg.flags & RST:
            self.rst_rcvd = True
            return
        if seg.flags & SYN:
            self.rcv_nxt = seq_add(seg.seq, 1)
            if seg.flags & ACK:         # SYN-ACK for our connect
                if seg.ws is not None and self.ws_offer is not None:
                    self.ws_peer, self.ws_ours = seg.ws, self.ws_offer
                self.peer_wnd = seg.wnd
                self.snd_una = seg.ack
                self.established = True
                self.ack()
            return
        if seg.flags & ACK:
            if seq_diff(seg.ack, self.snd_una) > 0:
                self.snd_una = seg.ack
                self.last_progress = time.monotonic()
                if self.pending:
                    self.pending_off = min(len(self.pending), seq_diff(self.snd_una, self.stream_base))
            self.peer_wnd = seg.wnd << self.ws_peer
        if self.rcv_nxt is None:
            return
        if seg.payload:
            if seg.seq == self.rcv_nxt:
                self.data += seg.payload
                self.rcv_nxt = seq_add(self.rcv_nxt, len(seg.payload))
                self.ack_due = True
            elif self.auto_ack:
                self.ack()              # out of order: duplicate ACK at once, as stacks do
        if seg.flags & FIN and seq_add(seg.seq, len(seg.payload)) == self.rcv_nxt:
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            self.fin_rcvd = True
            self.ack_due = True

    def tick(self) -> None:
        """Once per pump: cumulative ACK, keep the stream going, retransmit if stalled."""
        if self.ack_due and self.auto_ack:
            self.ack()
        if self.pending and not self.stream_done():
            if time.monotonic() - self.last_progress > self.rto:
                self.snd_nxt = self.snd_una          # go back and send again
                self.last_progress = time.monotonic()
            self._fill()

    def accept_syn(self, wnd: int | None = None) -> bool:
        """Answer the handler's SYN (inbound connection) with a SYN-ACK."""
        syns = [r for r in self.log if r.seg.flags & SYN]
        if not syns:
            return False
        seg = syns[-1].seg
        if seg.ws is not None and self.ws_offer is not None:
            self.ws_peer, self.ws_ours = seg.ws, self.ws_offer
        self.peer_wnd = seg.wnd
        self.snd_una = self.snd_nxt = seq_add(self.isn, 1)
        self.raw(SYN | ACK, seq=self.isn, ack=self.rcv_nxt,
                 opts=syn_options(self.mss, self.ws_offer),
                 wnd=min(wnd if wnd is not None else self.wnd_bytes, 0xFFFF))
        self.established = True
        return True


def guest_addr(version: int) -> ipaddress._BaseAddress:
    return FAMILY[version][2]
