# SPDX-License-Identifier: MIT
"""The target side of a migration: read the stream, validate all of it, then rebuild.

The whole stream is read (:class:`StreamReader`; bounded: every length is checked against
the limits and the bytes actually received before anything is allocated for it), its
checksum verified, and every section parsed and validated (:func:`parse_stream`), including
the fingerprint against our own configuration, before anything changes. Then the sections
are applied in order (:func:`apply_stream`): the flows are rebuilt into the table, which may
hold entries already; a flow that cannot be rebuilt is dropped (TCP: its peer gets an RST)
and the rest go on. Once the guest link is up, :func:`activate` hands what was rebuilt to the
protocols; if the guest goes away first, :func:`discard` lets go of it.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import time

from passt_py import core
from passt_py.migrate.codec import (DIGEST_LEN, FLAG_OPTIONAL, HEADER, MAGIC, MAX_SECTIONS,
                                    MAX_STREAM, READ_CHUNK, SEC_END, SECTION, SECTION_LIMITS,
                                    MigrationError, Reader)
from passt_py.migrate.context import Loaded, MigrationContext, Report
from passt_py.migrate.versions import VERSIONS, choose_version

log = logging.getLogger(__name__)


class StreamReader:
    """Reads one stream from a non-blocking fd, bounded, checksummed, section by section."""

    def __init__(self, max_stream: int = MAX_STREAM) -> None:
        self.max_stream = max_stream
        self.total = 0
        self.header: tuple[int, int, int] | None = None
        self.sections: list[tuple[int, int, bytes]] = []
        self.complete = False
        self._digest = hashlib.sha256()
        self._want: bytearray = bytearray(HEADER.size)
        self._off = 0
        self._what = "header"
        self._cur: tuple[int, int, int] | None = None
        self._payload = bytearray()

    def _fail(self, code: int, message: str) -> MigrationError:
        """An error of the read stage."""
        return MigrationError(code, "read", message)

    def pump(self, fd: int) -> bool:
        """Read what is available; True once the end marker and EOF arrived.

        Raises MigrationError on a malformed stream; returns False when the fd is drained.
        """
        while not self.complete:
            try:
                got = core.readv_all(fd, [self._want], self._off)
            except BlockingIOError as e:
                self._off = e.characters_written
                return False
            except OSError as e:
                raise self._fail(e.errno or errno.EIO, f"read failed: {e}") from None
            if got < len(self._want):
                if self._what == "eof":
                    self.complete = True
                    return True
                raise self._fail(errno.ENODATA, f"stream truncated in the {self._what} "
                                 f"(after {self.total + got} bytes)")
            self._off = 0
            self.total += len(self._want)
            self._step(bytes(self._want))
        return True

    def _next(self, n: int, what: str) -> None:
        """Read ``n`` bytes of ``what`` next."""
        self._want = bytearray(n)
        self._what = what

    def _step(self, data: bytes) -> None:
        """One piece of the stream arrived whole: check it and say what comes next."""
        what = self._what
        if what == "eof":
            raise self._fail(errno.EBADMSG, "data after the end marker")
        if what == "checksum":
            if data != self._digest.digest():
                raise self._fail(errno.EBADMSG, "checksum mismatch: the stream is corrupted")
            self._next(1, "eof")
            return
        self._digest.update(data)
        if what == "header":
            self._header(data)
        elif what == "section header":
            self._section_header(data)
        elif what == "section payload":
            self._payload += data
            self._payload_chunk()

    def _header(self, data: bytes) -> None:
        """The stream header: ours, and in a version we read?"""
        magic, version, compat = HEADER.unpack(data)
        if magic != MAGIC:
            raise self._fail(errno.EPROTO, f"bad magic 0x{magic:016x}: not a passt-py "
                             "migration stream")
        self.header = (magic, version, compat)
        if choose_version(version, compat) is None:
            raise self._fail(errno.ENOTSUP, f"unsupported version {version} (compatible "
                             f"down to {compat}); this back-end reads "
                             f"{', '.join(str(v) for v in VERSIONS.versions())}")
        self._next(SECTION.size, "section header")

    def _section_header(self, data: bytes) -> None:
        """A section header (or the end marker): within the limits?"""
        sid, flags, length = SECTION.unpack(data)
        if sid == SEC_END:
            if length != DIGEST_LEN or flags:
                raise self._fail(errno.EBADMSG, f"bad end marker (length {length})")
            self._next(DIGEST_LEN, "checksum")
            return
        limit = SECTION_LIMITS.get(sid, self.max_stream)
        if length > limit or self.total + length + SECTION.size + DIGEST_LEN > \
                self.max_stream:
            raise self._fail(errno.E2BIG, f"section 0x{sid:04x} of {length} bytes "
                             f"exceeds the limit")
        if len(self.sections) >= MAX_SECTIONS:
            raise self._fail(errno.E2BIG, "too many sections")
        self._cur = (sid, flags, length)
        self._payload = bytearray()
        self._payload_chunk()

    def _payload_chunk(self) -> None:
        """Ask for the next piece of the current section (memory grows with what arrives)."""
        assert self._cur is not None
        sid, flags, length = self._cur
        left = length - len(self._payload)
        if left > 0:
            self._next(min(left, READ_CHUNK), "section payload")
            return
        self.sections.append((sid, flags, bytes(self._payload)))
        self._payload = bytearray()
        self._next(SECTION.size, "section header")


def parse_stream(ctx: MigrationContext, reader: StreamReader) -> Loaded:
    """Validate every section of a complete stream against its version's sections."""
    assert reader.header is not None
    chosen = choose_version(reader.header[1], reader.header[2])
    if chosen is None:
        raise MigrationError(errno.ENOTSUP, "read", "unsupported version")
    version, stages = chosen
    out = Loaded(version=version)
    by_id = {s.id: (i, s) for i, s in enumerate(stages)}
    last = -1
    for sid, flags, payload in reader.sections:
        entry = by_id.get(sid)
        if entry is None:
            if flags & FLAG_OPTIONAL:
                out.skipped.append(sid)
                log.info("migration: skipping unknown optional section 0x%04x", sid)
                continue
            raise MigrationError(errno.ENOTSUP, "read", f"unknown required section 0x{sid:04x}")
        index, stage = entry
        if index <= last:
            raise MigrationError(errno.EBADMSG, stage.name,
                                 "section out of order or repeated")
        for missing in stages[last + 1:index]:
            if not missing.optional:
                raise MigrationError(errno.EBADMSG, missing.name, "required section missing")
        last = index
        try:
            stage.parse(ctx, Reader(payload, stage.name), out)
        except (ValueError, TypeError, struct.error) as e:
            raise MigrationError(errno.EBADMSG, stage.name, str(e)) from None
    for stage in stages[last + 1:]:
        if not stage.optional:
            raise MigrationError(errno.EBADMSG, stage.name, "required section missing")
    return out


