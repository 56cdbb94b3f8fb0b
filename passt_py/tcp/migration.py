# SPDX-License-Identifier: MIT
"""The TCP section of a migration stream: connections moved with their kernel sockets.

Section layout: a u32 count (equal to META's), then per connection the guest-side state
record (handler.TcpState, record codec) and the kernel socket record
(passt_py.migrate.repair.TcpSockState), each behind its u32 length.

Source (:class:`TcpSource`): *pre* closes the listeners, lets acknowledged bytes leave the
queues, mutes every connection's socket on the loop, freezes the established ones (a
drop-everything socket filter, so nothing arrives that the state would miss) and puts them
into repair mode (directly with CAP_NET_ADMIN, else through the passt-repair helper; without
either the connections are named in the log and left out). *post* keeps the migrated sockets
open, frozen and in repair mode (the kernel sends nothing, so no RST reaches the peers); with
``--migrate-exit`` it closes them quietly, leaving a drop-all guard listener on each address
until the process exits; with ``--migrate-no-linger`` it closes them quietly at once. The
lingering sockets keep their address/port pairs, so a target on the *same host* cannot rebuild
them (EADDRNOTAVAIL, logged with that hint): there the source must run with --migrate-exit or
--migrate-no-linger. *rollback* takes the sockets out of repair mode, unfreezes and
unmutes them and re-creates the listeners: the guest keeps its connections here.

Target: the sockets are rebuilt in repair mode (repair mode switched for all of them at once:
one helper round trip per 253 sockets, not two per connection), taken out of it, and handed
to the TCP handler once the guest link is up (:func:`activate`). A connection that cannot be
rebuilt has its guest end reset then, so the guest's application learns at once.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from typing import Any

from passt_py.flow import Flow, FlowRefused
from passt_py.loop import ERR, HUP, IN, OUT
from passt_py.migrate import repair as tcp_repair
from passt_py.migrate.codec import MAX_RECORD, SEC_TCP, U32, Reader
from passt_py.migrate.context import Loaded, MigrationContext, Report, Saved
from passt_py.migrate.record import decode_record, encode_record
from passt_py.migrate.section import Section, SourceShare
from passt_py.migrate.versions import register
from passt_py.tcp.handler import Phase, TcpState
from passt_py.tcp.sockets import ET

log = logging.getLogger(__name__)

#: A rebuilt connection: state record, socket record, socket.
Restored = tuple[Any, tcp_repair.TcpSockState, socket.socket]


def _tcp_events() -> int:
    """The events the TCP handler watches on a connection's socket (restored on unmute)."""
    return IN | OUT | ERR | HUP | ET


