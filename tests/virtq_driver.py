# SPDX-License-Identifier: MIT
"""The driver (guest) side of split virtqueues, in pure Python, for tests and test front-ends.

GuestRam is guest memory in one memfd, cut into regions at chosen guest-physical addresses;
its fd and region table are what a vhost-user front-end sends in SET_MEM_TABLE. DriverRing lays
a split ring out in that memory and plays the guest driver: it adds TX chains and RX buffers,
publishes them in the avail ring and reads the used ring back. Raw helpers (write_desc,
put_avail, set_avail_idx, ...) let tests build hostile rings byte by byte.

Addresses: desc buffers and `log_guest_addr` are guest-physical (gpa); ring addresses handed to
the device (DriverRing.vring_addr()) are front-end virtual addresses (uva = uva_base + the
region's file offset + offset in region). All multi-byte fields are little-endian (virtio 1.x).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
VNET_HDR_LEN = 12
PAGE = 4096


@dataclass(frozen=True)
class Region:
    """One region of GuestRam, with the four numbers SET_MEM_TABLE carries."""

    gpa: int
    size: int
    uva: int
    offset: int      # offset in the memfd (mmap_offset)


class GuestRam:
    """Guest memory: one memfd (shared mmap) holding regions at the given guest addresses.

    layout is a sequence of (gpa, size); regions follow each other in the file from
    file_offset. A bump allocator hands out guest memory for rings and buffers.
    """

    def __init__(self, layout: Sequence[tuple[int, int]] = ((0, 1 << 20),),
                 uva_base: int = 0x7F00_0000_0000, file_offset: int = 0) -> None:
        self.fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        regions, off = [], file_offset
        for gpa, size in layout:
            regions.append(Region(gpa, size, uva_base + off, off))
            off += size
        self.regions: list[Region] = regions
        self.file_size = off
        os.ftruncate(self.fd, off)
        self.mm = mmap.mmap(self.fd, off, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._next = [r.gpa for r in regions]      # bump pointer per region

    # -- layout -------------------------------------------------------------------------------
    def region_args(self) -> list[tuple[int, int, int, int, int]]:
        """(fd, gpa, size, uva, mmap_offset) per region, in GuestMemory.add_region order."""
        return [(self.fd, r.gpa, r.size, r.uva, r.offset) for r in self.regions]

    def map_into(self, mem) -> None:  # noqa: ANN001 - any object with add_region()
        """Add every region to a device-side memory object (GuestMemory or alike)."""
        for args in self.region_args():
            mem.add_region(*args)

    def _region(self, gpa: int, length: int) -> Region:
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.gpa + r.size:
                return r
        raise ValueError(f"[{gpa:#x}, +{length:#x}) not inside one region")

    def file_off(self, gpa: int, length: int = 1) -> int:
        """Offset in the memfd of a guest range lying inside one region."""
        r = self._region(gpa, length)
        return r.offset + gpa - r.gpa

    def uva(self, gpa: int) -> int:
        """Front-end virtual address of a guest-physical address."""
        r = self._region(gpa, 1)
        return r.uva + gpa - r.gpa

    # -- access -------------------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        """Read guest memory (inside one region)."""
        off = self.file_off(gpa, length)
        return self.mm[off:off + length]

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest memory (inside one region)."""
        off = self.file_off(gpa, len(data))
        self.mm[off:off + len(data)] = data

    def snapshot(self) -> bytes:
        """The whole memfd, to prove later that nothing changed (or to copy for an oracle)."""
        return self.mm[:]

    def alloc(self, size: int, align: int = 16, region: int = 0) -> int:
        """Hand out size bytes of guest memory in a region (never freed); returns the gpa."""
        r = self.regions[region]
        gpa = (self._next[region] + align - 1) // align * align
        if gpa + size > r.gpa + r.size:
            raise MemoryError(f"region {region} full")
        self._next[region] = gpa + size
        return gpa

    def close(self) -> None:
        """Unmap and close the memfd."""
        self.mm.close()
        os.close(self.fd)


