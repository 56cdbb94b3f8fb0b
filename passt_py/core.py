"""The binding layer: the only module that touches cffi's ``ffi`` and ``lib``.

It checks at import that the compiled extension matches the API this Python code was
written for, and turns the C core's negative-errno returns into Python exceptions.
"""
from __future__ import annotations

import errno
import os

try:
    from passt_py._core import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "passt_py's C core (passt_py._core) is not built: run 'pip install .' or "
        "'pip install -e .' from the source tree") from exc

API_VERSION = 11

if lib.pc_api_version() != API_VERSION:  # pragma: no cover - stale builds only
    raise ImportError(
        f"passt_py._core is stale: built for C API {lib.pc_api_version()}, "
        f"this passt_py needs {API_VERSION}; rebuild with 'pip install -e .'")


class CoreError(OSError):
    """A C core call failed; ``errno`` holds the cause."""


def check(ret: int, what: str) -> int:
    """Return ``ret`` if non-negative, else raise CoreError naming ``what`` and the errno."""
    if ret < 0:
        code = -ret
        raise CoreError(code, f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
    return ret


# ---- checksum ----
# Byte order as in csrc/checksum.c: a partial sum is the folded one's complement sum of the
# big-endian 16-bit words (int 0..0xffff); a checksum is the int whose big-endian encoding
# (struct.pack("!H", c)) goes into the packet. IPv4-header and L4 helpers ignore what the
# checksum field holds now, so they both compute and verify (compare with the stored field).
from collections.abc import Sequence  # noqa: E402  (sections keep their own imports)

BytesLike = bytes | bytearray | memoryview

CSUM_AUTO = lib.PC_CSUM_AUTO
CSUM_SCALAR = lib.PC_CSUM_SCALAR
CSUM_AVX2 = lib.PC_CSUM_AVX2


def _iovec(buffers: Sequence[BytesLike], writable: bool) -> tuple[object, list[object]]:
    """Build a struct iovec array over buffers; the list keeps their cdata views alive."""
    iov = ffi.new("struct iovec[]", max(len(buffers), 1))
    keep = []
    for i, buf in enumerate(buffers):
        view = ffi.from_buffer("char[]", buf, require_writable=writable)
        keep.append(view)
        iov[i].iov_base = view
        iov[i].iov_len = len(view)
    return iov, keep


def csum_partial(data: BytesLike, init: int = 0) -> int:
    """Partial sum of data, continuing from init (exact only after even-length data)."""
    buf = ffi.from_buffer(data)
    return lib.pc_csum_partial(buf, len(buf), init)


def csum_iov(buffers: Sequence[BytesLike], init: int = 0) -> int:
    """Partial sum of buffers laid end to end, each of any length."""
    iov, _keep = _iovec(buffers, writable=False)
    return lib.pc_csum_iov(iov, len(buffers), init)


def csum_fold(total: int) -> int:
    """Fold and complement a partial sum: the checksum field value (0 verifies good data)."""
    return lib.pc_csum_fold(total)


def csum_ipv4_header(hdr: BytesLike) -> int:
    """Header checksum for an IPv4 header of exactly len(hdr) bytes (20..60)."""
    buf = ffi.from_buffer(hdr)
    return check(lib.pc_csum_ipv4_header(buf, len(buf)), "csum_ipv4_header")


def pseudo_ipv4(src: BytesLike, dst: BytesLike, proto: int, length: int) -> int:
    """Partial sum of an IPv4 pseudo-header, to use as init for the L4 segment."""
    return lib.pc_csum_pseudo_ipv4(_addr(src, 4), _addr(dst, 4), proto, length)


def pseudo_ipv6(src: BytesLike, dst: BytesLike, proto: int, length: int) -> int:
    """Partial sum of an IPv6 pseudo-header, to use as init for the L4 segment."""
    return lib.pc_csum_pseudo_ipv6(_addr(src, 16), _addr(dst, 16), proto, length)


def csum_l4_ipv4(src: BytesLike, dst: BytesLike, proto: int, seg: BytesLike) -> int:
    """TCP (6) or UDP (17) checksum over IPv4 for the whole segment seg."""
    buf = ffi.from_buffer(seg)
    return check(lib.pc_csum_l4_ipv4(_addr(src, 4), _addr(dst, 4), proto, buf, len(buf)),
                 "csum_l4_ipv4")


def csum_l4_ipv6(src: BytesLike, dst: BytesLike, proto: int, seg: BytesLike) -> int:
    """TCP (6), UDP (17) or ICMPv6 (58) checksum over IPv6 for the whole segment seg."""
    buf = ffi.from_buffer(seg)
    return check(lib.pc_csum_l4_ipv6(_addr(src, 16), _addr(dst, 16), proto, buf, len(buf)),
                 "csum_l4_ipv6")


def csum_icmp4(msg: BytesLike) -> int:
    """ICMP (IPv4) checksum of the whole message msg."""
    buf = ffi.from_buffer(msg)
    return check(lib.pc_csum_icmp4(buf, len(buf)), "csum_icmp4")


def csum_impls() -> list[int]:
    """Implementations this CPU runs (CSUM_SCALAR, and CSUM_AVX2 where available)."""
    mask = lib.pc_csum_impls()
    return [impl for impl in (CSUM_SCALAR, CSUM_AVX2) if mask & (1 << impl)]


def csum_partial_impl(impl: int, data: BytesLike, init: int = 0) -> int:
    """csum_partial() forced through one implementation, so tests can cover each."""
    buf = ffi.from_buffer(data)
    return check(lib.pc_csum_partial_impl(impl, buf, len(buf), init), "csum_partial_impl")


def bench_csum(data: BytesLike, reps: int, impl: int = CSUM_AUTO) -> int:
    """Checksum data reps times inside C (no per-call overhead), for benchmarks."""
    buf = ffi.from_buffer(data)
    return check(lib.pc_bench_csum(impl, buf, len(buf), reps), "bench_csum")


def bench_memcpy(dst: bytearray, src: BytesLike, reps: int) -> None:
    """Copy src into dst reps times inside C: the yardstick for bench_csum()."""
    d = ffi.from_buffer(dst, require_writable=True)
    s = ffi.from_buffer(src)
    if len(d) < len(s):
        raise ValueError("destination shorter than source")
    check(lib.pc_bench_memcpy(d, s, len(s), reps), "bench_memcpy")


def _addr(addr: BytesLike, size: int) -> object:
    """Address bytes as a C pointer, after checking their length."""
    buf = ffi.from_buffer(addr)
    if len(buf) != size:
        raise ValueError(f"address must be {size} bytes, got {len(buf)}")
    return buf

# ---- iov ----
# A transfer is resumable: on EAGAIN these raise BlockingIOError whose characters_written is
# the byte offset reached; call again with offset=that value when the fd is ready:
#     try:
#         writev_all(fd, bufs, off)
#     except BlockingIOError as e:
#         off = e.characters_written   # wait for EPOLLOUT, then retry from off


def _xfer(fn: object, what: str, fd: int, buffers: Sequence[BytesLike], offset: int,
          writable: bool) -> tuple[int, int]:
    """Run one C transfer loop; return (C return code, byte offset reached)."""
    iov, _keep = _iovec(buffers, writable=writable)
    done = ffi.new("size_t *")
    ret = fn(fd, iov, len(buffers), offset, done)
    if ret == -errno.EAGAIN:
        raise BlockingIOError(errno.EAGAIN, f"{what}: would block", done[0])
    check(ret, what)
    return ret, done[0]


def writev_all(fd: int, buffers: Sequence[BytesLike], offset: int = 0) -> int:
    """Write the concatenation of buffers from byte offset onwards; return the total length.

    Retries EINTR and partial writes. Raises BlockingIOError (characters_written = offset
    reached) when a non-blocking fd is full, CoreError on other failures.
    """
    return _xfer(lib.pc_writev_all, "writev_all", fd, buffers, offset, False)[1]


def readv_all(fd: int, buffers: Sequence[BytesLike], offset: int = 0) -> int:
    """Fill writable buffers, in order, from byte offset onwards; return the offset reached.

    The result is the total length of buffers unless end of file came first: a shorter result
    means EOF. Retries EINTR and partial reads. Raises BlockingIOError (characters_written =
    offset reached) when a non-blocking fd is empty, CoreError on other failures.
    """
    return _xfer(lib.pc_readv_all, "readv_all", fd, buffers, offset, True)[1]

# ---- guest memory and virtqueues ----
# SECTION virtq
# Guest memory and split virtqueues (csrc/guest_mem.c, csrc/virtq.c). The vhost-user layer
# calls only these wrappers; every guest access is bounds-checked in C.
import array  # noqa: E402  (section-local imports keep the sections independent)
from collections.abc import Sequence  # noqa: E402
from typing import NamedTuple  # noqa: E402

#: PC_VQ_ERR_* kind -> name, for TxBatch.bad_chains() and logs.
VQ_ERRORS: dict[int, str] = {
    lib.PC_VQ_ERR_HEAD: "head",            # head index from the avail ring >= num
    lib.PC_VQ_ERR_NEXT: "next",            # `next` >= table size
    lib.PC_VQ_ERR_LOOP: "loop",            # chain longer than its table (loop or over-long)
    lib.PC_VQ_ERR_ADDR: "addr",            # buffer outside guest memory, wrapping, chain > 4 GiB
    lib.PC_VQ_ERR_DIR: "dir",              # write-only buffer on TX / read-only on RX
    lib.PC_VQ_ERR_INDIRECT: "indirect",    # indirect not negotiated, nested, bad length, outside
    lib.PC_VQ_ERR_SHORT: "short",          # TX chain shorter than the virtio-net header
    lib.PC_VQ_ERR_IOV: "iov",              # more slices than a whole batch can hold
}
VRING_F_LOG = lib.PC_VRING_F_LOG
VQ_MAX_SIZE = lib.PC_VQ_MAX_SIZE


class GuestMemory:
    """Guest memory regions mmapped from the front-end's fds; every access bounds-checked in C.

    The table holds at most 8 regions (the vhost-user baseline); fds passed in stay owned by
    the caller, who may close them once mapped. Rings built on this memory re-translate by
    themselves after any change of the table.
    """

    MAX_REGIONS = lib.PC_MEM_MAX_REGIONS

    def __init__(self) -> None:
        self._raw = ffi.new("char[]", lib.pc_mem_size())
        self._m = ffi.cast("struct pc_mem *", self._raw)
        lib.pc_mem_init(self._m)

    def add_region(self, fd: int, guest_phys_addr: int, size: int, user_addr: int,
                   mmap_offset: int) -> None:
        """Map one region (MAP_SHARED); overlapping or a ninth region raises CoreError."""
        check(lib.pc_mem_add_region(self._m, fd, guest_phys_addr, size, user_addr, mmap_offset),
              "add_region")

    def remove_region(self, guest_phys_addr: int, size: int, user_addr: int) -> None:
        """Unmap the region matching exactly (REM_MEM_REG); CoreError(ENOENT) if none."""
        check(lib.pc_mem_remove_region(self._m, guest_phys_addr, size, user_addr),
              "remove_region")

    def clear(self) -> None:
        """Unmap every region and the dirty log (new SET_MEM_TABLE, reset, close)."""
        if self._m is not None:
            lib.pc_mem_clear(self._m)

    close = clear

    def __del__(self) -> None:
        self.clear()

    @property
    def nregions(self) -> int:
        """Regions currently mapped."""
        return lib.pc_mem_nregions(self._m)

    def set_log(self, fd: int, size: int, offset: int) -> None:
        """Map the dirty log (SET_LOG_BASE mmap_size, mmap_offset), replacing any previous."""
        check(lib.pc_mem_set_log(self._m, fd, size, offset), "set_log")

    def clear_log(self) -> None:
        """Unmap the dirty log; logging stops until a new log is set."""
        lib.pc_mem_clear_log(self._m)

    @property
    def logging(self) -> bool:
        """True while logging is requested (LOG_ALL) *and* a log is mapped."""
        return bool(lib.pc_mem_logging(self._m))

    @logging.setter
    def logging(self, on: bool) -> None:
        lib.pc_mem_set_logging(self._m, 1 if on else 0)

    def read(self, gpa: int, length: int) -> bytes:
        """Copy guest memory out (control paths, tests); CoreError(EFAULT) if out of bounds."""
        if length < 0:
            raise ValueError("negative length")
        buf = ffi.new("uint8_t[]", max(length, 1))
        check(lib.pc_mem_read(self._m, gpa, buf, length), "guest read")
        return ffi.buffer(buf, length)[:]

    def write(self, gpa: int, data: bytes) -> None:
        """Copy into guest memory (all or nothing), dirty-logging the pages written."""
        check(lib.pc_mem_write(self._m, gpa, ffi.from_buffer(data), len(data)), "guest write")

    def uva_to_gpa(self, uva: int) -> int:
        """Guest-physical address of a front-end virtual address (e.g. the used ring's)."""
        return check(lib.pc_mem_uva_to_gpa(self._m, uva), "uva_to_gpa")


class TxBatch:
    """Frames drained from a TX ring by one pop_tx() call; reusable after release().

    Good frames are 0..count-1; their payload (virtio-net header skipped) stays in guest
    memory as iovecs, valid until release or a change of the memory table. ``frames`` and
    ``iov`` are the raw C arrays, for C consumers: frame i has slices
    iov[frames[i].first : frames[i].first + frames[i].nslices].
    """

    def __init__(self, max_frames: int = 64, max_iov: int | None = None) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be positive")
        self.max_frames = max_frames
        self.max_iov = max_iov if max_iov is not None else max(1024, 8 * max_frames)
        self.frames = ffi.new("struct pc_tx_frame[]", max_frames)
        self.iov = ffi.new("struct iovec[]", self.max_iov)
        self._bad = ffi.new("struct pc_bad_chain[]", max_frames)
        self._nbad = ffi.new("unsigned *")
        self.count = 0
        self.bad = 0

    def _check(self, i: int) -> None:
        if not 0 <= i < self.count:
            raise IndexError(f"frame {i} not in batch of {self.count}")

    def frame(self, i: int) -> bytes:
        """Copy frame i out of guest memory (control paths only: the data path stays in C)."""
        self._check(i)
        f = self.frames[i]
        return b"".join(ffi.buffer(self.iov[k].iov_base, self.iov[k].iov_len)[:]
                        for k in range(f.first, f.first + f.nslices))

    def frame_len(self, i: int) -> int:
        """Payload length of frame i (header excluded)."""
        self._check(i)
        return self.frames[i].len

    def vnet(self, i: int) -> bytes:
        """The virtio-net header the guest sent with frame i (offload flags, GSO, csum)."""
        self._check(i)
        return bytes(ffi.buffer(self.frames[i].vnet, 12))

    def head(self, i: int) -> int:
        """Head descriptor index of frame i."""
        self._check(i)
        return self.frames[i].head

    def slices(self, i: int) -> tuple[object, int]:
        """(pointer to frame i's first struct iovec, slice count), to hand to C."""
        self._check(i)
        f = self.frames[i]
        return self.iov + f.first, f.nslices

    def bad_chains(self) -> list[tuple[int, str]]:
        """(head, error kind name) of each bad chain in this batch."""
        return [(self._bad[i].head, VQ_ERRORS.get(self._bad[i].kind, str(self._bad[i].kind)))
                for i in range(self.bad)]


class RxResult:
    """What the last push_rx() did: frames placed and dropped, bad chains, notification."""

    __slots__ = ("placed", "dropped", "bad", "notified")

    def __init__(self, placed: int = 0, dropped: int = 0, bad: int = 0,
                 notified: bool = False) -> None:
        self.placed, self.dropped, self.bad, self.notified = placed, dropped, bad, notified

    def __repr__(self) -> str:
        return (f"RxResult(placed={self.placed}, dropped={self.dropped}, bad={self.bad}, "
                f"notified={self.notified})")


#: Up to this many bytes, push_rx() joins a batch's frames (one buffer, one pointer);
#: above it the frames are passed by pointer.
PUSH_RX_JOIN_MAX = 64 << 10


class CaptureStats(NamedTuple):
    """What a ring's capture did: records and bytes written, the errno of the write that
    turned it off (0 if none), and whether it is on."""

    frames: int
    bytes: int
    err: int
    on: bool


class Virtqueue:
    """One split virtqueue in guest memory, device side; batch calls, one C call each.

    The call and kick eventfds given to set_call_fd()/set_kick_fd() become owned by the
    Virtqueue: replacing one or close() closes the previous fd. A capture fd
    (set_capture()) stays the caller's.
    """

    def __init__(self, mem: GuestMemory, index: int) -> None:
        self.mem = mem          # keeps the memory (and its C struct) alive as long as the ring
        self.index = index
        self._raw = ffi.new("char[]", lib.pc_vq_size())
        self._vq = ffi.cast("struct pc_vq *", self._raw)
        lib.pc_vq_init(self._vq, mem._m)
        self._call_fd = -1
        self._kick_fd = -1
        self._event_idx = False
        self._indirect = False
        self._rx_res = ffi.new("struct pc_rx_result *")
        self._cap_buf = None
        self._cap_stats = ffi.new("struct pc_vq_capture *")
        self.last_rx = RxResult()
        self.rx_bad_total = 0
        self.tx_bad_total = 0

    def set_num(self, num: int) -> None:
        """Ring size: a power of two 1..32768, else CoreError(EINVAL); EBUSY while started."""
        check(lib.pc_vq_set_num(self._vq, num), "set_num")

    def set_addr(self, desc_uva: int, used_uva: int, avail_uva: int, log_guest_addr: int = 0,
                 flags: int = 0) -> None:
        """Ring addresses in front-end virtual space; each area must lie in one region.

        log_guest_addr is the used ring's guest-physical address, used for dirty logging when
        flags has VRING_F_LOG. Allowed while running (QEMU re-sends it to enable logging).
        """
        check(lib.pc_vq_set_addr(self._vq, desc_uva, used_uva, avail_uva, log_guest_addr, flags),
              "set_addr")

    def set_base(self, idx: int) -> None:
        """Next avail index to process (SET_VRING_BASE); only while stopped."""
        check(lib.pc_vq_set_base(self._vq, idx), "set_base")

    def _replace_fd(self, old: int, fd: int) -> int:
        if old >= 0 and old != fd:
            os.close(old)
        return fd if fd >= 0 else -1

    def set_call_fd(self, fd: int) -> None:
        """Eventfd written to interrupt the guest; -1 for none. Takes ownership of fd."""
        self._call_fd = self._replace_fd(self._call_fd, fd)
        lib.pc_vq_set_call_fd(self._vq, self._call_fd)

    def set_kick_fd(self, fd: int) -> None:
        """Eventfd the guest kicks; -1 for none (polling). Takes ownership, made non-blocking."""
        self._kick_fd = self._replace_fd(self._kick_fd, fd)
        if self._kick_fd >= 0:
            os.set_blocking(self._kick_fd, False)

    @property
    def call_fd(self) -> int:
        """Current call eventfd, -1 if none."""
        return self._call_fd

    @property
    def kick_fd(self) -> int:
        """Current kick eventfd (register it with the event loop), -1 if none."""
        return self._kick_fd

    def kick_pending(self) -> bool:
        """Consume the kick eventfd's counter; True if kicked (always True when polling)."""
        if self._kick_fd < 0:
            return True
        try:
            return len(os.read(self._kick_fd, 8)) == 8
        except BlockingIOError:
            return False

    def set_features(self, event_idx: bool, indirect: bool) -> None:
        """Apply VIRTIO_RING_F_EVENT_IDX and VIRTIO_RING_F_INDIRECT_DESC as negotiated."""
        self._event_idx, self._indirect = bool(event_idx), bool(indirect)
        lib.pc_vq_set_features(self._vq, int(event_idx), int(indirect))

    def set_event_idx(self, on: bool) -> None:
        """Apply VIRTIO_RING_F_EVENT_IDX alone."""
        self.set_features(on, self._indirect)

    def set_indirect(self, on: bool) -> None:
        """Apply VIRTIO_RING_F_INDIRECT_DESC alone (without it indirect chains are bad)."""
        self.set_features(self._event_idx, on)

    def start(self) -> None:
        """Start processing; the used idx is read from the used ring now."""
        check(lib.pc_vq_start(self._vq), "start")

    def flush(self) -> bool:
        """Publish used elements the RX paths left pending (their flush=False calls); True if
        the guest was notified. A stopped ring publishes nothing."""
        return bool(lib.pc_vq_flush(self._vq))

    def stop(self) -> int:
        """Stop (GET_VRING_BASE) and return the next avail index; touches no guest memory.

        Release outstanding TX batches first: release() on a stopped ring drops the heads.
        """
        return lib.pc_vq_stop(self._vq)

    @property
    def started(self) -> bool:
        """True while the ring is running."""
        return bool(lib.pc_vq_started(self._vq))

    @property
    def avail_pending(self) -> int:
        """Chains the driver has made available (0 when stopped); CoreError(EIO) if broken."""
        return check(lib.pc_vq_avail_pending(self._vq), "avail_pending")

    def pop_tx(self, max_frames: int = 64, hdr_len: int = 12,
               batch: TxBatch | None = None) -> TxBatch:
        """Drain up to max_frames chains into a batch (one C call); bad chains counted in it.

        Pass a released batch to reuse its arrays (max_frames is capped to its size). Raises
        CoreError(EIO) if the avail idx runs more than num ahead (nothing consumed then).
        """
        if batch is None:
            batch = TxBatch(max_frames)
        elif batch.count or batch.bad:
            raise ValueError("TxBatch still holds unreleased chains: release() it first")
        n = check(lib.pc_vq_pop_tx(self._vq, min(max_frames, batch.max_frames), hdr_len,
                                   batch.frames, batch.iov, batch.max_iov, batch._bad,
                                   batch._nbad), "pop_tx")
        batch.count = n
        batch.bad = batch._nbad[0]
        self.tx_bad_total += batch.bad
        return batch

    def release(self, batch: TxBatch) -> bool:
        """Return all heads of batch to the used ring (len 0), notify once; True if notified."""
        ret = check(lib.pc_vq_release(self._vq, batch.frames, batch.count, batch._bad,
                                      batch.bad), "release")
        batch.count = batch.bad = 0
        return bool(ret)

    def push_rx(self, frames: Sequence[bytes | bytearray | memoryview], hdr_len: int = 12,
                mergeable: bool = True, vnet_hdr: bytes | None = None) -> int:
        """Place whole frames into RX buffers (one C call), notify once.

        Returns frames consumed, placed or dropped (too big for the buffers): the caller keeps
        frames[ret:] for the next kick. Details of the call are in last_rx.
        """
        if vnet_hdr is not None and len(vnet_hdr) != hdr_len:
            raise ValueError("vnet_hdr must be hdr_len bytes")
        if not frames:
            self.last_rx = RxResult()
            return 0
        lens = array.array("I", map(len, frames))
        res = self._rx_res
        hdr = ffi.from_buffer(vnet_hdr) if vnet_hdr else ffi.NULL
        if len(frames) == 1 or sum(lens) >= PUSH_RX_JOIN_MAX:
            # Big frames go by pointer: joining them first would copy megabytes once more.
            bufs = [ffi.from_buffer(f) for f in frames]
            ret = lib.pc_vq_push_rx_ptrs(self._vq, ffi.new("uint8_t *[]", bufs),
                                         ffi.from_buffer("uint32_t[]", lens), len(lens),
                                         hdr_len, 1 if mergeable else 0, hdr, res)
        else:
            ret = lib.pc_vq_push_rx(self._vq, ffi.from_buffer(b"".join(frames)),
                                    ffi.from_buffer("uint32_t[]", lens), len(lens), hdr_len,
                                    1 if mergeable else 0, hdr, res)
        n = check(ret, "push_rx")
        self.last_rx = RxResult(res.placed, res.dropped, res.bad, bool(res.notified))
        self.rx_bad_total += res.bad
        return n

    def set_capture(self, fd: int, hdr_len: int = 12, snaplen: int | None = None) -> None:
        """Append every frame the ring carries to ``fd`` as pcap records; -1 turns it off.

        In C, whatever path moves the frame: RX frames when published, TX frames when first
        popped, partial checksums completed, at most ``snaplen`` bytes each (the file
        header's, passt_py.pcap.SNAPLEN by default; the caller writes that header).
        ``hdr_len``: the RX virtio-net header length. The fd stays the caller's: turn capture
        off before closing it. A failed write turns capture off (see :attr:`capture`).
        """
        if snaplen is None:
            from passt_py.pcap import SNAPLEN   # (pcap imports this module)
            snaplen = SNAPLEN
        if fd < 0:
            lib.pc_vq_set_capture(self._vq, -1, 0, ffi.NULL, 0)
            self._cap_buf = None
            return
        buf = self._cap_buf
        if buf is None or len(buf) != snaplen:
            buf = ffi.new("uint8_t[]", max(snaplen, 1))
        check(lib.pc_vq_set_capture(self._vq, fd, hdr_len, buf, snaplen), "set_capture")
        self._cap_buf = buf     # the C side uses it while capture is on

    @property
    def capture(self) -> CaptureStats:
        """The ring's capture: records and bytes written, error, whether it is on."""
        st = self._cap_stats
        lib.pc_vq_capture_stats(self._vq, st)
        return CaptureStats(st.frames, st.bytes, st.err, bool(st.on))

    def close(self) -> None:
        """Stop the ring (publishing what is pending), close its eventfds, end capture."""
        lib.pc_vq_stop(self._vq)
        self.set_capture(-1)
        self.set_call_fd(-1)
        self.set_kick_fd(-1)

    def __del__(self) -> None:
        if getattr(self, "_vq", None) is not None:
            self.close()


# ---- the established-TCP data path ----
# SECTION tcp_path
# csrc/classify.c: guest frames classified per batch (for every protocol); csrc/tcp_path.c:
# payload sent from guest memory (zero copy), host data peeked straight into guest RX buffers
# as TCP segments (one copy). Python decides per batch or per event; C moves the bytes. See
# the peek-offset contract in csrc/tcp_path.c: the socket must have SO_PEEK_OFF enabled
# before TcpPath.rx() is used.
import ipaddress  # noqa: E402
import socket  # noqa: E402

VNET_F_NEEDS_CSUM = lib.PC_VNET_F_NEEDS_CSUM
VNET_F_DATA_VALID = lib.PC_VNET_F_DATA_VALID
VNET_GSO_NONE = lib.PC_VNET_GSO_NONE
VNET_GSO_TCPV4 = lib.PC_VNET_GSO_TCPV4
VNET_GSO_UDP = lib.PC_VNET_GSO_UDP
VNET_GSO_TCPV6 = lib.PC_VNET_GSO_TCPV6
VNET_GSO_UDP_L4 = lib.PC_VNET_GSO_UDP_L4
VNET_GSO_ECN = lib.PC_VNET_GSO_ECN

TCP_FIN = lib.PC_TCP_FIN
TCP_SYN = lib.PC_TCP_SYN
TCP_RST = lib.PC_TCP_RST
TCP_PSH = lib.PC_TCP_PSH
TCP_ACK = lib.PC_TCP_ACK
TCP_URG = lib.PC_TCP_URG
TCP_ECE = lib.PC_TCP_ECE
TCP_CWR = lib.PC_TCP_CWR

PKT_OK = lib.PC_PKT_OK
PKT_SHORT_ETH = lib.PC_PKT_SHORT_ETH
PKT_OTHER = lib.PC_PKT_OTHER
PKT_IP_HDR = lib.PC_PKT_IP_HDR
PKT_IP_LEN = lib.PC_PKT_IP_LEN
PKT_IP_FRAG = lib.PC_PKT_IP_FRAG
PKT_IP_EXT = lib.PC_PKT_IP_EXT
PKT_L4_SHORT = lib.PC_PKT_L4_SHORT
PKT_TCP_DOFF = lib.PC_PKT_TCP_DOFF
PKT_UDP_LEN = lib.PC_PKT_UDP_LEN
PKT_HDR_MAX = lib.PC_PKT_HDR_MAX
#: PC_PKT_* validity code -> name, for logs.
PKT_CODES: dict[int, str] = {
    PKT_OK: "ok", PKT_SHORT_ETH: "short-ethernet", PKT_OTHER: "not-ip", PKT_IP_HDR: "ip-header",
    PKT_IP_LEN: "ip-length", PKT_IP_FRAG: "ip-fragment", PKT_IP_EXT: "ip-extension",
    PKT_L4_SHORT: "l4-short", PKT_TCP_DOFF: "tcp-data-offset", PKT_UDP_LEN: "udp-length",
}

TCP_RX_GSO = lib.PC_TCP_RX_GSO
TCP_RX_CSUM_PARTIAL = lib.PC_TCP_RX_CSUM_PARTIAL
TCP_RX_DATA_VALID = lib.PC_TCP_RX_DATA_VALID
TCP_RX_NO_FLUSH = lib.PC_TCP_RX_NO_FLUSH
TCP_STOP_WINDOW = lib.PC_TCP_STOP_WINDOW      # max_bytes delivered
TCP_STOP_NOBUFS = lib.PC_TCP_STOP_NOBUFS      # guest RX buffers ran out: wait for an RX kick
TCP_STOP_DRAINED = lib.PC_TCP_STOP_DRAINED    # the socket had less than asked (or nothing)
TCP_STOP_EOF = lib.PC_TCP_STOP_EOF            # the peer closed and nothing is left to peek
TCP_STOP_LIMIT = lib.PC_TCP_STOP_LIMIT        # per-call limit (1024 iovecs/chains): call again
TCP_STOP_STOPPED = lib.PC_TCP_STOP_STOPPED    # RX ring not running
TCP_STOP_AGAIN = lib.PC_TCP_STOP_AGAIN        # out of buffers, but new ones came: call again


def _ip16(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte form used by the C records and templates: IPv4 as ::ffff:a.b.c.d."""
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _ip_from16(raw: bytes, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Inverse of _ip16 for a record of IP version ``version``."""
    return ipaddress.IPv4Address(raw[12:]) if version == 4 else ipaddress.IPv6Address(raw)


class PacketRecords:
    """One struct pc_pkt per frame of a TxBatch, filled by one C call (classify()).

    ``records[i]`` is the C record itself (read its fields as attributes: ``len``,
    ``ethertype``, ``valid`` (PKT_*), ``ipver``, ``proto``, ``tcp_flags``, ``ttl``,
    ``vnet_flags``, ``gso_type``, ``gso_size``, ``csum_start``, ``csum_offset``, ``tcp_doff``,
    ``l3_off``, ``l4_off``, ``opt_off``, ``opt_len``, ``sport``, ``dport``, ``window``,
    ``ip_len``, ``seq``, ``ack``, ``payload_off``, ``payload_len``). Offsets count from the
    Ethernet header. Valid until the batch is released: the view does not copy payloads.
    """

    __slots__ = ("batch", "recs", "count")

    def __init__(self, batch: TxBatch, recs: object, count: int) -> None:
        self.batch, self.recs, self.count = batch, recs, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> object:
        if not 0 <= i < self.count:
            raise IndexError(f"record {i} not in batch of {self.count}")
        return self.recs[i]

    def src(self, i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Source address of frame i (an IPv4 or IPv6 record)."""
        r = self[i]
        return _ip_from16(bytes(r.src), r.ipver)

    def dst(self, i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Destination address of frame i."""
        r = self[i]
        return _ip_from16(bytes(r.dst), r.ipver)

    def key(self, i: int) -> tuple[bytes, int, bytes, int]:
        """(src16, sport, dst16, dport): a cheap flow-table key (IPv4 as ::ffff:a.b.c.d)."""
        r = self[i]
        return bytes(r.src), r.sport, bytes(r.dst), r.dport

    def read(self, i: int, off: int, length: int) -> bytes:
        """Copy bytes [off, off + length) of frame i (control paths: options, SYN data)."""
        r = self[i]
        if off < 0 or length < 0 or off + length > r.len:
            raise ValueError("range outside the frame")
        iov, n = self.batch.slices(i)
        out = bytearray()
        for k in range(n):
            if length <= 0:
                break
            size = iov[k].iov_len
            if off >= size:
                off -= size
                continue
            take = min(size - off, length)
            out += ffi.buffer(ffi.cast("char *", iov[k].iov_base) + off, take)[:]
            length -= take
            off = 0
        return bytes(out)

    def tcp_options(self, i: int) -> bytes:
        """The TCP option bytes of frame i (empty if none)."""
        r = self[i]
        return self.read(i, r.opt_off, r.opt_len) if r.opt_len else b""

    def payload(self, i: int) -> bytes:
        """A copy of frame i's L4 payload (control paths only; data goes by send_payloads)."""
        r = self[i]
        return self.read(i, r.payload_off, r.payload_len)


def classify(batch: TxBatch) -> PacketRecords:
    """Classify every frame of a TX batch in one C call; records reused per batch object."""
    recs = getattr(batch, "_pkt_recs", None)
    if recs is None:
        recs = batch._pkt_recs = ffi.new("struct pc_pkt[]", batch.max_frames)
    n = check(lib.pc_classify(batch.frames, batch.iov, batch.max_iov, batch.count, recs),
              "classify")
    return PacketRecords(batch, recs, n)


def send_payloads(fd: int, batch: TxBatch, items: Sequence[tuple[int, int, int]]) -> int:
    """sendmsg() (frame, offset, length) ranges of a batch to fd straight from guest memory.

    One flow per call, ranges in stream order. Returns the bytes the kernel accepted: less
    than the total when the socket buffer filled (0 if it took nothing). Raises CoreError for
    socket errors (EPIPE, ECONNRESET...) and EINVAL for a range outside its frame.
    """
    if not items:
        return 0
    refs = ffi.new("struct pc_payload_ref[]", len(items))
    for k, (frame, off, length) in enumerate(items):
        refs[k].frame, refs[k].off, refs[k].len = frame, off, length
    return _send_refs(fd, batch, refs, len(items))


def _send_refs(fd: int, batch: TxBatch, refs: object, count: int) -> int:
    """pc_send_payloads() of ``count`` refs: bytes taken (0 on EAGAIN), CoreError otherwise."""
    ret = lib.pc_send_payloads(fd, batch.frames, batch.count, batch.iov, batch.max_iov, refs,
                               count)
    if ret == -errno.EAGAIN:
        return 0
    return check(ret, "send_payloads")


class UdpRuns:
    """A classified batch's frames (an index list) cut into runs of one UDP tuple
    (pc_udp_runs), so the UDP fast path decides per run; send() then sends every run the
    caller gave a socket (``runs[r].fd``) straight from guest memory."""

    def __init__(self, recs: PacketRecords, frames: Sequence[int]) -> None:
        self.recs = recs
        n = self.n = len(frames)
        self.idx = ffi.new("uint32_t[]", list(frames)) if n else ffi.NULL
        self.runs = ffi.new("struct pc_udp_run[]", max(n, 1))
        self._items: object = None
        self.count = check(lib.pc_udp_runs(recs.recs, recs.count, self.idx, n, self.runs,
                                           max(n, 1)), "udp_runs") if n else 0

    def frames(self, r: int) -> list[int]:
        """Frame indices of run ``r``."""
        run = self.runs[r]
        return [self.idx[k] for k in range(run.first, run.first + run.count)]

    def send(self) -> int:
        """Send the runs with an fd; returns how many datagrams failed (see errors())."""
        b = self.recs.batch
        self._items = ffi.new("struct pc_dgram_ref[]", max(self.n, 1))
        return check(lib.pc_send_udp_runs(b.frames, b.count, b.iov, b.max_iov, self.recs.recs,
                                          self.recs.count, self.idx, self.n, self.runs,
                                          self.count, self._items), "send_udp_runs")

    def errors(self, r: int) -> list[tuple[int, int]]:
        """(frame, negative errno) of run ``r``'s datagrams that failed."""
        run = self.runs[r]
        items = self._items
        return [(self.idx[k], items[k].err) for k in range(run.first, run.first + run.count)
                if items[k].err]


def tcp_runs(recs: PacketRecords) -> tuple[object, int, object]:
    """Cut a classified batch into runs (struct pc_tcp_run): (runs, how many, payload refs).

    A data run is in-order data of one connection, so the TCP code decides once per run; the
    refs array holds (frame, payload offset, length) for every frame, a run's being
    ``refs[first:first + count]``, ready for :func:`send_payload_runs`. Arrays are reused per
    batch object and valid until the next call.
    """
    batch = recs.batch
    arrays = getattr(batch, "_tcp_runs", None)
    if arrays is None:
        arrays = batch._tcp_runs = (ffi.new("struct pc_tcp_run[]", batch.max_frames),
                                    ffi.new("struct pc_payload_ref[]", batch.max_frames))
    runs, refs = arrays
    n = check(lib.pc_tcp_runs(recs.recs, recs.count, refs, runs, batch.max_frames), "tcp_runs")
    return runs, n, refs


def send_payload_runs(fd: int, batch: TxBatch, refs: object,
                      runs: Sequence[tuple[int, int]]) -> int:
    """:func:`send_payloads` for runs (first ref, count) of a :func:`tcp_runs` refs array.

    One sendmsg() for all of them, without per-frame work in Python: a single run is passed
    as a pointer into ``refs``; several (one connection's runs, interleaved with others') are
    gathered into one array first.
    """
    if not runs:
        return 0
    if len(runs) == 1:
        ptr, count = refs + runs[0][0], runs[0][1]   # type: ignore[operator]
    else:
        count = sum(n for _first, n in runs)
        ptr = ffi.new("struct pc_payload_ref[]", count)
        size = ffi.sizeof("struct pc_payload_ref")
        at = 0
        for first, n in runs:
            ffi.memmove(ptr + at, refs + first, n * size)   # type: ignore[operator]
            at += n
    return _send_refs(fd, batch, ptr, count)


class TcpTemplate:
    """Header template of one flow as the guest sees it (struct pc_tcp_flow).

    src/sport is the remote side (us, to the guest), dst/dport the guest. The TCP code updates
    ``seq`` (sequence number of the byte at the socket's peek offset), ``ack``, ``window``
    (the raw, already scaled-down field), ``flags`` (default ACK|PSH; PSH only goes on the last
    segment of an rx() call), ``ts_val``/``ts_ecr`` with ``use_ts``, as its state changes.
    """

    _FIELDS = ("seq", "ack", "window", "mss", "ttl", "flags", "ts_val", "ts_ecr", "sport",
               "dport")

    def __init__(self, eth_dst: bytes, eth_src: bytes,
                 src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int,
                 mss: int = 1460, ttl: int = 64, seq: int = 0, ack: int = 0,
                 window: int = 65535, flags: int = TCP_ACK | TCP_PSH,
                 use_ts: bool = False, ts_val: int = 0, ts_ecr: int = 0) -> None:
        if src.version != dst.version:
            raise ValueError("address families differ")
        if len(eth_dst) != 6 or len(eth_src) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        c = self.c = ffi.new("struct pc_tcp_flow *")
        ffi.memmove(c.eth_dst, eth_dst, 6)
        ffi.memmove(c.eth_src, eth_src, 6)
        ffi.memmove(c.src, _ip16(src), 16)
        ffi.memmove(c.dst, _ip16(dst), 16)
        c.ipver = src.version
        c.sport, c.dport, c.mss, c.ttl = sport, dport, mss, ttl
        c.seq, c.ack, c.window, c.flags = seq, ack, window, flags
        c.use_ts = 1 if use_ts else 0
        c.ts_val, c.ts_ecr = ts_val, ts_ecr

    @property
    def ipver(self) -> int:
        """4 or 6."""
        return self.c.ipver

    @property
    def use_ts(self) -> bool:
        """Send the timestamps option (ts_val, ts_ecr) on every segment."""
        return bool(self.c.use_ts)

    @use_ts.setter
    def use_ts(self, on: bool) -> None:
        self.c.use_ts = 1 if on else 0

    def __getattr__(self, name: str) -> int:
        if name in TcpTemplate._FIELDS:
            return getattr(self.c, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in TcpTemplate._FIELDS:
            setattr(self.c, name, value)
        else:
            object.__setattr__(self, name, value)


class TcpRxResult:
    """What the last TcpPath.rx() did: payload bytes, segments, RX chains used, bad chains,
    whether the guest was notified, and why it stopped (TCP_STOP_*)."""

    __slots__ = ("bytes", "segs", "bufs", "bad", "notified", "stop")

    def __init__(self, res: object = None) -> None:
        if res is None:
            self.bytes = self.segs = self.bufs = self.bad = self.stop = 0
            self.notified = False
        else:
            self.bytes, self.segs, self.bufs, self.bad = res.bytes, res.segs, res.bufs, res.bad
            self.notified, self.stop = bool(res.notified), res.stop

    def __repr__(self) -> str:
        return (f"TcpRxResult(bytes={self.bytes}, segs={self.segs}, bufs={self.bufs}, "
                f"bad={self.bad}, notified={self.notified}, stop={self.stop})")


def tcp_build(tmpl: TcpTemplate, flags: int, options: BytesLike = b"",
              payload: BytesLike = b"") -> bytes:
    """One Ethernet frame of tmpl's flow with full checksums (tap back-ends, pcap, tests).

    options: TCP option bytes, padded by the caller to a multiple of 4 (at most 40).
    """
    out = ffi.new("uint8_t[]", 14 + 40 + 60 + len(payload))
    opt = ffi.from_buffer(options) if options else ffi.NULL
    pay = ffi.from_buffer(payload) if payload else ffi.NULL
    n = check(lib.pc_tcp_build(tmpl.c, flags, opt, len(options), pay, len(payload), out,
                               len(out)), "tcp_build")
    return ffi.buffer(out, n)[:]


class TcpPath:
    """The host-to-guest TCP data path on one RX ring: rx() per flow event, ctl() per control
    segment; the ring's flush() after a batch of rx(flush=False) calls. Holds C scratch
    (~100 KiB)."""

    def __init__(self, ring: Virtqueue) -> None:
        self.ring = ring
        self._raw = ffi.new("char[]", lib.pc_tcp_scratch_size())
        self._scratch = ffi.cast("struct pc_tcp_scratch *", self._raw)
        self._res = ffi.new("struct pc_tcp_rx_result *")
        self._rxres = ffi.new("struct pc_rx_result *")
        self.last = TcpRxResult()

    def rx(self, fd: int, tmpl: TcpTemplate, max_bytes: int, hdr_len: int = 12,
           mergeable: bool = True, opts: int = 0, flush: bool = True) -> int:
        """Peek up to max_bytes from fd into guest RX buffers as segments of tmpl's flow.

        opts: TCP_RX_GSO (guest negotiated GUEST_TSO4/6 for this family), TCP_RX_CSUM_PARTIAL
        or TCP_RX_DATA_VALID (guest negotiated GUEST_CSUM); see NetDevice.tcp_rx_opts().
        Returns payload bytes delivered (advance tmpl.seq by it); details, including why it
        stopped (EOF, no buffers...), in self.last. flush=False leaves the used-ring update
        and notification for the ring's flush(). Raises CoreError on socket errors
        (ECONNRESET...).
        """
        o = opts | (0 if flush else TCP_RX_NO_FLUSH)
        ret = lib.pc_tcp_rx(self.ring._vq, self._scratch, fd, tmpl.c, hdr_len,
                            1 if mergeable else 0, max(0, min(max_bytes, 0xFFFFFFFF)), o,
                            self._res)
        self.last = TcpRxResult(self._res)
        return check(ret, "tcp_rx")

    def ctl(self, tmpl: TcpTemplate, flags: int, options: BytesLike | None = None,
            hdr_len: int = 12, mergeable: bool = True, data_valid: bool = False) -> bool:
        """Place one header-only segment (flags from TCP_*, seq/ack/window from tmpl).

        options: TCP option bytes (padded to a multiple of 4); None sends tmpl's timestamps
        option when tmpl.use_ts. Returns False if the guest has no RX buffer right now.
        """
        opt = ffi.from_buffer(options) if options else ffi.NULL
        n = check(lib.pc_tcp_ctl(self.ring._vq, tmpl.c, flags, opt,
                                 len(options) if options else 0, hdr_len,
                                 1 if mergeable else 0,
                                 TCP_RX_DATA_VALID if data_valid else 0, self._rxres),
                  "tcp_ctl")
        return bool(n and self._rxres.placed)


def set_peek_offset(sock: socket.socket | int, offset: int) -> None:
    """Enable SO_PEEK_OFF on a TCP socket at offset (bytes in flight to the guest)."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    s = socket.socket(fileno=fd)
    try:
        s.setsockopt(socket.SOL_SOCKET, _SO_PEEK_OFF, offset)
    finally:
        s.detach()


_SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)

# ---- host to guest UDP (csrc/udp_path.c) ----
UDP_RX_CSUM_PARTIAL = lib.PC_UDP_RX_CSUM_PARTIAL
UDP_RX_DATA_VALID = lib.PC_UDP_RX_DATA_VALID
UDP_STOP_DRAINED = lib.PC_UDP_STOP_DRAINED
UDP_STOP_NOBUFS = lib.PC_UDP_STOP_NOBUFS
UDP_STOP_LIMIT = lib.PC_UDP_STOP_LIMIT
UDP_STOP_UNKNOWN = lib.PC_UDP_STOP_UNKNOWN
UDP_STOP_STOPPED = lib.PC_UDP_STOP_STOPPED
UDP_STOP_ERROR = lib.PC_UDP_STOP_ERROR
UDP_SPILL = 65536


class UdpTemplates:
    """Header templates (struct pc_udp_flow) of the flows one host socket feeds, for
    UdpPath.rx(): one with ``peer=None`` for a connected socket, or one per host peer for a
    socket several flows share (a -u listener). All of one IP version (the guest side's)."""

    def __init__(self, capacity: int = 1) -> None:
        self.c = ffi.new("struct pc_udp_flow[]", capacity)
        self.capacity = capacity
        self.n = 0
        self.mac = b""          # the guest MAC the entries were built for

    def set(self, i: int, eth_dst: bytes, eth_src: bytes,
            src: ipaddress.IPv4Address | ipaddress.IPv6Address,
            dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int,
            peer: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None = None,
            ttl: int = 255) -> None:
        """Entry ``i`` (the entries in use are the first ``n``): src/sport are the side the
        guest talks to, dst/dport the guest; datagrams from ``peer`` (None: any) take it."""
        if src.version != dst.version:
            raise ValueError("address families differ")
        if len(eth_dst) != 6 or len(eth_src) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        c = self.c[i]
        self.mac = bytes(eth_dst)
        ffi.memmove(c.eth_dst, eth_dst, 6)
        ffi.memmove(c.eth_src, eth_src, 6)
        ffi.memmove(c.src, _ip16(src), 16)
        ffi.memmove(c.dst, _ip16(dst), 16)
        c.sport, c.dport, c.ipver, c.ttl, c.count = sport, dport, src.version, ttl, 0
        c.any_peer = 1 if peer is None else 0
        if peer is not None:
            ffi.memmove(c.peer, _ip16(peer[0]), 16)
            c.peer_port = peer[1]

    def take_count(self, i: int) -> int:
        """Datagrams delivered for entry ``i`` since the last call."""
        c = self.c[i]
        n, c.count = c.count, 0
        return n


class UdpPath:
    """Host -> guest UDP on one RX ring: rx() receives a socket's datagrams straight into RX
    buffers (csrc/udp_path.c); the ring's flush() after a batch of rx(flush=False) calls."""

    def __init__(self, ring: Virtqueue) -> None:
        self.ring = ring
        self.last = ffi.new("struct pc_udp_rx_result *")
        self._spill = ffi.new("uint8_t[]", UDP_SPILL)

    def rx(self, fd: int, tmpls: UdpTemplates, hdr_len: int = 12, mergeable: bool = True,
           max_dgrams: int = 64, opts: int = 0, flush: bool = True) -> int:
        """Datagrams delivered; self.last says why it stopped (UDP_STOP_*), how many were
        dropped as undeliverable, the socket error (STOP_ERROR) and the spilled datagram
        (STOP_UNKNOWN: from a peer no template covers, see spilled())."""
        o = opts | (0 if flush else lib.PC_UDP_RX_NO_FLUSH)
        return check(lib.pc_udp_rx(self.ring._vq, fd, tmpls.c, tmpls.n, hdr_len,
                                   1 if mergeable else 0, max_dgrams, o, self._spill,
                                   UDP_SPILL, self.last), "udp_rx")

    def spilled(self) -> tuple[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
        """The datagram the last rx() left in the spill buffer, and its peer (address, port)."""
        r = self.last
        raw = bytes(ffi.buffer(r.spill_addr, 16))
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(raw)
        if r.spill_family == 4:
            addr = ipaddress.IPv4Address(raw[12:])
        return ffi.buffer(self._spill, r.spill_len)[:], addr, r.spill_port


# ---- fast path (csrc/fastpath.c) ----
# SECTION fastpath
from typing import Any  # noqa: E402


class FastPath:
    """Readiness events the C core handles inside the loop's wait (csrc/fastpath.c).

    poll() replaces epoll's poll(): a readable socket of a registered UDP flow has its
    datagrams delivered into the RX ring, a TX kick whose frames are datagrams of registered
    tuples has them sent, without a return to Python; the other events come back as
    (fd, mask) pairs, a socket error C met as EPOLLERR. Entries are a cache of Python's flow
    table: add them for flows that may take this path, remove them before the socket closes.
    The rings given to set_rx()/set_tx() are kept referenced until replaced.
    """

    def __init__(self, max_entries: int, max_events: int = 256) -> None:
        self._f = ffi.gc(lib.pc_fast_new(max_entries), lib.pc_fast_free)
        if self._f == ffi.NULL:
            raise MemoryError("pc_fast_new")
        self._out = ffi.new("struct pc_fast_event[]", max_events)
        self._max = max_events
        self._rx: Virtqueue | None = None        # referenced while C holds the ring
        self._tx: Virtqueue | None = None
        self._key = (ffi.new("uint8_t[16]"), ffi.new("uint8_t[16]"))
        self.gen = 0        # bumped by clear(): entries added before it are gone

    def set_rx(self, ring: "Virtqueue | None", hdr_len: int = 12, mergeable: bool = True,
               opts: int = 0, batch: int = 64) -> None:
        """Deliver into ``ring`` (running and enabled), or into nothing (None)."""
        self._rx = ring
        lib.pc_fast_set_rx(self._f, ring._vq if ring is not None else ffi.NULL, hdr_len,
                           1 if mergeable else 0, opts, batch)

    def set_tx(self, ring: "Virtqueue | None", kick_fd: int = -1) -> None:
        """Drain ``ring`` (running and enabled) on its kick fd's events, or nothing (None)."""
        self._tx = ring
        lib.pc_fast_set_tx(self._f, ring._vq if ring is not None else ffi.NULL,
                           kick_fd if ring is not None else -1)

    @staticmethod
    def _added(ret: int, what: str) -> bool:
        """An add call's result: True, False for a full table, CoreError otherwise."""
        if ret == -errno.ENOSPC:
            return False
        check(ret, what)
        return True

    def add_rx(self, fd: int, tmpls: UdpTemplates) -> bool:
        """Deliver ``fd``'s datagrams with ``tmpls``' first template; False if full."""
        return self._added(lib.pc_fast_add_rx(self._f, fd, tmpls.c), "fast_add_rx")

    def _tuple(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
               dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[object, object]:
        a, b = self._key
        ffi.memmove(a, _ip16(src), 16)
        ffi.memmove(b, _ip16(dst), 16)
        return a, b

    def _by_tuple(self, fn: Any, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                  dport: int) -> int:
        """A count-returning call on a tuple's entry (0 without one)."""
        a, b = self._tuple(src, dst)
        return max(0, fn(self._f, src.version, a, b, sport, dport))

    def add_tx(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
               dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int,
               fd: int) -> bool:
        """Send the guest's datagrams src:sport -> dst:dport on ``fd``; False if full."""
        a, b = self._tuple(src, dst)
        return self._added(lib.pc_fast_add_tx(self._f, src.version, a, b, sport, dport, fd),
                           "fast_add_tx")

    def remove_rx(self, fd: int) -> int:
        """Forget ``fd``'s entry; datagrams delivered since last counted (0 if none)."""
        return max(0, lib.pc_fast_remove_rx(self._f, fd))

    def remove_tx(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                  dport: int) -> int:
        """Forget a tuple's entry; datagrams sent since last counted (0 if none)."""
        return self._by_tuple(lib.pc_fast_remove_tx, src, dst, sport, dport)

    def rx_count(self, fd: int) -> int:
        """Datagrams delivered from ``fd`` since the last call (0 without an entry)."""
        return max(0, lib.pc_fast_rx_count(self._f, fd))

    def tx_count(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                 dport: int) -> int:
        """Guest datagrams of a tuple sent since the last call (0 without an entry)."""
        return self._by_tuple(lib.pc_fast_tx_count, src, dst, sport, dport)

    def clear(self, epfd: int) -> None:
        """Forget every entry (muted sockets are restored in ``epfd`` first)."""
        check(lib.pc_fast_clear(self._f, epfd), "fast_clear")
        self.gen += 1

    def rx_ready(self, epfd: int) -> int:
        """The guest added RX buffers: sockets muted for lack of them are watched again."""
        return lib.pc_fast_rx_ready(self._f, epfd)

    def stats(self) -> Any:
        """Counters (struct pc_fast_stats): datagrams each way, dropped, events handled and
        reported, entries, muted sockets."""
        out = ffi.new("struct pc_fast_stats *")
        lib.pc_fast_stats(self._f, out)
        return out

    # ---- TCP connections (csrc/fast_tcp.c) ----
    def set_tcp(self, opts4: int, opts6: int, per_event: int, max_window: int) -> None:
        """RX options (TCP_RX_*: GSO, checksums) per IP version, host bytes per connection
        and event, the largest window offered."""
        lib.pc_fast_set_tcp(self._f, opts4, opts6, per_event, max_window)

    @staticmethod
    def tcp_state() -> Any:
        """A zeroed struct pc_fast_tcp, to fill for add_tcp() or receive remove_tcp()'s."""
        return ffi.new("struct pc_fast_tcp *")

    def add_tcp(self, state: Any) -> bool:
        """Run an established connection's steady state in C; False if a table is full."""
        return self._added(lib.pc_fast_add_tcp(self._f, state), "fast_add_tcp")

    def remove_tcp(self, fd: int, out: Any) -> bool:
        """Take ``fd``'s connection back into ``out``; False if C did not hold it."""
        return lib.pc_fast_remove_tcp(self._f, fd, out) == 0

    def tcp_events(self, fd: int) -> int:
        """Events C handled for ``fd``'s connection since the last call (0 without one)."""
        return max(0, lib.pc_fast_tcp_events(self._f, fd))

    def poll(self, epfd: int, timeout: float) -> list[tuple[int, int]]:
        """Like epoll's poll(timeout) (seconds, negative: no limit): the events C left."""
        ms = -1 if timeout < 0 else int(timeout * 1000 + 0.999)
        n = check(lib.pc_fast_poll(self._f, epfd, ms, self._out, self._max), "fast_poll")
        out = self._out
        return [(out[i].fd, out[i].events) for i in range(n)]


FAST_EV_BACK = lib.PC_FAST_EV_BACK
FAST_BACK_ACK = lib.PC_FAST_BACK_ACK
FAST_BACK_H2G = lib.PC_FAST_BACK_H2G
FAST_BACK_FULL = lib.PC_FAST_BACK_FULL
FAST_BACK_ERR = lib.PC_FAST_BACK_ERR
FAST_BACK_TIMER = lib.PC_FAST_BACK_TIMER


def tcp_send_window(fd: int, local: bool, max_window: int) -> int:
    """The window to offer the guest on socket ``fd`` (see pc_tcp_send_window())."""
    return lib.pc_tcp_send_window(fd, 1 if local else 0, max_window)


def tcp_sndbuf_limit(sndbuf: int) -> int:
    """How much the guest may queue in a socket of SO_SNDBUF ``sndbuf``."""
    return lib.pc_tcp_sndbuf_limit(sndbuf)


# ---- migration helpers ----
# SECTION migrate