class TcpSource(SourceShare):
    """TCP's share of a source migration: frozen sockets in repair mode, or a rollback."""

    def __init__(self, ctx: MigrationContext, report: Report) -> None:
        self.ctx = ctx
        self.report = report
        self._tcp: list[tuple[Flow, socket.socket]] = []   # frozen (and maybe repaired)
        self._repaired = False
        self._muted: list[int] = []
        self._listeners_closed = False
        self._guards: list[socket.socket] = []   # see tcp_repair.guard

    def frozen(self) -> list[tuple[Flow, socket.socket]]:
        """The connections frozen in repair mode for the transfer."""
        return list(self._tcp)

    def pre(self) -> None:
        """Close the listeners, mute every connection, freeze and repair the established."""
        if self.ctx.tcp is not None:
            self.ctx.tcp.stop_forwards()
        self._listeners_closed = True
        if self.ctx.tcp is not None:
            self._freeze(self._mute())

    def _mute(self) -> list[tuple[Flow, socket.socket]]:
        """Every connection off the loop; the established ones, to be moved."""
        ctx = self.ctx
        socks: list[tuple[Flow, socket.socket]] = []
        ctx.tcp.settle()            # acknowledged bytes leave the queues before they freeze
        for flow in ctx.tcp.connections():
            conn = flow.data
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                ctx.loop.modify(sock.fileno(), 0)
                self._muted.append(sock.fileno())
            except (OSError, ValueError):
                pass
            if conn.st.phase != Phase.ESTABLISHED:
                log.info("migration pre: TCP flow %d is not established (%s): not moved",
                         flow.id, conn.st.phase.name)
                continue
            socks.append((flow, sock))
        return socks

    def _freeze(self, socks: list[tuple[Flow, socket.socket]]) -> None:
        """Freeze the sockets and put them into repair mode, or say who will not survive."""
        if not socks:
            return
        ctx = self.ctx
        repair = ctx.repair
        if repair is None or not repair.available:
            self.report.unrepairable = len(socks)
            log.error("migration: TCP_REPAIR unavailable (%s): these %d TCP connections will "
                      "NOT survive the migration: %s",
                      repair.how() if repair else "no repair control", len(socks),
                      ", ".join(repr(f) for f, _ in socks))
            return
        unfrozen = sum(1 for _flow, sock in socks if tcp_repair.freeze(sock, ctx.drop) < 0)
        if unfrozen:
            log.warning("migration: %d TCP sockets could not be frozen (socket filter refused): "
                        "data arriving after the save may be acknowledged here and lost",
                        unfrozen)
        rc = repair.set([s for _, s in socks], tcp_repair.TCP_REPAIR_ON)
        if rc < 0:
            for _flow, sock in socks:
                tcp_repair.thaw(sock)
            self.report.unrepairable = len(socks)
            log.error("migration: repair mode %s failed (%s): these %d TCP connections will "
                      "NOT survive the migration: %s", repair.how(), os.strerror(-rc),
                      len(socks), ", ".join(repr(f) for f, _ in socks))
            return
        log.info("migration: %d TCP connection(s) frozen, in repair mode %s", len(socks),
                 repair.how())
        self._tcp = socks
        self._repaired = True

    def records(self, version: int) -> list[bytes]:
        """Per frozen connection its framed state and socket records (a connection whose
        state cannot be read stays behind, alone)."""
        out: list[bytes] = []
        for flow, sock in self._tcp:
            try:
                st = self.ctx.tcp.export(flow)
                ks = tcp_repair.save(sock)
            except Exception as e:  # noqa: BLE001 - that connection alone stays behind
                log.error("migration save: TCP flow %d not saved: %s", flow.id, e)
                self.report.failed += 1
                continue
            rec = encode_record(st, version)
            ksb = ks.pack()
            out.append(U32.pack(len(rec)) + rec + U32.pack(len(ksb)) + ksb)
        return out

    def post(self) -> None:
        """With --migrate-exit: close the sockets quietly, a guard on each address; with
        --migrate-no-linger alone: close them quietly and keep nothing of them."""
        if self.ctx.migrate_exit:
            self._close_guarded()
        elif self.ctx.migrate_no_linger:
            self._close_now()

    def _close_now(self) -> None:
        """--migrate-no-linger: the sockets are still in repair mode, so close() sends
        nothing to the peers; their address/port pairs are free for a target on this host at
        once. Unlike --migrate-exit no guard listener is left, as the process goes on: a
        segment from a peer before the target restores the connection meets no socket here."""
        for flow, sock in self._tcp:
            self.ctx.loop.remove(sock.fileno())
            self.ctx.flows.close(flow)
        log.info("--migrate-no-linger: %d migrated TCP socket(s) closed", len(self._tcp))
        self._tcp = []

    def _close_guarded(self) -> None:
        """--migrate-exit: close the sockets quietly, a guard listener on each address."""
        # In repair mode close() sends nothing: the peers never notice. A guard listener
        # takes over the address meanwhile, so what the peers send before the target has
        # the connection is dropped quietly rather than answered with an RST.
        unguarded = 0
        for flow, sock in self._tcp:
            g = tcp_repair.guard(sock, self.ctx.drop)
            if g is not None:
                self._guards.append(g)
            else:
                unguarded += 1
            self.ctx.loop.remove(sock.fileno())
            self.ctx.flows.close(flow)
        self._tcp = []
        if unguarded:
            log.warning("migration: no guard listener for %d closed TCP connection(s): "
                        "on this host, what their peers send before the target restores "
                        "them is answered with an RST", unguarded)

    def rollback(self) -> int:
        """Sockets out of repair mode, thawed and unmuted, listeners back; none re-created."""
        ctx = self.ctx
        if self._repaired and self._tcp:
            rc = ctx.repair.set([s for _, s in self._tcp], tcp_repair.TCP_REPAIR_OFF) \
                if ctx.repair is not None else -errno.EPERM
            if rc < 0:
                log.error("migration rollback: repair off failed (%s): TCP connections may "
                          "stall", os.strerror(-rc))
            for _flow, sock in self._tcp:
                tcp_repair.thaw(sock)
        self._repaired = False
        events = _tcp_events() if ctx.tcp is not None else 0
        for fd in self._muted:
            try:
                ctx.loop.modify(fd, events)
            except (OSError, ValueError):
                pass                       # the connection closed meanwhile
        self._muted = []
        if self._listeners_closed:
            if ctx.tcp is not None and ctx.tcp_forwards is not None:
                ctx.tcp.start_forwards(ctx.tcp_forwards)
            self._listeners_closed = False
        self._tcp = []
        return 0


