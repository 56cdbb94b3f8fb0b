# SPDX-License-Identifier: MIT
"""A whole Service on its own thread with the test front-end connected: the rings are real,
the guest is the test. Shared by the TCP and UDP service tests (and the rootless migration
driver): the rig, running code on the service's thread, and :class:`Guest`, the guest end of
one TCP connection through the front-end's rings."""
from __future__ import annotations

import ipaddress
import random
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from passt_py.config.conf import config_from_argv
from passt_py.link.ethernet import parse_header
from passt_py.link.ip import parse_ip
from passt_py.service import Service
from passt_py.tcp.seg import ACK, FIN, RST, SYN, FrameTemplate, parse_tcp, seq_add, syn_options
from tests.frontend import Frontend

#: The guest's addressing in these rigs (IPv4 only, nothing configured by DHCP/NDP).
GUEST = ipaddress.IPv4Address("10.9.8.7")
GW = ipaddress.IPv4Address("10.9.8.1")
GUEST_MAC = bytes.fromhex("525400abcdef")
OUR_MAC = bytes.fromhex("9a559a559a55")
ARGS = ["-a", "10.9.8.7/24", "-g", "10.9.8.1", "-4", "-i", "lo", "--no-dhcp", "--no-ndp",
        "--no-dhcpv6", "--no-ra"]


T = TypeVar("T")


def on_loop(service: Service, fn: Callable[[], T], timeout: float = 5.0) -> T:
    """``fn()`` run on the service's own thread (between two waits of its loop): what the
    back-end holds in C is only consistent there."""
    done = threading.Event()
    box: list[T] = []
    service.loop.defer(lambda: (box.append(fn()), done.set()))
    assert done.wait(timeout), "the service loop did not run the call"
    return box[0]


@contextmanager
def service_with_frontend(tmp_path: Path, rx_buffers: int, mem_size: int = 32 << 20,
                          extra: Sequence[str] = ()) -> Iterator[tuple[Service, Frontend]]:
    """(service, front-end) with ``rx_buffers`` 4 KiB RX buffers offered; stopped after.
    ``extra``: more command-line options (forwards...)."""
    path = str(tmp_path / "vu.sock")
    service = Service(config_from_argv(["--vhost-user", "-s", path, *ARGS, *extra]))
    thread = threading.Thread(target=service.loop.run, daemon=True)
    thread.start()
    fe = Frontend(path, mem_size=mem_size).connect_all()
    try:
        fe.provide_rx(rx_buffers, 4096)
        yield service, fe
    finally:
        fe.close()
        service.loop.stop(0)
        thread.join(5)
        service.close()


class Guest:
    """The guest end of one connection, sending frames through the front-end's TX ring."""

    def __init__(self, fe: Frontend, port: int, sport: int = 43210) -> None:
        self.fe = fe
        self.tpl = FrameTemplate(GUEST, GW, sport, port)
        self.isn = random.getrandbits(32)
        self.snd = seq_add(self.isn, 1)
        self.rcv = 0
        self.data = bytearray()
        self.fin = self.rst = False
        self.mac = GUEST_MAC

    def send(self, flags: int, payload: bytes = b"", seq: int | None = None, opts: bytes = b"",
             wnd: int = 0xFFFF, kick: bool = True) -> None:
        frame = self.tpl.control(OUR_MAC, self.mac, self.snd if seq is None else seq,
                                 self.rcv, flags, wnd, opts, payload)
        self.fe.send_frame(bytes(frame), kick=kick)

    def segments(self, timeout: float = 0.5) -> list:
        out = []
        for frame in self.fe.recv_frames(256, timeout=timeout):
            eth = parse_header(frame)
            pkt = parse_ip(frame, eth.ethertype)
            if pkt is None or pkt.proto != 6:
                continue
            seg = parse_tcp(pkt.l4)
            if seg is None or seg.dport != self.tpl.sport:
                continue
            out.append(seg)
            if seg.flags & RST:
                self.rst = True
            if seg.payload and seg.seq == self.rcv:
                self.data += seg.payload
                self.rcv = seq_add(self.rcv, len(seg.payload))
            if seg.flags & FIN and seq_add(seg.seq, len(seg.payload)) == self.rcv:
                self.rcv = seq_add(self.rcv, 1)
                self.fin = True
        return out

    def connect(self) -> None:
        self.send(SYN, seq=self.isn, opts=syn_options(1460, 7))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for seg in self.segments():
                if seg.flags == SYN | ACK and seg.ack == self.snd:
                    self.rcv = seq_add(seg.seq, 1)
                    self.send(ACK)
                    return
        raise AssertionError("no SYN-ACK through the rings")
