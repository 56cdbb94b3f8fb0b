# SPDX-License-Identifier: MIT
"""A guest's TCP ends played by the test through the test front-end's real rings.

The back-end only sees frames in its TX ring and buffers in its RX ring, so a test can play
the guest's TCP exactly, and slowly or badly where it needs to: hold ACKs back, batch them
with data, keep the RX ring short, advertise a small window. :class:`GuestStack` reads the RX
ring once for all connections and hands each its segments; :class:`GuestConn` is one
connection's end (sequence numbers, the bytes received in order, FINs and RSTs counted).
"""
from __future__ import annotations

import ipaddress
import random
import time
from typing import Iterable

from passt_py.link.ethernet import parse_header
from passt_py.link.ip import parse_ip
from passt_py.tcp.seg import (ACK, FIN, RST, SYN, FrameTemplate, TcpSegment, parse_tcp, seq_add,
                              seq_diff, syn_options)
from tests.frontend import Frontend

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

GUEST_MSS = 1460
GUEST_WS = 7


class GuestConn:
    """One connection's guest end: what it sent, what it received in order, FINs and RSTs."""

    def __init__(self, stack: "GuestStack", ours: IPAddr, our_port: int, peer: IPAddr,
                 peer_port: int) -> None:
        self.stack = stack
        self.tpl = FrameTemplate(ours, peer, our_port, peer_port)
        self.isn = random.getrandbits(32)
        self.snd = seq_add(self.isn, 1)
        self.snd_una = self.snd
        self.rcv = 0
        self.data = bytearray()
        self.fins = 0           # FIN segments seen at the next expected sequence number
        self.fin = False
        self.rsts = 0
        self.segs: list[TcpSegment] = []
        self.ws = GUEST_WS      # our window scale (as offered in our SYN / SYN-ACK)
        self.wnd = 1 << 20      # window we advertise, bytes

    @property
    def key(self) -> tuple[int, int]:
        return self.tpl.sport, self.tpl.dport

    def _raw_wnd(self, scaled: bool = True) -> int:
        return min(self.wnd >> (self.ws if scaled else 0), 0xFFFF)

    def send(self, flags: int, payload: bytes = b"", seq: int | None = None,
             opts: bytes = b"", kick: bool = True, scaled: bool = True) -> None:
        """One frame into the TX ring (the ACK field is what we received so far)."""
        frame = self.tpl.control(self.stack.our_mac, self.stack.mac,
                                 self.snd if seq is None else seq, self.rcv,
                                 flags, self._raw_wnd(scaled), opts, payload)
        self.stack.fe.send_frame(bytes(frame), kick=kick)

    def send_data(self, payload: bytes, flags: int = ACK, kick: bool = True) -> None:
        """In-order data (advances our sequence number)."""
        self.send(flags, payload, kick=kick)
        self.snd = seq_add(self.snd, len(payload) + (1 if flags & FIN else 0))

    def send_fin(self, kick: bool = True) -> None:
        self.send_data(b"", FIN | ACK, kick=kick)

    def ack(self, kick: bool = True) -> None:
        self.send(ACK, kick=kick)

    def take(self, seg: TcpSegment) -> None:
        """A segment from the back-end: in-order bytes kept, FIN/RST counted."""
        self.segs.append(seg)
        if seg.flags & RST:
            self.rsts += 1
            return
        if seg.flags & ACK and seq_diff(seg.ack, self.snd_una) > 0 and \
                seq_diff(seg.ack, self.snd) <= 0:
            self.snd_una = seg.ack
        start = seq_diff(self.rcv, seg.seq)        # bytes of it we already have
        if seg.payload and 0 <= start < len(seg.payload):
            self.data += seg.payload[start:]
            self.rcv = seq_add(self.rcv, len(seg.payload) - start)
        if seg.flags & FIN:
            end = seq_add(seg.seq, len(seg.payload))
            if end == self.rcv and not self.fin:
                self.rcv = seq_add(self.rcv, 1)
                self.fin = True
                self.fins += 1
            elif self.fin and seq_add(end, 1) == self.rcv:
                self.fins += 1          # the same FIN again


