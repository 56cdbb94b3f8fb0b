# SPDX-License-Identifier: MIT
"""Real virtqueues in memfd guest memory, both ends in the test: the C data path tests' rig.

Shared by tests/test_tcp_path.py, tests/test_udp_path.py, tests/test_fastpath.py and
tests/test_fast_tcp.py. :class:`Rig` is guest RAM with an RX and a TX ring started device-side
(tests/virtq_driver.py plays the guest driver); :class:`Wait` is an epoll set with a
core.FastPath, as the service's loop has them. The ``rig`` and ``wait`` fixtures are imported
by name into the test modules that use them.
"""
from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time

import pytest
from scapy.all import IP, UDP, Ether, raw

from passt_py import core
from passt_py.core import VRING_F_LOG, GuestMemory, TcpPath, Virtqueue
from tests.virtq_driver import DriverRing, GuestRam, read_chain  # noqa: F401 (shared)

BASE = 0x100000
SIZE = 16 << 20
HDR = 12
GUEST_MAC = bytes.fromhex("525400000001")
OUR_MAC = bytes.fromhex("9a5500000002")
GUEST4 = ipaddress.IPv4Address("10.0.2.15")
GW4 = ipaddress.IPv4Address("10.0.2.2")
#: (our address, the guest's) per IP version, for UDP templates.
ADDRS = {4: (ipaddress.IPv4Address("10.0.2.2"), ipaddress.IPv4Address("10.0.2.15")),
         6: (ipaddress.IPv6Address("fd00::2"), ipaddress.IPv6Address("fd00::15"))}
LOOP = {4: "127.0.0.1", 6: "::1"}


