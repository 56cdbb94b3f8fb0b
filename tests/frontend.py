# SPDX-License-Identifier: MIT
"""A vhost-user front-end for tests: what QEMU does, minus the guest, plus hostile input.

It creates guest memory in a memfd (tests/virtq_driver.py's GuestRam), lays out an RX and a TX
split ring in it (DriverRing), connects to a back-end's UNIX socket and negotiates the way QEMU
10 does for a vhost-user net device. Then it plays the guest driver: ``send_frame`` places a
frame on TX and kicks; ``provide_rx`` offers RX buffers and ``recv_frames`` waits on the RX call
eventfd and reassembles (mergeable) frames. ``send_raw`` / ``request`` send arbitrary headers,
payloads and descriptors, for tests that must not be able to hurt the back-end.

Works against the in-process back-end (tests/inproc_backend.py) and a ``passt-py`` process alike:
it only needs the socket path.
"""
from __future__ import annotations

import array
import mmap
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from passt_py.vhost_user import wire
from passt_py.vhost_user.wire import (
    Header, LogDescription, Message, MemoryRegion, MemoryTable, ProtocolFeature, Request, U64,
    VringAddr, VringFile, VringState, bit)
from tests.virtq_driver import PAGE, VNET_HDR_LEN, DriverRing, GuestRam, read_chain

RX = 0
TX = 1

#: What this front-end (like QEMU with a virtio 1.x guest) acknowledges if the back-end offers it.
DEFAULT_FEATURES = (bit(wire.VIRTIO_F_VERSION_1) | bit(wire.VIRTIO_NET_F_MRG_RXBUF)
                    | bit(wire.VIRTIO_RING_F_INDIRECT_DESC)
                    | bit(wire.VHOST_USER_F_PROTOCOL_FEATURES))
#: Protocol features this front-end knows.
DEFAULT_PROTOCOL = (bit(ProtocolFeature.MQ) | bit(ProtocolFeature.LOG_SHMFD)
                    | bit(ProtocolFeature.RARP) | bit(ProtocolFeature.REPLY_ACK)
                    | bit(ProtocolFeature.DEVICE_STATE))


class FrontendError(Exception):
    """The back-end answered wrongly (or not at all)."""


def spawn_passt_py(path: str, extra: Sequence[str] = (), timeout: float = 10.0
                   ) -> subprocess.Popen:
    """Start ``passt-py --vhost-user`` in the foreground on ``path``; wait until it accepts.

    The caller stops it by PID (``proc.terminate()`` then ``proc.wait()``).
    """
    argv = [sys.executable, "-m", "passt_py", "--vhost-user", "--foreground", "--socket", path,
            *extra]
    with tempfile.TemporaryFile() as output:  # a file, not a pipe: a chatty child never blocks
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output.seek(0)
                text = output.read().decode(errors="replace")
                raise FrontendError(f"passt-py exited with {proc.returncode}: {text}")
            if os.path.exists(path):
                return proc
            time.sleep(0.02)
        proc.terminate()
        proc.wait(5)
    raise FrontendError(f"passt-py did not create {path} within {timeout} s")


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


