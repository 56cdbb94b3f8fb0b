# SPDX-License-Identifier: MIT
"""Driving one device-state transfer from the event loop.

QEMU hands us a pipe with SET_DEVICE_STATE_FD once the rings are suspended. As the *source*
we write our state into it, as the *target* we read it; CHECK_DEVICE_STATE then reports the
result. The bytes move from the event loop on a non-blocking descriptor (core.writev_all /
core.readv_all, resumed on EAGAIN), so the vhost-user socket is never blocked. A failure of
the source at any point rolls it back: the guest keeps its network here.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from typing import Callable

from passt_py import core
from passt_py.loop import ERR, HUP, IN, OUT
from passt_py.migrate.codec import MigrationError
from passt_py.migrate.context import MigrationContext, Report
from passt_py.migrate.source import Source
from passt_py.migrate.target import StreamReader, activate, apply_stream, discard, parse_stream

log = logging.getLogger(__name__)

#: With --migrate-exit: how long after the transfer we stay, for CHECK_DEVICE_STATE and in case
#: QEMU gives up and resumes the guest here (the rings start again: rollback, no exit).
EXIT_DELAY = 2.0


class Transfer:
    """One device-state transfer on a non-blocking fd; ``done(result)`` gets 0 or an errno."""

    def __init__(self, ctx: MigrationContext, fd: int, save: bool,
                 done: Callable[[int], None]) -> None:
        self.ctx = ctx
        self.fd = fd
        self.save = save
        self._done = done
        self._bufs: list[bytes] = []
        self._off = 0
        self._total = 0
        self.source: Source | None = None
        self.reader: StreamReader | None = None
        self.report: Report | None = None
        self.result: int | None = None
        self._t0 = time.perf_counter()

    def start(self) -> None:
        """Run source pre+save or get ready to read; then wait for the fd."""
        os.set_blocking(self.fd, False)
        if self.save:
            self.source = Source(self.ctx)
            try:
                self.source.pre()
                self._bufs = self.source.sections()
            except Exception as e:  # noqa: BLE001 - whatever happens, the guest stays here
                log.exception("migration source: preparing the state failed")
                self._fail(_code(e), "save", str(e))
                return
            self._total = sum(len(b) for b in self._bufs)
            # QEMU waits for the end of the stream with the guest stopped: write now (a
            # small state fits the pipe at once), wait for the fd only for the rest.
            self._on_ready(OUT)
            if self.result is None:
                self.ctx.loop.add(self.fd, OUT, self._on_ready)
        else:
            self.reader = StreamReader(self.ctx.max_stream)
            self.ctx.loop.add(self.fd, IN, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        """The fd is ready: move bytes; any failure ends the transfer (and rolls back)."""
        try:
            if self.save:
                self._write()
            else:
                self._read(mask)
        except MigrationError as e:
            self._fail(e.code, e.stage, str(e))
        except Exception as e:  # noqa: BLE001 - never crash the back-end on a transfer
            log.exception("migration: unexpected failure")
            self._fail(_code(e), "transfer", str(e))

    def _write(self) -> None:
        """Source: write what the pipe takes; once all is out, post and report."""
        try:
            core.writev_all(self.fd, self._bufs, self._off)
        except BlockingIOError as e:
            self._off = e.characters_written
            return
        except OSError as e:
            raise MigrationError(e.errno or errno.EIO, "write", str(e)) from None
        assert self.source is not None
        self.source.post()
        self.report = self.source.report
        log.info("migration: %d bytes of state written in %.1f ms (%d ping, %d UDP, %d TCP "
                 "flows)", self._total, 1000 * (time.perf_counter() - self._t0),
                 self.report.ping, self.report.udp, self.report.tcp)
        self._finish(0)

    def _read(self, mask: int) -> None:
        """Target: read what arrived; once the stream is complete, parse and apply it."""
        assert self.reader is not None
        if not self.reader.pump(self.fd):
            if mask & (ERR | HUP) and not mask & IN:
                raise MigrationError(errno.EPIPE, "read", "state channel closed early")
            return
        loaded = parse_stream(self.ctx, self.reader)
        self.report = apply_stream(self.ctx, loaded)
        r = self.report
        log.info("migration: %d bytes of state loaded in %.1f ms: %d ping, %d UDP, %d TCP "
                 "flows restored, %d failed", self.reader.total,
                 1000 * (time.perf_counter() - self._t0), r.ping, r.udp, r.tcp, r.failed)
        self._finish(0)

    def activate(self) -> None:
        """Target post, once the guest link is up: see :func:`activate`. Also when every
        connection was lost (none pending): the guest must hear of those at once."""
        if self.report is not None and (self.report.pending or self.report.lost):
            activate(self.ctx, self.report)

    def discard(self) -> None:
        """The front-end left before the link came up: see :func:`discard`."""
        if self.report is not None and (self.report.pending or self.report.lost):
            discard(self.ctx, self.report)

    def _fail(self, code: int, stage: str, message: str) -> None:
        """Log the failure, roll the source back (the guest stays here), report ``code``."""
        log.error("migration %s failed at stage %s: %s", "save" if self.save else "load",
                  stage, message)
        if self.source is not None:
            try:
                self.source.rollback()
            except Exception:  # noqa: BLE001 - report the original failure
                log.exception("migration: rollback failed")
        self._finish(code or errno.EIO)

    def _finish(self, result: int) -> None:
        """Close the fd and report ``result`` once."""
        if self.result is not None:
            return
        self.result = result
        self.ctx.loop.remove(self.fd)
        try:
            os.close(self.fd)
        except OSError:
            pass
        self._done(result)


def _code(exc: BaseException) -> int:
    """The errno CHECK_DEVICE_STATE reports for an exception."""
    if isinstance(exc, MigrationError):
        return exc.code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
