# SPDX-License-Identifier: MIT
"""Fuzz targets: each takes bytes and must return normally whatever the bytes are.

A target raises (and so reports a finding) when the code under test crashes, raises out of a
layer that promises not to, logs an internal error (``log.exception`` catch-alls count: they
hide bugs), breaks an invariant, or disagrees with the pure-Python reference. The same targets
run under atheris (coverage-guided, tests/fuzz/run.py) and under the mutation driver of
tests/fuzz/driver.py (pytest, short budget).

Targets:
- ``virtq``: raw bytes become a split ring (descriptor table, avail and used rings, indirect
  tables) in real guest memory; the C core pops TX and pushes RX, and passt_py.ref.virtq does the
  same on a copy: results and guest memory must agree byte for byte.
- ``checksum``: every checksum entry point of the C core (each implementation, odd offsets,
  iovecs) against passt_py.ref.checksum.
- ``iov``: readv_all/writev_all through a pipe with random slicing and resume offsets.
- ``frames``: one guest frame through tap.GuestLink with ARP, DHCP, DHCPv6, NDP, ICMP, UDP
  and TCP handlers attached (in a private network namespace: see netns_guard), then a normal
  ARP exchange must still work.
- ``migrate``: a migration stream (re-sealed with a correct checksum unless it starts with
  0xFF) loaded into a target back-end's flow table by passt_py.migrate.target.load_bytes.
- ``vhost``: a sequence of vhost-user messages (any request, payload, descriptors) into a
  Session over the real NetDevice; after each, the TX ring is drained and a frame pushed to RX.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import struct
from typing import Callable

from passt_py import core
from passt_py.ref import checksum as ref_csum
from passt_py.ref import virtq as ref_vq


class Finding(AssertionError):
    """The code under test misbehaved on this input."""


class ErrorLogTrap(logging.Handler):
    """Turns any ERROR record (with or without traceback) from passt_py into a finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        """Raise a Finding for the first trapped record (and forget them)."""
        if self.records:
            rec, self.records = self.records[0], []
            text = self.format(rec) if rec.exc_info is None else logging.Formatter().format(rec)
            raise Finding(f"error logged by {rec.name}: {text}")


_trap: ErrorLogTrap | None = None


def error_trap() -> ErrorLogTrap:
    """The process-wide trap on the ``passt_py`` logger (installed once), emptied."""
    global _trap
    if _trap is None:
        _trap = ErrorLogTrap()
        logger = logging.getLogger("passt_py")
        logger.addHandler(_trap)
        if logger.level == logging.NOTSET or logger.level > logging.ERROR:
            logger.setLevel(logging.WARNING)
    # Called at the start of each target run: what was logged before (other tests in the same
    # process, their helper threads) is not this input's doing.
    _trap.records.clear()
    return _trap