class Frontend:
    """One vhost-user connection with its own guest memory and rings."""

    def __init__(self, path: str, mem_size: int = 32 << 20, ring_size: int = 256,
                 timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self._connect(path)
        self.ram = GuestRam(((0, mem_size),))
        self.ring_size = ring_size
        self.rings = [DriverRing(self.ram, ring_size), DriverRing(self.ram, ring_size)]
        self.kick = [_eventfd(), _eventfd()]
        self.call = [_eventfd(), _eventfd()]
        self.features = 0
        self.protocol_features = 0
        self.rx_heads: list[int] = []
        self._tx_done: list[tuple[int, int]] = []
        self.rx_refused: list[int] = []
        self._rx_pending: list[tuple[int, int]] = []
        #: The rings' next avail indexes as save_state() stopped them (to start them again).
        self.stopped_bases: tuple[int, int] | None = None

    def _connect(self, path: str) -> None:
        """Connect, retrying briefly while a just-started back-end is between bind and listen."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.sock.connect(path)
                return
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise
                time.sleep(0.02)

    # ---- raw messages ----
    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes as they are, with descriptors attached to the first byte."""
        anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
               if fds else [])
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (),
             need_reply: bool = False) -> None:
        """Send one well-framed message."""
        flags = wire.VERSION | (wire.FLAG_NEED_REPLY if need_reply else 0)
        self.send_raw(Message(request, flags, payload).encode(), fds)

    def recv_reply(self, request: int | None = None) -> Message:
        """Read one reply (checking its request code when given)."""
        hdr = Header.decode(self._recv_exact(wire.HEADER_SIZE))
        payload = self._recv_exact(hdr.size) if hdr.size else b""
        if not hdr.flags & wire.FLAG_REPLY:
            raise FrontendError(f"message {hdr.request} without the reply flag")
        if request is not None and hdr.request != request:
            raise FrontendError(f"reply to {hdr.request}, expected {request}")
        return Message(hdr.request, hdr.flags, payload)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise FrontendError("back-end closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, request: int, payload: bytes = b"", fds: Sequence[int] = (),
                need_reply: bool | None = None) -> Message | None:
        """Send a request and read its reply if one is due (own reply or REPLY_ACK)."""
        own = request in (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                          Request.GET_QUEUE_NUM, Request.GET_VRING_BASE,
                          Request.SET_DEVICE_STATE_FD, Request.CHECK_DEVICE_STATE) or (
            request == Request.SET_LOG_BASE
            and self.protocol_features & bit(ProtocolFeature.LOG_SHMFD))
        if need_reply is None:
            need_reply = bool(self.protocol_features & bit(ProtocolFeature.REPLY_ACK)) and not own
        self.send(request, payload, fds, need_reply)
        if own or (need_reply and self.protocol_features & bit(ProtocolFeature.REPLY_ACK)):
            return self.recv_reply(request)
        return None

    def ack(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> int:
        """Send with NEED_REPLY (REPLY_ACK negotiated) and return the u64 status."""
        reply = self.request(request, payload, fds, need_reply=True)
        if reply is None:
            raise FrontendError("REPLY_ACK not negotiated")
        return U64.decode(reply.payload).value

    def get_u64(self, request: int) -> int:
        """A GET_* request with a u64 reply."""
        reply = self.request(request)
        assert reply is not None
        return U64.decode(reply.payload).value

    # ---- negotiation, as QEMU 10 does it ----
    def negotiate(self, features: int = DEFAULT_FEATURES,
                  protocol: int = DEFAULT_PROTOCOL) -> None:
        """Feature and protocol negotiation, owner, early call/err descriptors."""
        offered = self.get_u64(Request.GET_FEATURES)
        if offered & bit(wire.VHOST_USER_F_PROTOCOL_FEATURES):
            offered_proto = self.get_u64(Request.GET_PROTOCOL_FEATURES)
            self.protocol_features = offered_proto & protocol
            self.request(Request.SET_PROTOCOL_FEATURES, U64(self.protocol_features).encode(),
                         need_reply=False)
            if self.protocol_features & bit(ProtocolFeature.MQ):
                if self.get_u64(Request.GET_QUEUE_NUM) < 1:
                    raise FrontendError("back-end offers no queue pair")
        self.request(Request.SET_OWNER)
        self.get_u64(Request.GET_FEATURES)
        for index in (RX, TX):
            self.request(Request.SET_VRING_CALL, VringFile(index, False).encode(),
                         [self.call[index]])
            err = _eventfd()
            self.request(Request.SET_VRING_ERR, VringFile(index, False).encode(), [err])
            os.close(err)
        self.features = offered & features

    def start(self, base: Sequence[int] = (0, 0)) -> None:
        """What QEMU sends when the guest driver sets DRIVER_OK: features, memory, rings."""
        self.request(Request.SET_FEATURES, U64(self.features).encode(), need_reply=False)
        self.set_mem_table()
        for index in (RX, TX):
            self.setup_ring(index, base[index])
        if self.features & bit(wire.VHOST_USER_F_PROTOCOL_FEATURES):
            for index in (RX, TX):
                self.request(Request.SET_VRING_ENABLE, VringState(index, 1).encode())

    def connect_all(self) -> "Frontend":
        """negotiate() then start(): a ready device."""
        self.negotiate()
        self.start()
        return self

    def mem_table(self) -> MemoryTable:
        """The memory table describing self.ram."""
        return MemoryTable(tuple(MemoryRegion(r.gpa, r.size, r.uva, r.offset)
                                 for r in self.ram.regions))

    def set_mem_table(self) -> None:
        """SET_MEM_TABLE with the memfd once per region."""
        table = self.mem_table()
        self.request(Request.SET_MEM_TABLE, table.encode(), [self.ram.fd] * len(table.regions))

    def setup_ring(self, index: int, base: int = 0) -> None:
        """SET_VRING_NUM/BASE/ADDR/KICK/CALL for one ring."""
        ring = self.rings[index]
        self.request(Request.SET_VRING_NUM, VringState(index, ring.num).encode())
        self.request(Request.SET_VRING_BASE, VringState(index, base).encode())
        desc, used, avail, log_addr = ring.vring_addr()
        self.request(Request.SET_VRING_ADDR,
                     VringAddr(index, 0, desc, used, avail, log_addr).encode())
        self.request(Request.SET_VRING_KICK, VringFile(index, False).encode(), [self.kick[index]])
        self.request(Request.SET_VRING_CALL, VringFile(index, False).encode(), [self.call[index]])

    def get_vring_base(self, index: int) -> int:
        """GET_VRING_BASE: stops the ring, returns its next avail index."""
        reply = self.request(Request.GET_VRING_BASE, VringState(index, 0).encode())
        assert reply is not None
        state = VringState.decode(reply.payload)
        if state.index != index:
            raise FrontendError(f"GET_VRING_BASE answered for ring {state.index}")
        return state.num

    # ---- migration ----
    def save_state(self, close_early: bool = False) -> tuple[bytes, int]:
        """The source side, as QEMU does it: stop both rings (their bases kept in
        ``stopped_bases``), SET_DEVICE_STATE_FD(save), read the state to EOF (or close the
        pipe at once with ``close_early``), CHECK_DEVICE_STATE; (state, check result)."""
        self.stopped_bases = (self.get_vring_base(RX), self.get_vring_base(TX))
        r, w = os.pipe()
        if close_early:
            os.close(r)
        self.request(Request.SET_DEVICE_STATE_FD, struct.pack("=II", 0, 0), [w])
        os.close(w)
        data = b""
        if not close_early:
            while chunk := os.read(r, 1 << 16):
                data += chunk
            os.close(r)
        return data, self.get_u64(Request.CHECK_DEVICE_STATE)

    def load_state(self, data: bytes) -> int:
        """The target side: SET_DEVICE_STATE_FD(load), write ``data``, close, then
        CHECK_DEVICE_STATE; its result (0: loaded)."""
        r, w = os.pipe()
        self.request(Request.SET_DEVICE_STATE_FD, struct.pack("=II", 1, 0), [r])
        os.close(r)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view[:1 << 16]):]
        except BrokenPipeError:
            pass                      # the back-end stopped reading a stream it refused
        os.close(w)
        return self.get_u64(Request.CHECK_DEVICE_STATE)

    def set_log_base(self) -> mmap.mmap:
        """SET_LOG_BASE with a fresh memfd log covering guest memory; returns its mapping."""
        top = max(r.gpa + r.size for r in self.ram.regions)
        size = max(PAGE, (top // PAGE + 7) // 8)
        fd = os.memfd_create("dirty-log", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        log_map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            reply = self.request(Request.SET_LOG_BASE, LogDescription(size, 0).encode(), [fd])
        finally:
            os.close(fd)
        if reply is not None and U64.decode(reply.payload).value != 0:
            raise FrontendError("SET_LOG_BASE refused")
        return log_map

    def start_logging(self) -> mmap.mmap:
        """What QEMU does at migration start: log base, LOG_ALL, used-ring logging per ring."""
        log_map = self.set_log_base()
        self.features |= bit(wire.VHOST_F_LOG_ALL)
        self.request(Request.SET_FEATURES, U64(self.features).encode())
        for index in (RX, TX):
            desc, used, avail, log_addr = self.rings[index].vring_addr()
            self.request(Request.SET_VRING_ADDR,
                         VringAddr(index, wire.VRING_F_LOG, desc, used, avail, log_addr).encode())
        return log_map

    @staticmethod
    def dirty_pages(log_map: mmap.mmap) -> set[int]:
        """Guest page numbers whose bit is set in a dirty log."""
        pages = set()
        for i, byte in enumerate(log_map[:]):
            for b in range(8):
                if byte >> b & 1:
                    pages.add(i * 8 + b)
        return pages

    # ---- the guest driver ----
    def _notify(self, index: int) -> None:
        os.eventfd_write(self.kick[index], 1)

    def wait_call(self, index: int, timeout: float | None = None) -> bool:
        """Wait for the back-end to signal ring ``index``; True if it did."""
        fd = self.call[index]
        ready, _, _ = select.select([fd], [], [], self.timeout if timeout is None else timeout)
        if not ready:
            return False
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return False
        return True

    def send_frame(self, frame: bytes, split: Sequence[int] | None = None,
                   indirect: bool = False, kick: bool = True) -> int:
        """Place a TX frame (zero virtio-net header + frame) and kick; returns its head."""
        ring = self.rings[TX]
        self._tx_done += ring.pop_used()
        head = ring.add_tx_buffer(frame, bytes(VNET_HDR_LEN), split=split, indirect=indirect)
        if kick:
            self._notify(TX)
        return head

    def kick_tx(self) -> None:
        """Kick the TX ring."""
        self._notify(TX)

    def wait_tx_used(self, count: int, timeout: float | None = None) -> list[tuple[int, int]]:
        """Wait until ``count`` more TX chains came back used; return (head, len) of each."""
        ring = self.rings[TX]
        done, self._tx_done = self._tx_done, []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            done += ring.pop_used()
            if len(done) >= count:
                return done
            left = deadline - time.monotonic()
            if left <= 0:
                return done
            self.wait_call(TX, min(left, 0.2))

    def provide_rx(self, count: int, size: int = 2048, kick: bool = True) -> list[int]:
        """Offer ``count`` RX buffers of ``size`` bytes (device-writable); returns heads."""
        heads = self.rings[RX].add_rx_buffers(count, size)
        self.rx_heads += heads
        if kick:
            self._notify(RX)
        return heads

    def _recycle_rx(self, heads: Sequence[int]) -> None:
        """Offer used RX chains again as they are (no new guest memory)."""
        ring = self.rings[RX]
        for head in heads:
            desc = ring.layout[head]
            ring.free = [d for d in ring.free if d not in desc]
            ring.chains[head] = desc
        ring.republish(heads)
        self._notify(RX)

    def recv_frames(self, count: int = 1, timeout: float | None = None,
                    recycle: bool = True) -> list[bytes]:
        """Collect up to ``count`` RX frames (waiting on the call eventfd); header stripped."""
        ring = self.rings[RX]
        frames: list[bytes] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(frames) < count:
            self._rx_pending += ring.pop_used()
            frames += self._assemble_rx(recycle)
            if len(frames) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.wait_call(RX, min(left, 0.2))
        return frames

    def _assemble_rx(self, recycle: bool) -> list[bytes]:
        ring = self.rings[RX]
        mergeable = bool(self.features & bit(wire.VIRTIO_NET_F_MRG_RXBUF))
        out: list[bytes] = []
        used_heads: list[int] = []
        while self._rx_pending:
            head, length = self._rx_pending[0]
            if length == 0:
                # A chain the device refused (bad address or direction) comes back empty.
                self.rx_refused.append(head)
                del self._rx_pending[0]
                continue
            first = read_chain(ring, head, length)
            nbuf = struct.unpack_from("<H", first, 10)[0] if mergeable else 1
            if nbuf < 1:
                raise FrontendError("RX header says 0 buffers")
            if len(self._rx_pending) < nbuf:
                break
            parts = [first] + [read_chain(ring, h, n)
                               for h, n in self._rx_pending[1:nbuf]]
            used_heads += [h for h, _ in self._rx_pending[:nbuf]]
            del self._rx_pending[:nbuf]
            out.append(b"".join(parts)[VNET_HDR_LEN:])
        if recycle and used_heads:
            self._recycle_rx(used_heads)
        return out


    # ---- teardown ----
    def close(self) -> None:
        """Close the connection, the eventfds and the guest memory."""
        try:
            self.sock.close()
        finally:
            for fd in self.kick + self.call:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.kick = self.call = []
            self.ram.close()

    def __enter__(self) -> "Frontend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
