# SPDX-License-Identifier: MIT
"""The PING and UDP sections of a migration stream: datagram flows, re-created on arrival.

Both sections are optional (a flow is re-created on demand anyway) and hold the same shape:
a u32 count (equal to META's) and each flow's state record (icmp.PingFlowState,
handler.UdpFlowState) behind its u32 length. No socket state moves: the target binds a new
socket like the original for each flow, and a flow that cannot be re-created costs that flow
only.

On the source, *pre* exports every flow and closes the flows (and the UDP listeners); a
*rollback* restarts the listeners and re-creates the flows from the exported records.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from passt_py.flow import FlowRefused, FlowType
from passt_py.migrate.codec import MAX_RECORD, SEC_PING, SEC_UDP, U32, Reader, framed, records
from passt_py.migrate.context import Loaded, MigrationContext, Report, Saved
from passt_py.migrate.record import decode_record, encode_record
from passt_py.migrate.section import Section, SourceShare
from passt_py.migrate.versions import register
from passt_py.udp.handler import UdpFlowState
from passt_py.udp.icmp import PingFlowState

log = logging.getLogger(__name__)


class DatagramSource(SourceShare):
    """A datagram protocol's source share: its flows exported, closed, maybe re-created."""

    def __init__(self, ctx: MigrationContext, report: Report, handler: Any,
                 kinds: tuple[FlowType, ...], what: str, listens: bool = False,
                 forwards: Any = None) -> None:
        self.ctx = ctx
        self.report = report
        self.handler = handler
        self.kinds = kinds
        self.what = what
        self.listens = listens          # the handler has listeners (stop_forwards)
        self.forwards = forwards        # the listeners' rules, restarted on rollback
        self._states: list[Any] = []
        self._stopped = False

    def pre(self) -> None:
        """Export every flow, then close them (and the listeners): the next host serves."""
        if self.handler is None:
            return
        for flow in [f for f in self.ctx.flows if f.type in self.kinds]:
            try:
                self._states.append(self.handler.export(flow))
            except Exception as e:  # noqa: BLE001 - one bad flow must not stop the rest
                log.warning("migration pre: flow %d not exported: %s", flow.id, e)
                self.report.failed += 1
        if self.listens:
            self.handler.stop_forwards()
        self.handler.close_all()
        self._stopped = True

    def records(self, version: int) -> list[bytes]:
        """Each exported flow's record."""
        return [encode_record(s, version) for s in self._states]

    def rollback(self) -> int:
        """Listeners back, flows re-created from their records."""
        if self._stopped and self.forwards is not None:
            self.handler.start_forwards(self.forwards)
        self._stopped = False
        done = adopt_all(self.handler, self._states, self.what)
        self._states = []
        return done


def adopt_all(handler: Any, states: Iterable[Any], what: str) -> int:
    """Re-create stateless flows one by one; a failure costs that flow only."""
    if handler is None:
        return 0
    done = 0
    for st in states:
        try:
            handler.adopt(st)
            done += 1
        except (OSError, FlowRefused, ValueError) as e:
            log.warning("migration: %s flow %s not re-created: %s", what, st, e)
    return done


def _parse_flows(cls: type, what: str, idx: int, attr: str
                 ) -> Callable[[MigrationContext, Reader, Loaded], None]:
    """A parser for a section of ``cls`` records."""
    def parse(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
        """Count and records, each decoded and checked in full."""
        assert out.meta is not None
        states = []
        for rec in records(r, out.meta.counts[idx], what):
            rr = Reader(rec, r.stage)
            states.append(decode_record(cls, rr, out.version, MAX_RECORD))
            rr.end()
        r.end()
        setattr(out, attr, states)
    return parse


def _save_ping(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """PING: count, then each record framed."""
    return [U32.pack(len(saved.ping))] + framed(saved.ping)


def _save_udp(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """UDP: count, then each record framed."""
    return [U32.pack(len(saved.udp))] + framed(saved.udp)


def _apply_ping(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """Ping flows, each with a new socket."""
    report.ping = adopt_all(ctx.icmp, out.ping, "ping")
    report.failed += len(out.ping) - report.ping


def _apply_udp(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """UDP flows, each with a socket bound like the original."""
    report.udp = adopt_all(ctx.udp, out.udp, "UDP")
    report.failed += len(out.udp) - report.udp


def _ping_source(ctx: MigrationContext, report: Report) -> SourceShare:
    """The ping flows' share of a source migration."""
    return DatagramSource(ctx, report, ctx.icmp, (FlowType.PING4, FlowType.PING6), "ping")


def _udp_source(ctx: MigrationContext, report: Report) -> SourceShare:
    """The UDP flows' (and listeners') share of a source migration."""
    return DatagramSource(ctx, report, ctx.udp, (FlowType.UDP,), "UDP", True,
                          ctx.udp_forwards)


PING = Section("ping", SEC_PING, True, _save_ping,
               _parse_flows(PingFlowState, "ping", 0, "ping"), _apply_ping,
               source=_ping_source)
UDP = Section("udp", SEC_UDP, True, _save_udp,
              _parse_flows(UdpFlowState, "UDP", 1, "udp"), _apply_udp,
              source=_udp_source)

register(PING)
register(UDP)