def apply_stream(ctx: MigrationContext, out: Loaded) -> Report:
    """Rebuild state from a validated stream; failures of single flows are counted."""
    t0 = time.perf_counter()
    report = Report()
    chosen = choose_version(out.version, out.version)
    assert chosen is not None
    for stage in chosen[1]:
        if stage.apply is not None:
            stage.apply(ctx, out, report)
    report.seconds = time.perf_counter() - t0
    return report


def activate(ctx: MigrationContext, report: Report) -> None:
    """Target post, once the guest link is up: each section hands over what it rebuilt.

    Done once the rings run, so what the protocols send the guest on taking over (TCP: our
    window, data the guest has not acknowledged) reaches it instead of being dropped by a
    device that is not started yet.
    """
    for section in VERSIONS.sections():
        if section.activate is not None:
            section.activate(ctx, report)


def discard(ctx: MigrationContext, report: Report) -> None:
    """The guest went away before :func:`activate`: each section lets go of what it rebuilt."""
    for section in VERSIONS.sections():
        if section.discard is not None:
            section.discard(ctx, report)


def load_bytes(ctx: MigrationContext, data: bytes) -> Report:
    """Read, validate and apply a whole stream held in memory (tests, tools)."""
    r, w = os.pipe()
    reader = StreamReader(ctx.max_stream)
    try:
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        view = memoryview(data)
        while True:
            n = 0
            if view:
                try:
                    n = os.write(w, view[:65536])
                except BlockingIOError:
                    n = 0
                view = view[n:]
            if not view and w >= 0:
                os.close(w)
                w = -1
            if reader.pump(r):
                break
        report = apply_stream(ctx, parse_stream(ctx, reader))
        activate(ctx, report)
        return report
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