class GuestStack:
    """The guest's TCP over one front-end: demultiplexes RX frames to its connections."""

    def __init__(self, fe: Frontend, addr: IPAddr, gw: IPAddr, mac: bytes,
                 our_mac: bytes) -> None:
        self.fe = fe
        self.addr, self.gw = addr, gw
        self.mac, self.our_mac = mac, our_mac
        self.conns: dict[tuple[int, int], GuestConn] = {}
        self.syns: list[tuple[IPAddr, TcpSegment]] = []   # (source, SYN) not accepted yet
        self.stray: list[TcpSegment] = []

    def poll(self, timeout: float = 0.05, recycle: bool = True) -> int:
        """Read what the RX ring holds (waiting up to ``timeout``); segments handed out."""
        n = 0
        for frame in self.fe.recv_frames(512, timeout=timeout, recycle=recycle):
            eth = parse_header(frame)
            pkt = parse_ip(frame, eth.ethertype)
            if pkt is None or pkt.proto != 6 or pkt.dst != self.addr:
                continue
            seg = parse_tcp(pkt.l4)
            if seg is None:
                continue
            n += 1
            conn = self.conns.get((seg.dport, seg.sport))
            if conn is not None:
                conn.take(seg)
            elif seg.flags & SYN and not seg.flags & ACK:
                self.syns.append((pkt.src, seg))
            else:
                self.stray.append(seg)
        return n

    def connect(self, port: int, sport: int | None = None, wnd: int = 1 << 20,
                timeout: float = 5.0) -> GuestConn:
        """Open a connection to the gateway's ``port`` (the host's loopback)."""
        conn = GuestConn(self, self.addr, sport or random.randint(20000, 60000), self.gw, port)
        conn.wnd = wnd
        self.conns[conn.key] = conn
        conn.send(SYN, seq=conn.isn, opts=syn_options(GUEST_MSS, conn.ws), scaled=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            for seg in conn.segs:
                if seg.flags & (SYN | ACK) == SYN | ACK and seg.ack == conn.snd:
                    conn.rcv = seq_add(seg.seq, 1)
                    conn.segs.clear()
                    conn.ack()
                    return conn
        raise AssertionError("no SYN-ACK through the rings")

    def accept(self, port: int, wnd: int = 1 << 20, timeout: float = 5.0,
               answer: bool = True) -> GuestConn:
        """The back-end's SYN for an inbound connection to our ``port``; answered unless
        ``answer`` is False (then :meth:`GuestConn` ``.send(SYN|ACK...)`` is the test's)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            for src, seg in self.syns:
                if seg.dport == port:
                    self.syns.remove((src, seg))
                    conn = GuestConn(self, self.addr, port, src, seg.sport)
                    conn.wnd = wnd
                    conn.rcv = seq_add(seg.seq, 1)
                    self.conns[conn.key] = conn
                    if answer:
                        synack(conn)
                    return conn
        raise AssertionError(f"no SYN for port {port} through the rings")

    def run(self, conns: Iterable[GuestConn], until, timeout: float = 10.0,
            ack: bool = True) -> bool:
        """Poll, ACKing what arrived (one kick for all), until ``until()``; False on timeout."""
        conns = list(conns)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = [(c.rcv, len(c.segs)) for c in conns]
            self.poll()
            if ack:
                moved = [c for c, b in zip(conns, before) if (c.rcv, len(c.segs)) != b]
                for c in moved:
                    c.ack(kick=False)
                if moved:
                    self.fe.kick_tx()
            if until():
                return True
        return until()


def synack(conn: GuestConn) -> None:
    """Answer the back-end's SYN: our SYN-ACK with MSS and window scale."""
    conn.send(SYN | ACK, seq=conn.isn, opts=syn_options(GUEST_MSS, conn.ws), scaled=False)