def ip16(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The 16-byte form of an address in the C core's records and tables: IPv6 as it is,
    IPv4 mapped (::ffff:a.b.c.d), as RFC 4291 2.5.5.2 lays it out."""
    a = ipaddress.ip_address(addr)
    return ipaddress.IPv6Address(f"::ffff:{a}").packed if a.version == 4 else a.packed


def E() -> Ether:
    """An Ethernet header with both addresses given (scapy never resolves anything)."""
    return Ether(src=GUEST_MAC.hex(":"), dst=OUR_MAC.hex(":"))


class Rig:
    """Guest RAM with an RX and a TX ring, both started device-side; a call eventfd each."""

    def __init__(self, num: int = 256, log: bool = False, event_idx: bool = False) -> None:
        self.ram = GuestRam(((BASE, SIZE),))
        self.mem = GuestMemory()
        self.ram.map_into(self.mem)
        self.rx = DriverRing(self.ram, num)
        self.tx = DriverRing(self.ram, num)
        self.calls_fd = []
        self.vqs = []
        for i, ring in enumerate((self.rx, self.tx)):
            vq = Virtqueue(self.mem, i)
            vq.set_num(num)
            vq.set_features(event_idx, False)
            call = os.eventfd(0, os.EFD_NONBLOCK)
            vq.set_call_fd(os.dup(call))
            desc, used, avail, log_addr = ring.vring_addr()
            vq.set_addr(desc, used, avail, log_addr, VRING_F_LOG if log else 0)
            vq.start()
            self.vqs.append(vq)
            self.calls_fd.append(call)
        self.rxq, self.txq = self.vqs
        self.path = TcpPath(self.rxq)

    def rx_calls(self) -> int:
        """Signals on the RX call eventfd since the last look."""
        try:
            return struct.unpack("<Q", os.read(self.calls_fd[0], 8))[0]
        except BlockingIOError:
            return 0

    def rx_frames(self, mergeable: bool = True) -> list[tuple[bytes, bytes, int]]:
        """(virtio-net header, frame, chains used) of each RX frame published since last time."""
        out = []
        used = self.rx.pop_used()
        i = 0
        while i < len(used):
            head, length = used[i]
            if length == 0:
                i += 1
                continue
            first = read_chain(self.rx, head, length)
            nbuf = struct.unpack_from("<H", first, 10)[0] if mergeable else 1
            parts = [first] + [read_chain(self.rx, h, n) for h, n in used[i + 1:i + nbuf]]
            blob = b"".join(parts)
            out.append((blob[:HDR], blob[HDR:], nbuf))
            i += nbuf
        return out

    def close(self) -> None:
        for vq in self.vqs:
            vq.close()
        self.mem.clear()
        for fd in self.calls_fd:
            os.close(fd)
        self.ram.close()




@pytest.fixture
def rig():
    """Factory for Rigs, closed at teardown."""
    made: list[Rig] = []

    def make(**kw) -> Rig:
        made.append(Rig(**kw))
        return made[-1]
    yield make
    for r in made:
        r.close()


def send_tx(rig: Rig, frames: list[bytes], splits: list | None = None,
            vnet: list[bytes] | None = None, most: int = 64) -> core.TxBatch:
    """Put frames on the TX ring (optionally split / with headers) and pop them as a batch."""
    for i, frame in enumerate(frames):
        hdr = vnet[i] if vnet else bytes(HDR)
        rig.tx.add_tx_buffer(frame, hdr, split=splits[i] if splits else None)
    batch = rig.txq.pop_tx(most, HDR)
    assert batch.count == len(frames)
    return batch


# ---- the fast path's wait ----

class Wait:
    """An epoll set and a FastPath, as the service's loop has them."""

    def __init__(self, max_entries: int = 64) -> None:
        self.ep = select.epoll()
        self.fast = core.FastPath(max_entries)

    def poll(self, timeout: float = 0.05) -> list[tuple[int, int]]:
        return self.fast.poll(self.ep.fileno(), timeout)

    def close(self) -> None:
        self.ep.close()


@pytest.fixture
def wait():
    """A :class:`Wait`, closed at teardown."""
    w = Wait()
    yield w
    w.close()


def kick_rig(r: Rig, wait: Wait) -> int:
    """A TX kick eventfd for ``r``'s TX ring, watched by ``wait``'s epoll set and fast path."""
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    wait.ep.register(kick, select.EPOLLIN)
    wait.fast.set_tx(r.txq, kick)
    return kick


# ---- UDP towards the guest ----

def udp_pair(family: int) -> tuple[socket.socket, socket.socket]:
    """(ours, peer): ours connected to peer, both on loopback; ours non-blocking."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    ours, peer = socket.socket(fam, socket.SOCK_DGRAM), socket.socket(fam, socket.SOCK_DGRAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ours.bind((LOOP[family], 0))
    peer.bind((LOOP[family], 0))
    ours.connect(peer.getsockname()[:2])
    peer.connect(ours.getsockname()[:2])
    ours.setblocking(False)
    return ours, peer


def udp_templates(family: int, peers: list | None = None) -> core.UdpTemplates:
    """Frame templates from ADDRS[family]: one (port 4242 to the guest's 40000), or one per
    peer (ports 5000 + i)."""
    src, dst = ADDRS[family]
    if peers is None:
        t = core.UdpTemplates(1)
        t.set(0, GUEST_MAC, OUR_MAC, src, dst, 4242, 40000)
        t.n = 1
        return t
    t = core.UdpTemplates(len(peers))
    for i, peer in enumerate(peers):
        t.set(i, GUEST_MAC, OUR_MAC, src, dst, 5000 + i, 40000, peer=peer)
    t.n = len(peers)
    return t


def wait_queued(sock: socket.socket) -> None:
    """Loopback delivers synchronously; a short pause covers a busy machine (bounded)."""
    time.sleep(0.02)


def udp_checksum_valid(frame: bytes, family: int) -> bool:
    """Recompute with scapy: the frame's UDP checksum must be what scapy computes."""
    pkt = Ether(frame)
    got, got_ip = pkt[UDP].chksum, pkt[IP].chksum if family == 4 else None
    del pkt[UDP].chksum
    if family == 4:
        del pkt[IP].chksum
    again = Ether(raw(pkt))
    return again[UDP].chksum == got and (family == 6 or again[IP].chksum == got_ip)


def tcp_template(family: int = 4, **kw) -> core.TcpTemplate:
    """A flow template: remote 203.0.113.9:443 (or 2001:db8::9) to guest 10.0.0.2:40000."""
    if family == 4:
        src, dst = ipaddress.ip_address("203.0.113.9"), ipaddress.ip_address("10.0.0.2")
    else:
        src, dst = ipaddress.ip_address("2001:db8::9"), ipaddress.ip_address("fd00::2")
    args = dict(sport=443, dport=40000, seq=1000, ack=5000, window=12345, mss=1460)
    args.update(kw)
    return core.TcpTemplate(GUEST_MAC, OUR_MAC, src, dst, **args)
