# SPDX-License-Identifier: MIT
"""Pure-Python reference of guest memory translation and the split-virtqueue walk.

Slow and obvious on purpose: it is the oracle the property tests hold csrc/guest_mem.c and
csrc/virtq.c against, so it makes the same checks in the same order and classifies bad chains
with the same kinds, writes the same used-ring bytes and sets the same dirty-log pages. It works
on any writable bytes-like object laid out as the front-end's memory file (a bytearray copy of a
memfd in the tests) and never imports the C core.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Sequence

# Same values as the PC_* constants in csrc/passt_core.h (a test checks they agree).
MAX_REGIONS = 8
LOG_PAGE_SHIFT = 12
VQ_MAX_SIZE = 32768
VRING_F_LOG = 1
MAX_INDIRECT = 65536
RX_MAX_IOV = 1024
RX_MAX_CHAINS = 256
MAX_HDR = 64
OK, ERR_HEAD, ERR_NEXT, ERR_LOOP, ERR_ADDR, ERR_DIR, ERR_INDIRECT, ERR_SHORT, ERR_IOV = range(9)

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
U64 = (1 << 64) - 1


class RingBroken(Exception):
    """The avail idx ran more than num ahead of us (C returns -EIO)."""


@dataclass(frozen=True)
class RefRegion:
    """One region: guest-physical and front-end virtual address, size, offset in the buffer."""

    gpa: int
    size: int
    uva: int
    offset: int


@dataclass
class RefMemory:
    """Guest memory as regions of one buffer, with an optional dirty log (a set of pages)."""

    buf: bytearray | memoryview
    regions: list[RefRegion] = field(default_factory=list)
    log_size: int = 0           # bytes of log mapped; 0 = no log
    logging: bool = False       # LOG_ALL requested
    dirty: set[int] = field(default_factory=set)

    def gpa_span(self, gpa: int, length: int) -> tuple[int, int] | None:
        """(buffer offset, contiguous bytes up to length) of gpa, or None (C: gpa_span)."""
        if length > U64 - gpa:
            return None
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                return r.offset + gpa - r.gpa, min(length, r.gpa + r.size - gpa)
        return None

    def gpa_range(self, gpa: int, length: int) -> int | None:
        """Buffer offset of [gpa, gpa+length) if it lies in one region, else None."""
        got = self.gpa_span(gpa, length)
        return got[0] if got and got[1] == length else None

    def uva_range(self, uva: int, length: int) -> int | None:
        """Buffer offset of a front-end virtual range inside one region, else None."""
        if not length or length > U64 - uva:
            return None
        for r in self.regions:
            if r.uva <= uva < r.uva + r.size and length <= r.uva + r.size - uva:
                return r.offset + uva - r.uva
        return None

    def log(self, gpa: int, length: int) -> None:
        """Record the pages of [gpa, gpa+length) as dirty, as the C log would set bits."""
        if not length or not (self.logging and self.log_size):
            return
        length = min(length, U64 - gpa)
        nbits = self.log_size * 8
        last = min((gpa + length - 1) >> LOG_PAGE_SHIFT, nbits - 1)
        self.dirty.update(range(gpa >> LOG_PAGE_SHIFT, last + 1))

    def read(self, gpa: int, length: int) -> bytes:
        """Bounds-checked copy out across adjacent regions; ValueError if out of memory."""
        out = bytearray()
        while length:
            got = self.gpa_span(gpa, length)
            if got is None:
                raise ValueError("outside guest memory")
            off, span = got
            out += self.buf[off:off + span]
            gpa += span
            length -= span
        return bytes(out)


@dataclass
class RefVirtqueue:
    """A started split ring over RefMemory; mirrors struct pc_vq's batch operations."""

    mem: RefMemory
    num: int
    desc_uva: int
    used_uva: int
    avail_uva: int
    log_addr: int = 0
    log_flags: int = 0
    event_idx: bool = False
    indirect: bool = False
    last_avail: int = 0
    used_idx: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        m = self.mem
        self.desc = m.uva_range(self.desc_uva, 16 * self.num)
        self.avail = m.uva_range(self.avail_uva, 6 + 2 * self.num)
        self.used = m.uva_range(self.used_uva, 6 + 8 * self.num)
        if self.desc is None or self.avail is None or self.used is None:
            raise ValueError("ring not inside guest memory")
        self.used_idx = self._u16(self.used + 2)

    # -- raw field access --------------------------------------------------------------------
    def _u16(self, off: int) -> int:
        return struct.unpack_from("<H", self.mem.buf, off)[0]

    def _put16(self, off: int, v: int) -> None:
        struct.pack_into("<H", self.mem.buf, off, v & 0xFFFF)

    def _avail_idx(self) -> tuple[int, int]:
        idx = self._u16(self.avail + 2)
        pending = (idx - self.last_avail) & 0xFFFF
        if pending > self.num:
            raise RingBroken(f"avail idx {idx} runs {pending} ahead of {self.last_avail}")
        return idx, pending

    def avail_pending(self) -> int:
        """New chains available (RingBroken if the avail idx is broken)."""
        return self._avail_idx()[1]

    def _head(self) -> int:
        return self._u16(self.avail + 4 + 2 * (self.last_avail % self.num))

    # -- chain walk --------------------------------------------------------------------------
    def walk(self, head: int, write: bool, room: int) -> tuple[int, list[tuple[int, int, int]]]:
        """Walk one chain: (kind, slices as (gpa, buffer offset, length)); room bounds slices."""
        slices: list[tuple[int, int, int]] = []
        if head >= self.num:
            return ERR_HEAD, slices
        table, size, idx, count, in_indirect = self.desc, self.num, head, 0, False
        total = 0
        while True:
            count += 1
            if count > size:
                return ERR_LOOP, slices
            addr, length, flags, nxt = struct.unpack_from("<QIHH", self.mem.buf, table + 16 * idx)
            if flags & DESC_F_INDIRECT:
                if (not self.indirect or in_indirect or flags & DESC_F_NEXT or not length
                        or length % 16 or length // 16 > MAX_INDIRECT):
                    return ERR_INDIRECT, slices
                t = self.mem.gpa_range(addr, length)
                if t is None:
                    return ERR_INDIRECT, slices
                table, size, idx, count, in_indirect = t, length // 16, 0, 0, True
                continue
            if bool(flags & DESC_F_WRITE) != write:
                return ERR_DIR, slices
            if length > U64 - addr:
                return ERR_ADDR, slices
            left = length
            while left:
                got = self.mem.gpa_span(addr, left)
                if got is None:
                    return ERR_ADDR, slices
                if len(slices) >= room:
                    return ERR_IOV, slices
                slices.append((addr, got[0], got[1]))
                total += got[1]
                if total > 0xFFFFFFFF:          # used lengths are 32-bit
                    return ERR_ADDR, slices
                addr += got[1]
                left -= got[1]
            if not flags & DESC_F_NEXT:
                return OK, slices
            if nxt >= size:
                return ERR_NEXT, slices
            idx = nxt

    # -- used ring ---------------------------------------------------------------------------
    def _put_used(self, head: int, length: int) -> None:
        struct.pack_into("<II", self.mem.buf, self.used + 4 + 8 * (self.used_idx % self.num),
                         head, length)
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def _log_used(self, off: int, length: int) -> None:
        if self.log_flags & VRING_F_LOG:
            self.mem.log(self.log_addr + off, length)

    def _set_avail_event(self, idx: int | None = None) -> None:
        if self.event_idx:
            off = 4 + 8 * self.num
            self._put16(self.used + off, self.last_avail if idx is None else idx)
            self._log_used(off, 2)

    def _flush(self, old: int) -> bool:
        new = self.used_idx
        n = (new - old) & 0xFFFF
        if not n:
            return False
        self._put16(self.used + 2, new)
        if self.mem.logging and self.mem.log_size:
            n = min(n, self.num)
            start = old % self.num
            first = min(self.num - start, n)
            self._log_used(4 + 8 * start, 8 * first)
            if n > first:
                self._log_used(4, 8 * (n - first))
            self._log_used(2, 2)
        if self.event_idx:
            event = self._u16(self.avail + 4 + 2 * self.num)
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self._u16(self.avail) & AVAIL_F_NO_INTERRUPT

    # -- TX ----------------------------------------------------------------------------------
    def pop_tx(self, max_frames: int, hdr_len: int = 12, max_iov: int = 1024
               ) -> tuple[list[tuple[int, bytes]], list[tuple[int, int]]]:
        """Drain chains: ([(head, payload)], [(head, kind)]), like pc_vq_pop_tx()."""
        _, pending = self._avail_idx()
        frames: list[tuple[int, bytes]] = []
        bad: list[tuple[int, int]] = []
        used_iov = 0
        while pending and len(frames) + len(bad) < max_frames:
            head = self._head()
            kind, slices = self.walk(head, False, max_iov - used_iov)
            total = sum(s[2] for s in slices)
            if kind == OK and total < hdr_len:
                kind = ERR_SHORT
            if kind == ERR_IOV and used_iov:
                break
            self.last_avail = (self.last_avail + 1) & 0xFFFF
            pending -= 1
            if kind != OK:
                bad.append((head, kind))
                continue
            data = b"".join(bytes(self.mem.buf[o:o + n]) for _, o, n in slices)
            frames.append((head, data[hdr_len:]))
            used_iov += len(slices)
        if frames or bad:
            self._set_avail_event()
        return frames, bad

    def release(self, heads: Sequence[int]) -> bool:
        """Return heads (good then bad, as C does) with length 0; True if a notify is due."""
        if not heads:
            return False
        old = self.used_idx
        for h in heads:
            self._put_used(h, 0)
        return self._flush(old)

    # -- RX ----------------------------------------------------------------------------------
    def push_rx(self, frames: Sequence[bytes], hdr_len: int = 12, mergeable: bool = True,
                vnet_hdr: bytes | None = None) -> tuple[int, int, int, int, bool]:
        """Place whole frames: (consumed, placed, dropped, bad chains, notified)."""
        if hdr_len > MAX_HDR:
            raise ValueError("header too long")
        avail_idx, _ = self._avail_idx()
        old, start = self.used_idx, self.last_avail
        placed = dropped = bad = 0
        out = False
        for frame in frames:
            need = hdr_len + len(frame)
            f_last, f_used = self.last_avail, self.used_idx
            chains: list[tuple[int, list[tuple[int, int, int]]]] = []
            niov = got = nbad = 0
            too_big = False
            out = False
            while not chains or got < need:
                if len(chains) == RX_MAX_CHAINS:
                    too_big = True
                    break
                if self.last_avail == avail_idx:
                    self.last_avail, self.used_idx = f_last, f_used
                    bad -= nbad
                    out = True
                    break
                head = self._head()
                self.last_avail = (self.last_avail + 1) & 0xFFFF
                kind, slices = self.walk(head, True, RX_MAX_IOV - niov)
                if kind == ERR_IOV and niov:
                    self._put_used(head, 0)
                    too_big = True
                    break
                if kind != OK:
                    self._put_used(head, 0)
                    bad += 1
                    nbad += 1
                    continue
                chains.append((head, slices))
                niov += len(slices)
                got += sum(s[2] for s in slices)
                if not mergeable:
                    break
            if out:
                break
            if too_big or got < need:
                for head, _ in chains:
                    self._put_used(head, 0)
                dropped += 1
                continue
            hdr = bytearray(vnet_hdr if vnet_hdr is not None else bytes(hdr_len))
            if hdr_len >= 12:
                hdr[10:12] = struct.pack("<H", len(chains))
            src = bytes(hdr) + bytes(frame)
            pos = 0
            for head, slices in chains:
                written = 0
                for gpa, off, n in slices:
                    n = min(n, len(src) - pos)
                    self.mem.buf[off:off + n] = src[pos:pos + n]
                    self.mem.log(gpa, n)
                    pos += n
                    written += n
                self._put_used(head, written)
            placed += 1
        if out:          # stopped for buffers: the event goes to the driver's avail idx
            self._set_avail_event(avail_idx)
        elif self.last_avail != start:
            self._set_avail_event()
        notified = self._flush(old)
        return placed + dropped, placed, dropped, bad, notified