class DriverRing:
    """A split ring in GuestRam, driven from the guest side."""

    def __init__(self, ram: GuestRam, num: int, region: int = 0) -> None:
        self.ram = ram
        self.num = num
        self.desc_gpa = ram.alloc(16 * num, 16, region)
        self.avail_gpa = ram.alloc(6 + 2 * num, 2, region)
        self.used_gpa = ram.alloc(6 + 8 * num, 4, region)
        self.region = region
        self.avail_idx = 0          # driver's shadow of avail->idx
        self.last_used = 0          # next used entry to read
        self.free = list(range(num))
        self.chains: dict[int, list[int]] = {}     # in flight: head -> descriptor indexes
        self.layout: dict[int, list[int]] = {}     # last chain built at each head

    # -- what the device needs ---------------------------------------------------------------
    def vring_addr(self) -> tuple[int, int, int, int]:
        """(desc_uva, used_uva, avail_uva, log_guest_addr), as SET_VRING_ADDR carries them."""
        return (self.ram.uva(self.desc_gpa), self.ram.uva(self.used_gpa),
                self.ram.uva(self.avail_gpa), self.used_gpa)

    # -- raw access (hostile tests) -------------------------------------------------------------
    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, next: int = 0) -> None:
        """Write descriptor i of the table as given, no checks."""
        self.ram.write(self.desc_gpa + 16 * i, struct.pack("<QIHH", addr, length, flags, next))

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of descriptor i."""
        return struct.unpack("<QIHH", self.ram.read(self.desc_gpa + 16 * i, 16))

    def put_avail(self, head: int, publish: bool = True) -> None:
        """Put head in the next avail slot and (by default) bump avail->idx."""
        self.ram.write(self.avail_gpa + 4 + 2 * (self.avail_idx % self.num),
                       struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if publish:
            self.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        """Write avail->idx (may be a lie, for hostile tests)."""
        self.ram.write(self.avail_gpa + 2, struct.pack("<H", idx & 0xFFFF))

    def set_avail_flags(self, flags: int) -> None:
        """Write avail->flags (AVAIL_F_NO_INTERRUPT)."""
        self.ram.write(self.avail_gpa, struct.pack("<H", flags))

    def set_used_event(self, idx: int) -> None:
        """Write used_event (the slot after the avail ring), for EVENT_IDX."""
        self.ram.write(self.avail_gpa + 4 + 2 * self.num, struct.pack("<H", idx & 0xFFFF))

    @property
    def used_idx(self) -> int:
        """used->idx as the device last published it."""
        return struct.unpack("<H", self.ram.read(self.used_gpa + 2, 2))[0]

    @property
    def avail_event(self) -> int:
        """avail_event (the slot after the used ring), written by the device with EVENT_IDX."""
        return struct.unpack("<H", self.ram.read(self.used_gpa + 4 + 8 * self.num, 2))[0]

    def used_entry(self, slot: int) -> tuple[int, int]:
        """(id, len) of used ring slot (free-running index, taken modulo num)."""
        return struct.unpack("<II", self.ram.read(self.used_gpa + 4 + 8 * (slot % self.num), 8))

    def pop_used(self) -> list[tuple[int, int]]:
        """Used entries published since the last call; their chains' descriptors are freed."""
        out = []
        end = self.used_idx
        while self.last_used != end:
            head, length = self.used_entry(self.last_used)
            out.append((head, length))
            self.free.extend(self.chains.pop(head, []))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    # -- building chains -------------------------------------------------------------------------
    def add_chain(self, buffers: Iterable[tuple[int, int, bool]], publish: bool = True) -> int:
        """Chain (gpa, len, device_writable) buffers through free descriptors; returns head."""
        bufs = list(buffers)
        if len(bufs) > len(self.free):
            raise MemoryError("not enough free descriptors")
        idx = [self.free.pop(0) for _ in bufs]
        for k, (gpa, length, writable) in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (DESC_F_WRITE if writable else 0) | (0 if last else DESC_F_NEXT)
            self.write_desc(idx[k], gpa, length, flags, 0 if last else idx[k + 1])
        self.chains[idx[0]] = self.layout[idx[0]] = idx
        self.put_avail(idx[0], publish)
        return idx[0]

    def add_indirect(self, buffers: Sequence[tuple[int, int, bool]], publish: bool = True) -> int:
        """One descriptor pointing to an indirect table holding the buffers; returns head."""
        table = self.ram.alloc(16 * len(buffers), 16, self.region)
        for k, (gpa, length, writable) in enumerate(buffers):
            last = k == len(buffers) - 1
            flags = (DESC_F_WRITE if writable else 0) | (0 if last else DESC_F_NEXT)
            self.ram.write(table + 16 * k,
                           struct.pack("<QIHH", gpa, length, flags, 0 if last else k + 1))
        head = self.free.pop(0)
        self.write_desc(head, table, 16 * len(buffers), DESC_F_INDIRECT)
        self.chains[head] = self.layout[head] = [head]
        self.put_avail(head, publish)
        return head

    def add_tx_buffer(self, data: bytes, hdr: bytes = bytes(VNET_HDR_LEN),
                      split: Sequence[int] | None = None, indirect: bool = False,
                      publish: bool = True) -> int:
        """Add a TX frame (hdr + data), cut into descriptors of the split sizes; returns head.

        split lists segment lengths of hdr+data (the last one takes the rest); by default the
        frame is one descriptor.
        """
        blob = hdr + data
        sizes = list(split or [])
        rest = len(blob) - sum(sizes)
        if rest < 0:
            raise ValueError("split longer than the frame")
        if rest or not sizes:
            sizes.append(rest)
        bufs, pos = [], 0
        for n in sizes:
            gpa = self.ram.alloc(max(n, 1), 1, self.region)
            self.ram.write(gpa, blob[pos:pos + n])
            bufs.append((gpa, n, False))
            pos += n
        return self.add_indirect(bufs, publish) if indirect else self.add_chain(bufs, publish)

    def add_rx_buffers(self, n: int, size: int, segments: int = 1,
                       publish: bool = True) -> list[int]:
        """Add n device-writable chains of size bytes (cut into segments); returns heads."""
        heads = []
        for _ in range(n):
            seg = [size // segments] * segments
            seg[-1] += size - sum(seg)
            bufs = [(self.ram.alloc(max(s, 1), 8, self.region), s, True) for s in seg]
            heads.append(self.add_chain(bufs, publish))
        return heads

    def republish(self, heads: Sequence[int]) -> None:
        """Make chains available again as they are (benchmarks recycle buffers this way)."""
        for h in heads:
            self.put_avail(h, publish=False)
        self.set_avail_idx(self.avail_idx)

    def chain_buffers(self, head: int) -> list[tuple[int, int]]:
        """(gpa, len) of each direct descriptor of a chain we built."""
        return [self.read_desc(i)[:2] for i in self.layout[head]]


def read_chain(ring: DriverRing, head: int, length: int) -> bytes:
    """The first ``length`` bytes the device wrote into the chain at ``head``."""
    data = bytearray()
    for gpa, size in ring.chain_buffers(head):
        take = min(size, length - len(data))
        if take <= 0:
            break
        data += ring.ram.read(gpa, take)
    return bytes(data)
