# SPDX-License-Identifier: MIT
"""A small reader of classic pcap files, for tests of the capture (-p): every record as it is
in the file (time, captured and original length, bytes), checked for what we write."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from passt_py import core
from passt_py.pcap import LINKTYPE_ETHERNET, PCAP_MAGIC_USEC, SNAPLEN

_FILE = struct.Struct("=IHHiIII")
_RECORD = struct.Struct("=IIII")


@dataclass(frozen=True)
class Record:
    """One pcap record: timestamp (seconds, microseconds), lengths, the captured bytes."""

    sec: int
    usec: int
    caplen: int
    origlen: int
    data: bytes

    @property
    def time(self) -> float:
        return self.sec + self.usec / 1e6


def read_pcap(path: str | Path, cut: int = SNAPLEN, live: bool = False) -> list[Record]:
    """Every record of a capture file written by passt_py; the file header and every record
    header must be what we write (records no longer than ``cut``, the snaplen the rings were
    given), and the file must end on a record boundary, unless it is ``live`` (still being
    written: a record at the end may be half there, and is left out)."""
    raw = Path(path).read_bytes()
    magic, major, minor, _zone, _sigfigs, snap, link = _FILE.unpack_from(raw)
    assert (magic, major, minor, snap, link) == (PCAP_MAGIC_USEC, 2, 4, SNAPLEN,
                                                 LINKTYPE_ETHERNET)
    out, pos = [], _FILE.size
    while pos < len(raw):
        if live and pos + _RECORD.size > len(raw):
            break
        sec, usec, caplen, origlen = _RECORD.unpack_from(raw, pos)
        pos += _RECORD.size
        assert usec < 1_000_000 and caplen <= min(origlen, cut), (usec, caplen, origlen)
        if live and pos + caplen > len(raw):
            break
        assert pos + caplen <= len(raw), "a record runs past the end of the file"
        out.append(Record(sec, usec, caplen, origlen, raw[pos:pos + caplen]))
        pos += caplen
    return out


def frames(path: str | Path, live: bool = False) -> list[bytes]:
    """The frames of a capture file (each recorded whole)."""
    recs = read_pcap(path, live=live)
    assert all(r.caplen == r.origlen for r in recs)
    return [r.data for r in recs]


def l4_checksums_ok(frame: bytes) -> bool:
    """An IPv4/IPv6 frame's IPv4 header and TCP/UDP checksums verify (other frames do)."""
    eth_type = int.from_bytes(frame[12:14], "big")
    if eth_type == 0x0800:
        ihl = (frame[14] & 0xF) * 4
        if core.csum_fold(core.csum_partial(frame[14:14 + ihl])) != 0:
            return False
        proto, src, dst, l4 = frame[23], frame[26:30], frame[30:34], frame[14 + ihl:]
        total = int.from_bytes(frame[16:18], "big") - ihl
        seed = core.pseudo_ipv4(src, dst, proto, total)
    elif eth_type == 0x86DD:
        proto, src, dst, l4 = frame[20], frame[22:38], frame[38:54], frame[54:]
        total = int.from_bytes(frame[18:20], "big")
        seed = core.pseudo_ipv6(src, dst, proto, total)
    else:
        return True
    if proto not in (6, 17):
        return True
    if proto == 17 and eth_type == 0x0800 and l4[6:8] == b"\0\0":
        return True                     # UDP over IPv4 without a checksum
    return core.csum_fold(core.csum_partial(l4[:total], seed)) == 0
