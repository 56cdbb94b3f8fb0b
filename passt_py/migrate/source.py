# SPDX-License-Identifier: MIT
"""The source side of a migration: quiesce (pre), write the stream (sections), linger (post)
or give the guest back its network here (rollback).

The work specific to a protocol is its sections' :class:`~passt_py.migrate.section.SourceShare`
(TCP: freezing the sockets and putting them into repair mode, keeping them quiet after the
save or closing them with --migrate-exit or --migrate-no-linger; UDP and ping: exporting and closing their flows);
this module runs the shares in the order of the version's sections and writes the stream
from the same version table the target reads.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import time

from passt_py.flow import Flow
from passt_py.migrate.codec import DIGEST_LEN, FLAG_OPTIONAL, HEADER, MAGIC, SEC_END, SECTION
from passt_py.migrate.context import MigrationContext, Report, Saved
from passt_py.migrate.section import Section, SourceShare
from passt_py.migrate.versions import VERSION, VERSIONS

log = logging.getLogger(__name__)


class Source:
    """The source side: quiesce (pre), write the sections (save), linger (post) or roll back."""

    def __init__(self, ctx: MigrationContext, version: int = VERSION) -> None:
        if version not in VERSIONS.versions():
            raise ValueError(f"cannot write stream version {version}")
        self.ctx = ctx
        self.version = version          # what to write: VERSION, or 1 for passt-py 0.1.0
        self.report = Report()
        self._stages = VERSIONS.stages(version)
        self._shares: list[tuple[Section, SourceShare]] = [
            (s, s.source(ctx, self.report)) for s in self._stages if s.source is not None]

    @property
    def frozen(self) -> list[tuple[Flow, socket.socket]]:
        """The connections held frozen for the transfer (flow, socket)."""
        return [pair for _s, share in self._shares for pair in share.frozen()]

    def pre(self) -> None:
        """Stop the host side and take the TCP sockets out of play."""
        for _section, share in self._shares:
            share.pre()

    def sections(self) -> list[bytes]:
        """The whole stream, as buffers for one writev (header, sections, end marker).

        The sections are written from the version table the target reads (VERSIONS): each
        section saves itself, so writer and reader cannot disagree on their order."""
        t0 = time.perf_counter()
        saved = Saved()
        for section, share in self._shares:
            setattr(saved, section.name, share.records(self.version))
        # Each version is its own compat_version: a reader picks exactly the one written.
        bufs: list[bytes] = [HEADER.pack(MAGIC, self.version, self.version)]
        digest = hashlib.sha256(bufs[0])
        for stage in self._stages:
            parts = stage.save(self.ctx, saved)
            head = SECTION.pack(stage.id, FLAG_OPTIONAL if stage.optional else 0,
                                sum(len(p) for p in parts))
            bufs.append(head)
            digest.update(head)
            for p in parts:
                bufs.append(p)
                digest.update(p)
        end = SECTION.pack(SEC_END, 0, DIGEST_LEN)
        digest.update(end)
        bufs += [end, digest.digest()]
        self.report.ping, self.report.udp = len(saved.ping), len(saved.udp)
        self.report.tcp = len(saved.tcp)
        self.report.bytes = sum(len(b) for b in bufs)
        self.report.seconds = time.perf_counter() - t0
        return bufs

    def post(self) -> None:
        """The state went out: stay quiet (or close quietly with --migrate-exit)."""
        for _section, share in self._shares:
            share.post()
        log.info("migration: source done; %d TCP connection(s) %s", self.report.tcp,
                 "closed quietly" if self.ctx.migrate_exit or self.ctx.migrate_no_linger
                 else "kept frozen in repair mode (no RST)")

    def rollback(self) -> None:
        """Serve the guest here again: sockets out of repair mode, host side back."""
        frozen = len(self.frozen)
        restored = sum(share.rollback() for _section, share in self._shares)
        log.warning("migration rolled back: the guest stays here (%d TCP connections and %d "
                    "UDP/ping flows back in service)", frozen, restored)