class Reader:
    """Consumes fuzz bytes as integers and slices; past the end everything is zero."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return max(0, len(self.data) - self.pos)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little")

    def pick(self, options: list | tuple):
        return options[self.uint(1) % len(options)]


# ---- virtq: C against the reference on raw rings ----
VQ_BASE = 0x10000
VQ_SIZE = 0x10000
VQ_LAYOUT = ((VQ_BASE, VQ_SIZE), (VQ_BASE + VQ_SIZE, VQ_SIZE), (VQ_BASE + 4 * VQ_SIZE, VQ_SIZE))
_UVA = 0x7F00_0000_0000


def _ram():
    from tests.virtq_driver import GuestRam
    return GuestRam(VQ_LAYOUT, uva_base=_UVA)


def fuzz_virtq(data: bytes) -> None:
    """Raw ring bytes: C pop_tx/push_rx and the reference agree on results and memory."""
    r = Reader(data)
    num = 1 << (r.uint(1) % 6)                     # 1..32
    event_idx, indirect, tx = bool(r.uint(1) & 1), bool(r.uint(1) & 1), bool(r.uint(1) & 1)
    hdr_len = r.pick((0, 10, 12))
    mergeable = bool(r.uint(1) & 1)
    base = r.uint(2)
    max_frames = 1 + r.uint(1) % 16
    max_iov = 1 + r.uint(1) % 24
    ram = _ram()
    try:
        # ring areas in region 0; the rest of memory is filled with a pattern
        desc_gpa, avail_gpa, used_gpa = VQ_BASE, VQ_BASE + 0x1000, VQ_BASE + 0x2000
        ram.mm[:] = bytes((i * 7 + 3) & 0xFF for i in range(256)) * (ram.file_size // 256)
        # descriptors: addr picked near interesting places, then raw fields from the input
        spots = [VQ_BASE + 0x4000, VQ_BASE + 0x8000, VQ_BASE + VQ_SIZE - 24,
                 VQ_BASE + 2 * VQ_SIZE - 24, VQ_BASE + 3 * VQ_SIZE, VQ_BASE + 4 * VQ_SIZE + 8,
                 2**64 - 16, 0, VQ_BASE + 0x3000]
        table = bytearray()
        for _ in range(num):
            addr = (r.pick(spots) + r.uint(2) % 512) % 2**64
            length = r.uint(2) % 600
            flags = r.uint(1) & 7
            nxt = r.uint(1) % (num + 2)
            table += struct.pack("<QIHH", addr, length, flags, nxt)
        ram.write(desc_gpa, bytes(table))
        # an indirect table at +0x3000 (referenced by addr spot 8)
        ind = bytearray()
        for _ in range(4):
            ind += struct.pack("<QIHH", (r.pick(spots[:6]) + r.uint(1)) % 2**64,
                               r.uint(2) % 400, r.uint(1) & 7, r.uint(1) % 6)
        ram.write(VQ_BASE + 0x3000, bytes(ind))
        avail_flags = r.uint(1) & 1
        nheads = r.uint(1) % (num + 3)
        avail_idx = (base + nheads) & 0xFFFF
        if r.uint(1) == 0xFF:
            avail_idx = r.uint(2)                  # sometimes lie about the index
        ring = struct.pack("<HH", avail_flags, avail_idx)
        ring += b"".join(struct.pack("<H", r.uint(1) % (num + 2)) for _ in range(num))
        ring += struct.pack("<H", (base + r.uint(1)) & 0xFFFF)      # used_event
        ram.write(avail_gpa, ring)
        ram.write(used_gpa, struct.pack("<HH", 0, base) + bytes(8 * num + 2))
        uva = ram.uva
        mem = core.GuestMemory()
        ram.map_into(mem)
        vq = core.Virtqueue(mem, 0)
        try:
            vq.set_num(num)
            vq.set_features(event_idx, indirect)
            vq.set_addr(uva(desc_gpa), uva(used_gpa), uva(avail_gpa), used_gpa, 0)
            vq.set_base(base)
            vq.start()
            rmem = ref_vq.RefMemory(bytearray(ram.snapshot()),
                                    [ref_vq.RefRegion(x.gpa, x.size, x.uva, x.offset)
                                     for x in ram.regions])
            rvq = ref_vq.RefVirtqueue(rmem, num, uva(desc_gpa), uva(used_gpa), uva(avail_gpa),
                                      used_gpa, 0, event_idx, indirect, base)
            if tx:
                _virtq_tx(vq, rvq, max_frames, max_iov, hdr_len)
            else:
                frames = [r.take(r.uint(1) * 3) for _ in range(1 + r.uint(1) % 5)]
                _virtq_rx(vq, rvq, frames, hdr_len, mergeable)
            if vq.stop() != rvq.last_avail:
                raise Finding("next avail index differs from the reference")
            if ram.snapshot() != bytes(rmem.buf):
                raise Finding("guest memory differs from the reference")
        finally:
            vq.close()
            mem.clear()
    finally:
        ram.close()


def _virtq_tx(vq, rvq, max_frames: int, max_iov: int, hdr_len: int) -> None:
    try:
        b = vq.pop_tx(max_frames, hdr_len, core.TxBatch(max_frames, max_iov))
    except core.CoreError as e:
        if e.errno != errno.EIO:
            raise Finding(f"pop_tx failed with {e}") from None
        try:
            rvq.pop_tx(max_frames, hdr_len, max_iov)
        except ref_vq.RingBroken:
            return
        raise Finding("C calls the ring broken, the reference does not") from None
    got = [(b.head(i), b.frame(i)) for i in range(b.count)]
    for i in range(b.count):
        if len(b.frame(i)) != b.frame_len(i):
            raise Finding("frame_len disagrees with the frame's slices")
    got_bad = b.bad_chains()
    notified = vq.release(b)
    want, want_bad = rvq.pop_tx(max_frames, hdr_len, max_iov)
    want_notified = rvq.release([h for h, _ in want] + [h for h, _ in want_bad])
    if got != want:
        raise Finding(f"TX frames differ: C {got!r:.300} ref {want!r:.300}")
    if got_bad != [(h, core.VQ_ERRORS[k]) for h, k in want_bad]:
        raise Finding(f"TX bad chains differ: C {got_bad} ref {want_bad}")
    if notified != want_notified:
        raise Finding("TX notification differs")


def _virtq_rx(vq, rvq, frames: list[bytes], hdr_len: int, mergeable: bool) -> None:
    try:
        n = vq.push_rx(frames, hdr_len, mergeable)
    except core.CoreError as e:
        if e.errno != errno.EIO:
            raise Finding(f"push_rx failed with {e}") from None
        try:
            rvq.push_rx(frames, hdr_len, mergeable)
        except ref_vq.RingBroken:
            return
        raise Finding("C calls the ring broken, the reference does not") from None
    res = vq.last_rx
    want = rvq.push_rx(frames, hdr_len, mergeable)
    if (n, res.placed, res.dropped, res.bad, res.notified) != want:
        raise Finding(f"RX result differs: C {(n, res)} ref {want}")


# ---- checksum ----
def fuzz_checksum(data: bytes) -> None:
    """Each C checksum function equals the reference on the same bytes."""
    r = Reader(data)
    off = r.uint(1) % 8
    init = r.uint(2)
    body = r.take(r.left())
    buf = bytearray(off) + bytearray(body)
    view = memoryview(buf)[off:]
    want = ref_csum.csum_partial(body, init)
    if core.csum_partial(view, init) != want:
        raise Finding("csum_partial differs")
    for impl in core.csum_impls():
        if core.csum_partial_impl(impl, view, init) != want:
            raise Finding(f"csum_partial_impl({impl}) differs")
    cuts = sorted({c % (len(body) + 1) for c in body[:6]})
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    if core.csum_iov(pieces, init) != ref_csum.csum_iov(pieces, init):
        raise Finding("csum_iov differs")
    if core.csum_fold(want) != ref_csum.csum_fold(want):
        raise Finding("csum_fold differs")
    if len(body) >= 20:
        hdr = body[:20 + 4 * (body[0] % 11)] if len(body) >= 64 else body[:20]
        _same("csum_ipv4_header", core.csum_ipv4_header, ref_csum.csum_ipv4_header, hdr)
    if len(body) >= 32:
        src4, dst4, src6, dst6 = body[:4], body[4:8], body[:16], body[16:32]
        seg = body[32:]
        for proto in (6, 17, 1, 58, body[0]):
            _same("csum_l4_ipv4", core.csum_l4_ipv4, ref_csum.csum_l4_ipv4, src4, dst4, proto,
                  seg)
            _same("csum_l4_ipv6", core.csum_l4_ipv6, ref_csum.csum_l4_ipv6, src6, dst6, proto,
                  seg)
        _same("csum_icmp4", core.csum_icmp4, ref_csum.csum_icmp4, seg)


def _same(what: str, c_fn, ref_fn, *args) -> None:
    """C and reference give the same value, or both refuse the input."""
    def outcome(fn):
        try:
            return fn(*args)
        except (ValueError, core.CoreError):
            return "refused"
    got, want = outcome(c_fn), outcome(ref_fn)
    if got != want:
        raise Finding(f"{what} differs: C {got} reference {want} for {args!r:.200}")


# ---- iov ----
def fuzz_iov(data: bytes) -> None:
    """writev_all then readv_all through a pipe move exactly the bytes, from any offset."""
    r = Reader(data)
    payload = r.take(min(r.left(), 60000))
    skip = r.uint(2) % (len(payload) + 1)
    cuts = sorted({r.uint(2) % (len(payload) + 1) for _ in range(r.uint(1) % 12)})
    bounds = [0] + cuts + [len(payload)]
    pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        done = core.writev_all(wfd, pieces, skip)
        if done != len(payload):
            raise Finding(f"writev_all reached {done}, not {len(payload)}")
        os.close(wfd)
        wfd = -1
        sinks = [bytearray(len(p)) for p in pieces]
        got = core.readv_all(rfd, sinks, skip)
        whole = b"".join(sinks)
        if whole[skip:] != payload[skip:] or got != len(payload):
            raise Finding("readv_all did not return what writev_all wrote")
        if core.readv_all(rfd, [bytearray(4)], 0) != 0:
            raise Finding("readv_all past end of file read something")
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


# ---- frames through the guest link ----
OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("525400123456")
GUEST4 = ipaddress.IPv4Address("10.0.2.15")
GW4 = ipaddress.IPv4Address("10.0.2.2")
DNS4 = ipaddress.IPv4Address("10.0.2.3")
GUEST6 = ipaddress.IPv6Address("fd00:abcd::15")
GW6 = ipaddress.IPv6Address("fe80::1")


class FrameRig:
    """A GuestLink with every handler of the service attached, delivering into a list.

    Must be built and used inside tests.fuzz.netns_guard.private_netns(): the handlers open
    real sockets towards wherever the frames say.
    """

    def __init__(self, max_flows: int = 64) -> None:
        from passt_py.flow import FlowTable
        from passt_py.link.dhcp import DhcpServer
        from passt_py.link.dhcpv6 import Dhcpv6Server
        from passt_py.link.ndp import NdpResponder
        from passt_py.link.netview import GuestState, Ip4View, Ip6View, NetView
        from passt_py.link.tap import GuestLink
        from passt_py.loop import EventLoop
        from passt_py.udp.handler import UdpHandler
        from passt_py.udp.icmp import IcmpHandler
        self.loop = EventLoop()
        ip4 = Ip4View(addr=GUEST4, prefix_len=24, gateway=GW4, dns=(DNS4,),
                      map_host_loopback=GW4, dns_match=DNS4,
                      dns_host=ipaddress.IPv4Address("127.0.0.53"))
        ip6 = Ip6View(addr=GUEST6, prefix_len=64, gateway=GW6, our_ll=GW6,
                      dns=(ipaddress.IPv6Address("fd00:abcd::3"),), map_host_loopback=GW6)
        self.view = NetView(our_mac=OUR_MAC, mtu=65520, ip4=ip4, ip6=ip6,
                            search=("example.test",), hostname="guest", fqdn="guest.example.test")
        self.guest = GuestState()
        self.flows = FlowTable(self.loop, max_flows=max_flows)
        self.out: list[bytes] = []
        self.link = GuestLink(self.view, self.guest, self._deliver, self.loop.defer)
        link = self.link
        link.dhcp = DhcpServer(self.view)
        link.dhcpv6 = Dhcpv6Server(self.view, duid_time=1)
        link.ndp = NdpResponder(self.view)
        args = (self.loop, self.view, self.guest, self.flows, link.to_guest)
        self.icmp = link.icmp = IcmpHandler(*args)
        self.udp = link.udp = UdpHandler(*args)
        from passt_py.tcp.handler import TcpHandler
        self.tcp = link.tcp = TcpHandler(*args)

    def serve_tcp_echo(self, port: int = 9, limit: int = 256) -> None:
        """A TCP echo server on 127.0.0.1:``port`` run by the rig's loop, so guest connections
        to the gateway get established and see data both ways (at most ``limit`` at once)."""
        import socket

        from passt_py.loop import IN
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", port))
        lsock.listen(1024)
        lsock.setblocking(False)
        self._echo_conns: list[socket.socket] = []
        self._echo_listener = lsock

        def on_conn(conn: socket.socket, _mask: int) -> None:
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                try:
                    conn.send(data)
                except OSError:
                    pass
                return
            self.loop.remove(conn.fileno())
            self._echo_conns.remove(conn)
            conn.close()

        def on_accept(_mask: int) -> None:
            while True:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    return
                conn.setblocking(False)
                if len(self._echo_conns) >= limit:
                    old = self._echo_conns.pop(0)
                    self.loop.remove(old.fileno())
                    old.close()
                self._echo_conns.append(conn)
                self.loop.add(conn.fileno(), IN, lambda mask, c=conn: on_conn(c, mask))

        self.loop.add(lsock.fileno(), IN, on_accept)

    def _deliver(self, frames: list[bytes]) -> int:
        self.out.extend(bytes(f) for f in frames)    # bytes-like: keep copies
        return len(frames)

    def feed(self, frames: list[bytes], spins: int = 2) -> list[bytes]:
        """Hand a TX batch to the link, run the loop a little; the frames sent to the guest."""
        self.out = []
        self.link.from_guest(frames)
        for _ in range(spins):
            self.loop.run_once(0)
        return self.out

    def arp_still_works(self) -> bool:
        """A normal ARP request for the gateway is answered."""
        from scapy.layers.l2 import ARP, Ether
        req = bytes(Ether(src=GUEST_MAC, dst=b"\xff" * 6) /
                    ARP(op=1, hwsrc=GUEST_MAC, psrc=str(GUEST4), pdst=str(GW4)))
        for frame in self.feed([req]):
            if len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\0\2":
                return True
        return False

    def close(self) -> None:
        for conn in getattr(self, "_echo_conns", []):
            conn.close()
        if getattr(self, "_echo_listener", None) is not None:
            self._echo_listener.close()
        self.icmp.close_all()
        self.udp.close_all()
        if self.tcp is not None:
            self.tcp.close_all()
            self.tcp.stop_forwards()
        self.udp.stop_forwards()
        self.flows.close_all()
        self.loop.close()


_frame_rig: FrameRig | None = None


def frame_rig() -> FrameRig:
    """The process-wide rig (the caller is already in a private namespace)."""
    global _frame_rig
    if _frame_rig is None:
        _frame_rig = FrameRig()
        _frame_rig.serve_tcp_echo()
    return _frame_rig


def fuzz_frames(data: bytes) -> None:
    """Any frame (or several, split at 0xFFFE-length markers) leaves the link working."""
    from tests.fuzz import netns_guard
    if not netns_guard.only_loopback():
        raise RuntimeError("fuzz_frames must run in a private network namespace")
    trap = error_trap()
    rig = frame_rig()
    frames = data.split(b"\xff\xfe\xff\xfe")[:8]
    rig.feed(frames)
    trap.check()
    if len(rig.flows) > rig.flows.max_flows:
        raise Finding("flow table above its limit")
    if not rig.arp_still_works():
        raise Finding("ARP no longer answered after a hostile frame")
    trap.check()


# ---- vhost-user message sequences into a session over the real device ----
REQUESTS = list(range(0, 50))


def new_fd(kind: int, memfd: int) -> int:
    """A fresh descriptor to attach to a message: guest memory, an eventfd, the read end of a
    closed pipe, or /dev/null (``kind`` modulo 4)."""
    kind %= 4
    if kind == 0:
        return os.dup(memfd)
    if kind == 1:
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    if kind == 2:
        r, w = os.pipe2(os.O_CLOEXEC)
        os.close(w)
        return r
    return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)


class VhostRig:
    """A Session over a real NetDevice with real memfd memory; fds made fresh per message."""

    MEM = 1 << 20

    def __init__(self) -> None:
        from passt_py.vhost_user.device import NetDevice
        from passt_py.vhost_user.session import Session
        self.device = NetDevice()
        self.session = Session(self.device)
        self.memfd = os.memfd_create("fuzz-guest", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, self.MEM)

    def fd(self, kind: int) -> int:
        """A new descriptor of some kind for a message (the session takes or closes it)."""
        return new_fd(kind, self.memfd)

    def close(self) -> None:
        self.session.reset()
        self.device.reset()
        os.close(self.memfd)


def vhost_payload(r: Reader, request: int) -> bytes:
    """A payload that is often well-formed for ``request``, with hostile numbers."""
    from passt_py.vhost_user.wire import (U64, LogDescription, MemoryRegion, MemoryTable, Request,
                                          VringAddr, VringState)
    mode = r.uint(1) % 8
    if mode == 0:
        return r.take(r.uint(1))                          # raw junk of any size
    uva = 0x7F00_0000_0000
    addr = lambda: r.pick((uva, uva + 0x1000, uva + VhostRig.MEM - 8, 0, 2**64 - 8,  # noqa: E731
                           uva + r.uint(3), r.uint(8)))
    if request in (Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.GET_VRING_BASE,
                   Request.SET_VRING_ENABLE):
        return VringState(r.uint(1) % 4, r.pick((0, 1, 2, 16, 256, 32768, 65536, r.uint(4)))
                          ).encode()
    if request == Request.SET_VRING_ADDR:
        return VringAddr(r.uint(1) % 4, r.uint(1) & 1, addr(), addr(), addr(), r.uint(4)).encode()
    if request in (Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR):
        return U64((r.uint(1) % 4) | (0x100 if r.uint(1) & 1 else 0)).encode()
    if request == Request.SET_MEM_TABLE:
        regions = tuple(MemoryRegion(r.pick((0, 0x100000, r.uint(8))),
                                     r.pick((VhostRig.MEM, 0x1000, 0, r.uint(8))),
                                     r.pick((uva, uva + VhostRig.MEM, r.uint(8))),
                                     r.pick((0, 0x1000, VhostRig.MEM, r.uint(8))))
                        for _ in range(r.uint(1) % 10))
        return MemoryTable(regions).encode()
    if request == Request.SET_LOG_BASE:
        return LogDescription(r.pick((4096, 0, 2**64 - 1, r.uint(4))), r.uint(2)).encode()
    if request == Request.SET_DEVICE_STATE_FD:
        return struct.pack("=II", r.uint(1) % 3, r.uint(1) % 3)
    return U64(r.pick((0, 2**64 - 1, r.uint(8)))).encode()


def fuzz_vhost(data: bytes) -> None:
    """Message sequences never raise out of the session, leak no fd, and keep the device sane."""
    from passt_py.vhost_user import wire
    from passt_py.vhost_user.session import Reply
    from passt_py.vhost_user.wire import Message
    trap = error_trap()
    r = Reader(data)
    before = len(os.listdir("/proc/self/fd"))
    rig = VhostRig()
    try:
        for _ in range(1 + r.uint(1) % 24):
            if not r.left():
                break
            request = r.pick(REQUESTS)
            flags = wire.VERSION | (wire.FLAG_NEED_REPLY if r.uint(1) & 1 else 0)
            if r.uint(1) == 0xFF:
                flags = r.uint(4)
            payload = vhost_payload(r, request)
            fds = [rig.fd(r.uint(1) % 4) for _ in range(r.pick((0, 1, 1, 1, 2, 9)))]
            outputs = rig.session.handle(Message(request, flags, payload), fds)
            for out in outputs:
                if isinstance(out, Reply) and not out.message.flags & wire.FLAG_REPLY:
                    raise Finding("a reply without the reply flag")
                fd = getattr(out, "fd", None)
                if fd is not None and type(out).__name__ == "DeviceStateTransfer":
                    os.close(fd)
                    rig.session.finish_device_state(0)
            trap.check()
            _exercise_device(rig.device)
            trap.check()
    finally:
        rig.close()
    after = len(os.listdir("/proc/self/fd"))
    if after > before:
        raise Finding(f"{after - before} descriptor(s) leaked by the session/device")


def _exercise_device(device) -> None:
    """What the loop would do: drain TX, push a frame to RX; errors must be contained."""
    from passt_py.vhost_user.device import TX
    for index in (0, 1):
        device.consume_kick(index)
    for _ in range(4):
        batch = device.tx_batch(16)
        if batch is None:
            break
        try:
            for i in range(batch.count):
                batch.frame(i)
        finally:
            device.release(batch)
    device.send_frames([b"\x01" * 64, b"\x02" * 1500])
    device.kick_fd(TX)


# ---- migration streams into a target back-end ----
_migrate_rig: FrameRig | None = None


def migrate_context(rig: FrameRig, **options):
    """The MigrationContext of a rig, as the service builds it (direct TCP_REPAIR if allowed);
    ``options``: more MigrationContext fields (``migrate_exit=True``...)."""
    from passt_py.migrate import repair as tcp_repair
    from passt_py.migrate.context import MigrationContext
    return MigrationContext(loop=rig.loop, view=rig.view, guest=rig.guest,
                            flows=rig.flows, icmp=rig.icmp, udp=rig.udp, tcp=rig.tcp,
                            repair=tcp_repair.RepairControl(None), **options)


def seal_stream(body: bytes) -> bytes:
    """``body`` (header and sections) followed by a correct end marker and checksum."""
    import hashlib

    from passt_py.migrate.codec import DIGEST_LEN, SEC_END, SECTION
    end = SECTION.pack(SEC_END, 0, DIGEST_LEN)
    return body + end + hashlib.sha256(body + end).digest()


def _check_no_traceback(trap: ErrorLogTrap) -> None:
    """A Finding for the first record logged with a traceback (a catch-all caught a bug);
    plain error records (a flow that could not be rebuilt) are expected here."""
    tracebacks = [r for r in trap.records if r.exc_info]
    trap.records.clear()
    if tracebacks:
        trap.records.append(tracebacks[0])
        trap.check()


def _forget_guest(rig: FrameRig) -> None:
    """Reset the rig's GuestState in place (the handlers share the object) to a new one's."""
    import dataclasses

    from passt_py.link.netview import GuestState
    fresh = GuestState()
    for f in dataclasses.fields(fresh):
        setattr(rig.guest, f.name, getattr(fresh, f.name))


def fuzz_migrate(data: bytes) -> None:
    """A stream (usually re-sealed with a correct checksum, so the parsers are reached) is
    refused with MigrationError, leaving the target as it was (guest state, no flow), or
    applied; nothing else escapes, no traceback is logged (during the load or while the loop
    runs afterwards), the flow table keeps its limit, and the link still answers afterwards."""
    import copy

    from passt_py.migrate.codec import MigrationError
    from passt_py.migrate.target import activate, load_bytes
    from tests.fuzz import netns_guard
    if not netns_guard.only_loopback():
        raise RuntimeError("fuzz_migrate must run in a private network namespace")
    global _migrate_rig
    if _migrate_rig is None:
        _migrate_rig = FrameRig()
    rig = _migrate_rig
    trap = error_trap()
    stream = data[1:] if data[:1] == b"\xff" else seal_stream(data)
    ctx = migrate_context(rig)
    _forget_guest(rig)            # as a fresh target: whatever a stream applies shows
    guest_before = copy.deepcopy(rig.guest)
    if len(rig.flows):
        raise Finding(f"{len(rig.flows)} flows before the load")
    try:
        report = load_bytes(ctx, stream)
    except MigrationError:
        report = None
        # Everything is validated before anything is applied: a refusal changes nothing.
        if rig.guest != guest_before:
            raise Finding("a refused stream changed the guest state") from None
        if len(rig.flows):
            raise Finding(f"a refused stream left {len(rig.flows)} flows") from None
    if report is not None:
        activate(ctx, report)              # target post: restored TCP sockets to the handler
    _check_no_traceback(trap)
    if len(rig.flows) > rig.flows.max_flows:
        raise Finding("flow table above its limit after a load")
    for handler in (rig.icmp, rig.udp, rig.tcp):
        if handler is not None:
            handler.close_all()
    if len(rig.flows):
        raise Finding(f"{len(rig.flows)} flows left after close_all")
    if report is not None and getattr(report, "pending", None):
        raise Finding("restored TCP sockets left pending after activate")
    if not rig.arp_still_works():
        raise Finding("ARP no longer answered after a migration load")
    _check_no_traceback(trap)     # deferred work of the adopted flows ran in that exchange


TARGETS: dict[str, Callable[[bytes], None]] = {
    "virtq": fuzz_virtq,
    "checksum": fuzz_checksum,
    "iov": fuzz_iov,
    "frames": fuzz_frames,
    "vhost": fuzz_vhost,
    "migrate": fuzz_migrate,
}
#: Targets that open network sockets and so must run in a private network namespace.
NEEDS_NETNS = {"frames", "migrate"}
