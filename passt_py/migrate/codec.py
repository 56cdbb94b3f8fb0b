# SPDX-License-Identifier: MIT
"""The migration stream's wire: constants, limits, the section-payload cursor, its error.

Stream format (every integer big-endian, explicitly encoded, no padding)::

    header   magic u64 | version u32 | compat_version u32
    section  id u16 | flags u16 | length u32 | payload[length]     (repeated, in table order)
    end      id 0xFFFF | flags 0 | length 32 | SHA-256 of every byte before this payload

A section with flag bit 0 (OPTIONAL) may be skipped by a reader that does not know its id;
an unknown section without it is an error. Which sections a version holds, and in which
order, is the version table's business (passt_py.migrate.versions); what is in a section is
its owner's (passt_py.migrate.meta for META and GUEST, passt_py.udp.migration for PING and
UDP, passt_py.tcp.migration for TCP).

Section ids are allocated here, in one list, so that two owners can never pick the same
number; an id is never reused for something else.

Flow records inside the sections use the record codec (passt_py.migrate.record); a section
holding records writes a u32 count and each record behind its u32 length (:func:`framed`,
read back by :func:`records`).
"""
from __future__ import annotations

import errno
import struct

from passt_py.migrate import record as migrate_record
from passt_py.migrate import repair as tcp_repair

MAGIC = 0x7061_7373_742D_7079       # "passt-py"

HEADER = struct.Struct("!QII")
SECTION = struct.Struct("!HHI")
FLAG_OPTIONAL = 0x0001
DIGEST_LEN = 32                      # SHA-256

SEC_META = 0x0001
SEC_GUEST = 0x0002
SEC_PING = 0x0003
SEC_UDP = 0x0004
SEC_TCP = 0x0005
SEC_END = 0xFFFF

#: Hard cap on a whole stream; the limits below bound each part.
MAX_STREAM = 1 << 30
MAX_META = 4096
MAX_GUEST = 256
MAX_RECORD = 2 * tcp_repair.MAX_QUEUE + 4096
#: Bytes read per system call into a growing section buffer.
READ_CHUNK = 1 << 20
MAX_SECTIONS = 64
#: Sections with a limit below the whole stream's.
SECTION_LIMITS = {SEC_META: MAX_META, SEC_GUEST: MAX_GUEST}

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")


class MigrationError(Exception):
    """A migration step failed: ``code`` is a positive errno, ``stage`` the step's name."""

    def __init__(self, code: int, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.code = code
        self.stage = stage


class Reader(migrate_record.Reader):
    """Bounds-checked cursor over one section payload; its errors name the stage."""

    def fail(self, message: str) -> MigrationError:  # type: ignore[override]
        """The error for malformed content at this point of this stage."""
        return MigrationError(errno.EBADMSG, self.stage, message)


def framed(recs: list[bytes]) -> list[bytes]:
    """Each record preceded by its u32 length."""
    out: list[bytes] = []
    for rec in recs:
        out += [U32.pack(len(rec)), rec]
    return out


def records(r: Reader, expected: int, what: str) -> list[memoryview]:
    """u32 count (must match META) and length-prefixed records, each bounded."""
    count = r.u32()
    if count != expected:
        raise r.fail(f"{count} {what} records, metadata announced {expected}")
    recs = []
    for _ in range(count):
        n = r.u32()
        if n > MAX_RECORD:
            raise r.fail(f"{what} record of {n} bytes")
        recs.append(r.take(n))
    return recs
