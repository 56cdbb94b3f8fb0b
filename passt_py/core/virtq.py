# SPDX-License-Identifier: MIT
"""Split virtqueues on the device side (csrc/virtq.c): TX batches, RX pushes, capture.

The vhost-user layer calls only these wrappers, one C call per batch; rings re-translate by
themselves after a change of the guest memory table they are built on.
"""
from __future__ import annotations

import array
import os
from collections.abc import Sequence
from typing import NamedTuple

from passt_py.core._lib import check, ffi, lib
from passt_py.core.guest_mem import GuestMemory

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


#: Capture: bytes kept of each frame (the pcap file header says the same).
SNAPLEN = 262144


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
        header's, SNAPLEN by default; the caller writes that header).
        ``hdr_len``: the RX virtio-net header length. The fd stays the caller's: turn capture
        off before closing it. A failed write turns capture off (see :attr:`capture`).
        """
        if snaplen is None:
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
