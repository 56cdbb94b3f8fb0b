# SPDX-License-Identifier: MIT
"""Packet capture (-p FILE): every frame both ways, classic libpcap format.

Classic pcap (not pcapng) because every tool reads it: a 24-byte file header, then per frame
a 16-byte record header and the Ethernet frame. The file is written in the host's byte order
with the standard magic, so readers detect the order.

Who writes what: :class:`PcapWriter` opens the file, writes the file header and closes it;
the records of the guest's traffic are written by the C core's rings (csrc/virtq.c,
``core.Virtqueue.set_capture()``, given the writer's :attr:`PcapWriter.fd` by the device), at
the one place every path's frames pass, so a capture never changes which path runs: RX frames
when their used elements are published, TX frames when popped, partial checksums completed
there as :func:`complete_checksum` does here. :meth:`PcapWriter.write` records frames handed
over as bytes (with valid checksums), for back-ends without rings and for tests.
"""
from __future__ import annotations

import logging
import os
import struct
import time
from typing import Iterable

from passt_py import core

log = logging.getLogger(__name__)

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
#: Large enough for a 64 KiB segment with headers (segmentation offloads).
SNAPLEN = core.SNAPLEN       # as the C capture hook cuts frames

_FILE_HEADER = struct.Struct("=IHHiIII")
_VNET = struct.Struct("<BBHHHH")
VNET_F_NEEDS_CSUM = 1
_RECORD_HEADER = struct.Struct("=IIII")


def complete_checksum(frame: bytes, vnet: bytes) -> bytes:
    """``frame`` with the checksum a guest left to the device (NEEDS_CSUM) filled in.

    With checksum offload the guest sends only the pseudo-header sum in the checksum field and
    says where the device must finish it; a capture must show the finished value.
    """
    flags, _gso, _hdr_len, _gso_size, start, offset = _VNET.unpack_from(vnet)
    if not flags & VNET_F_NEEDS_CSUM or start + offset + 2 > len(frame):
        return frame
    fixed = bytearray(frame)
    csum = core.csum_fold(core.csum_partial(memoryview(fixed)[start:]))
    struct.pack_into("!H", fixed, start + offset, csum or 0xFFFF)
    return bytes(fixed)


class PcapWriter:
    """A pcap file: opened (0600) with its header written; records come from the rings'
    capture (see the module) or :meth:`write`; a write error disables capture instead of the
    back-end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.write(self._fd, _FILE_HEADER.pack(PCAP_MAGIC_USEC, *PCAP_VERSION, 0, 0,
                                             SNAPLEN, LINKTYPE_ETHERNET))
        log.info("saving packet capture to %s", path)

    @property
    def fd(self) -> int:
        """The file's descriptor for the rings' capture (-1 once closed)."""
        return self._fd

    def write(self, frames: Iterable[bytes]) -> None:
        """Record ``frames`` (one writev per batch) with the current time."""
        if self._fd < 0:
            return
        now = time.time()
        sec, usec = int(now), int((now % 1) * 1_000_000)
        chunks: list[bytes] = []
        for frame in frames:
            caplen = min(len(frame), SNAPLEN)
            chunks.append(_RECORD_HEADER.pack(sec, usec, caplen, len(frame)))
            chunks.append(frame[:caplen] if caplen < len(frame) else frame)
        if not chunks:
            return
        try:
            _write_all(self._fd, chunks)
        except OSError as exc:
            log.error("packet capture to %s failed, capture stopped: %s", self.path, exc)
            self.close()

    def close(self) -> None:
        """Close the capture file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: Chunks per writev call, well under IOV_MAX (1024).
_IOV_BATCH = 512


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """writev until everything is written (a regular file may still write short)."""
    for start in range(0, len(chunks), _IOV_BATCH):
        group = chunks[start:start + _IOV_BATCH]
        done = os.writev(fd, group)
        if done == sum(len(c) for c in group):
            continue
        rest = memoryview(b"".join(group))[done:]
        while rest:
            rest = rest[os.write(fd, rest):]