# ---- the section ----

def _save_tcp(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """TCP: count, then per connection its (already framed) pair of records."""
    return [U32.pack(len(saved.tcp))] + saved.tcp


def _parse_tcp(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """TCP: per connection the guest-side state record and the kernel socket record."""
    assert out.meta is not None
    count = r.u32()
    if count != out.meta.counts[2]:
        raise r.fail(f"{count} TCP records, metadata announced {out.meta.counts[2]}")
    items = []
    for _ in range(count):
        n = r.u32()
        if n > MAX_RECORD:
            raise r.fail(f"TCP state record of {n} bytes")
        rr = Reader(r.take(n), r.stage)
        st = decode_record(TcpState, rr, out.version, MAX_RECORD)
        rr.end()
        n = r.u32()
        if n > MAX_RECORD:
            raise r.fail(f"TCP socket record of {n} bytes")
        try:
            ks = tcp_repair.TcpSockState.unpack(r.take(n))
        except ValueError as e:
            raise r.fail(str(e)) from None
        items.append((st, ks))
    r.end()
    out.tcp = items


def _apply_tcp(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """TCP connections: sockets rebuilt in repair mode, then adopted by the TCP handler."""
    if not out.tcp:
        return
    if ctx.tcp is None:
        log.error("migration: %d TCP connections arrived but TCP is disabled here: reset",
                  len(out.tcp))
        report.failed += len(out.tcp)
        return
    control = ctx.repair
    if control is None or not control.available:
        log.error("migration: TCP_REPAIR unavailable (%s): %d TCP connections cannot be "
                  "restored", control.how() if control else "no repair control", len(out.tcp))
        report.failed += len(out.tcp)
        report.lost += [st for st, _ks in out.tcp]
        return
    built = _rebuild(ctx, control, out.tcp, report)
    if built is not None:
        _leave_repair(ctx, control, built, report)


def _rebuild(ctx: MigrationContext, control: tcp_repair.RepairControl,
             items: list[tuple[Any, tcp_repair.TcpSockState]],
             report: Report) -> list[Restored] | None:
    """New sockets, all into repair mode at once, each restored; None if repair failed."""
    fresh: list[Restored] = []
    for st, ks in items:
        try:
            fresh.append((st, ks, tcp_repair.new_socket(ks)))
        except tcp_repair.RepairError as e:
            _restore_failed(st, ks, e, report)
    rc = control.set([sock for _, _, sock in fresh], tcp_repair.TCP_REPAIR_ON)
    if rc < 0:
        log.error("migration: repair mode %s failed (%s): %d TCP connections cannot be "
                  "restored", control.how(), os.strerror(-rc), len(fresh))
        for _st, _ks, sock in fresh:
            sock.close()
        report.failed += len(fresh)
        report.lost += [st for st, _ks, _sock in fresh]
        return None
    built: list[Restored] = []
    for st, ks, sock in fresh:
        try:
            tcp_repair.restore_in_repair(sock, ks, ctx.drop)
        except tcp_repair.RepairError as e:
            sock.close()                 # still in repair mode: nothing reaches the peer
            _restore_failed(st, ks, e, report)
            continue
        built.append((st, ks, sock))
    return built


def _leave_repair(ctx: MigrationContext, control: tcp_repair.RepairControl,
                  built: list[Restored], report: Report) -> None:
    """All restored sockets out of repair mode at once; each then waits for activate."""
    rc = control.set([sock for _, _, sock in built], tcp_repair.TCP_REPAIR_OFF)
    if rc < 0:
        log.error("migration: leaving repair mode %s failed (%s): %d TCP connections lost",
                  control.how(), os.strerror(-rc), len(built))
        for _st, _ks, sock in built:
            sock.close()
        report.failed += len(built)
        report.lost += [st for st, _ks, _sock in built]
        return
    for st, ks, sock in built:
        try:
            tcp_repair.finish(sock, ks)
            sock.setblocking(False)
        except OSError as e:
            _drop_restored(ctx, ks, sock, e, report)
            continue
        report.tcp += 1
        report.pending.append((st, ks, sock))


def activate(ctx: MigrationContext, report: Report) -> None:
    """Target post: hand the restored TCP sockets to the TCP handler.

    Done once the guest link is up (the rings run), so the handler's resynchronisation (our
    window, data the guest has not acknowledged) reaches the guest instead of being dropped
    by a device that is not started yet. Until then the kernel keeps what the peers send.
    """
    lost, report.lost = report.lost, []
    for st in lost if ctx.tcp is not None else ():
        try:
            ctx.tcp.opener.reset_guest_end(st)
        except (ValueError, OSError) as e:      # a record too broken to address the guest
            log.warning("migration: no RST to the guest for a lost TCP connection: %s", e)
    pending, report.pending = report.pending, []
    adopted = 0
    for st, ks, sock in pending:
        # The host's FIN may have reached the socket after the source last looked: the
        # rebuilt socket will not report it, the record must.
        st.host_eof = st.host_eof or ks.fin_received
        try:
            ctx.tcp.opener.adopt(st, sock)
            adopted += 1
        except (FlowRefused, OSError, ValueError) as e:
            report.tcp -= 1
            _drop_restored(ctx, ks, sock, e, report)
    if pending:
        log.info("migration: %d of %d restored TCP connections handed to the guest", adopted,
                 len(pending))


def discard(ctx: MigrationContext, report: Report) -> None:
    """The guest went away before :func:`activate`: reset what was restored for it."""
    report.lost = []
    pending, report.pending = report.pending, []
    for _st, ks, sock in pending:
        _drop_restored(ctx, ks, sock, OSError(errno.ENOTCONN, "the guest is gone"), report)


def _drop_restored(ctx: MigrationContext, ks: tcp_repair.TcpSockState, sock: socket.socket,
                   e: Exception, report: Report) -> None:
    """A rebuilt connection we cannot serve: reset it so the peer does not wait forever."""
    log.error("migration: TCP connection [%s]:%d -> [%s]:%d not adopted (%s): reset",
              ks.local_addr, ks.local_port, ks.peer_addr, ks.peer_port, e)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    ctx.loop.remove(sock.fileno())
    sock.close()
    report.failed += 1


def _restore_failed(st: Any, ks: tcp_repair.TcpSockState, e: tcp_repair.RepairError,
                    report: Report) -> None:
    """A connection not rebuilt: counted, and its guest end reset on activate."""
    hint = (" (another socket on this host still holds the connection: is the source "
            "lingering? use --migrate-exit or "
            "--migrate-no-linger there)" if e.errno == errno.EADDRNOTAVAIL else "")
    log.error("migration: TCP connection [%s]:%d -> [%s]:%d not restored: %s%s",
              ks.local_addr, ks.local_port, ks.peer_addr, ks.peer_port, e, hint)
    report.failed += 1
    report.lost.append(st)


TCP = Section("tcp", SEC_TCP, False, _save_tcp, _parse_tcp, _apply_tcp,
              source=TcpSource, activate=activate, discard=discard)

register(TCP)
