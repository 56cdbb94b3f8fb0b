# SPDX-License-Identifier: MIT
"""Guest data straight from the TX batch: TCP's zero-copy guest-to-host path.

Theory of operation: the service hands each classified TX batch here first. C cuts it into
runs of in-order data segments or rising bare ACKs of one connection (core.tcp_runs); a run
the connection's core takes as it is (TcpConn.run_verdict) is written with one sendmsg() per
connection from guest memory (core.send_payload_runs), its last ACK field and window given
to the core (run_ack); bare ACKs go to the core as segments from their records. Everything
else is left, in order, for the copying path (the demux): once a connection has a frame
left there, its later frames in the batch are left too.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from passt_py import core
from passt_py.config.log import trace
from passt_py.flow import FlowType
from passt_py.tcp.connection import Connection
from passt_py.tcp.seg import ACK, TcpSegment, seq_diff
from passt_py.tcp.state import Phase

if TYPE_CHECKING:
    from passt_py.tcp.handler import TcpHandler

log = logging.getLogger(__name__)

_NO_PAYLOAD = memoryview(b"")


class BatchTaker:
    """Takes what it can of a TX batch for the TCP connections it belongs to."""

    def __init__(self, handler: TcpHandler) -> None:
        self._h = handler

    def take(self, recs: core.PacketRecords) -> list[int]:
        """Send in-order guest data of established connections straight from the TX batch.

        ``recs`` is the classified batch; C cuts it into runs of in-order data segments (ACK,
        maybe PSH) of one connection (core.tcp_runs), so the work here is per run, not per
        frame: a run the connection's core accepts as it is (TcpConn.run_verdict) is written
        with one sendmsg() per connection from guest memory (core.send_payload_runs), its
        last ACK field and window processed by the core; bare ACKs are handled from their
        records (:meth:`_pure_ack`). Everything else (control segments, other
        protocols, anything out of order) is left for the copying path: returns those frame
        indices, in order. Once a connection has a frame left there, its later frames in the
        batch are left too, so its segments keep their order. Never raises: on any error the
        whole batch goes to the copying path.
        """
        batch = recs.batch
        try:
            runs, nruns, refs = core.tcp_runs(recs)
        except Exception:  # noqa: BLE001 - a broken batch is the copying path's business
            return list(range(batch.count))
        rest: list[int] = []
        groups: dict[int, tuple[Connection, list[tuple[int, int, int]]]] = {}
        held: set[int] = set()
        for k in range(nruns):
            run = runs[k]
            first, count = run.first, run.count
            if run.other:                # not TCP at all: the other paths' business
                rest.extend(range(first, first + count))
                continue
            if not run.data:
                # A run of rising bare ACKs of one connection: its last one says it all.
                if not self._pure_ack(recs, first + count - 1, groups, held, count > 1):
                    rest.extend(range(first, first + count))
                continue
            flow = self._h.flows.lookup_packet(FlowType.TCP, recs, first)
            c = flow.data if flow is not None else None
            if c is not None and c.fast:
                self._h.handover.take(c)
            group = groups.get(flow.id) if flow is not None else None
            taken = group[1] if group is not None else []
            if c is None or flow.id in held or \
                    not c.core.run_verdict(run.seq, run.ack, sum(t[2] for t in taken)):
                if flow is not None:
                    held.add(flow.id)
                rest.extend(range(first, first + count))
                continue
            self._h.run(c, c.core.run_ack(run.ack, run.window))
            taken.append((first, count, run.bytes))
            if group is None:
                groups[flow.id] = (c, taken)
        for c, taken in groups.values():
            self._send_runs(c, batch, refs, taken)
        return rest

    def _pure_ack(self, recs: core.PacketRecords, i: int, groups: dict[int, object],
                       held: set[int], last_of_run: bool = False) -> bool:
        """Handle frame i here if it is a bare ACK of an established connection.

        The guest's ACKs for host data come one per RX batch or so; each would otherwise be
        copied out of the ring and parsed again. It gets exactly the copying path's handling
        (touch, then the core's segment rules, duplicate ACKs included) from the classified
        record. Not taken (returns False, and the connection's later frames wait too) when
        anything of the connection was left or taken earlier in this batch, so its segments
        keep their order.

        ``last_of_run``: frame i ends a run of bare ACKs each acknowledging more than the one
        before (core.tcp_runs), which it supersedes, unless it acknowledges data never sent:
        then each of the run's frames goes the copying path's way (False).
        """
        r = recs[i]                      # a well-formed TCP segment (not an "other" run)
        if r.payload_len or r.tcp_flags & 0x3F != ACK:
            return False
        flow = self._h.flows.lookup_packet(FlowType.TCP, recs, i)
        if flow is None:
            return False
        c: Connection = flow.data  # type: ignore[assignment]
        if c.fast:
            self._h.handover.take(c)
        if flow.id in held or flow.id in groups or c.st.phase != Phase.ESTABLISHED or \
                (last_of_run and seq_diff(r.ack, c.st.seq_to_guest) > 0):
            held.add(flow.id)
            return False
        seg = TcpSegment(r.sport, r.dport, r.seq, r.ack, r.tcp_flags, r.window, None, None,
                         False, False, _NO_PAYLOAD)
        self._h.flows.touch(flow)
        try:
            self._h.run(c, c.core.segment(seg))
        except Exception:  # noqa: BLE001 - as in the demux: one bad frame, not the batch
            log.exception("error handling a TCP ACK from the guest")
        return True

    def _send_runs(self, c: Connection, batch: core.TxBatch, refs: object,
                   taken: list[tuple[int, int, int]]) -> None:
        """One sendmsg() of a connection's runs (first frame, frames, bytes) of this batch."""
        if c.st.phase == Phase.CLOSED:
            return
        total = sum(t[2] for t in taken)
        try:
            n = core.send_payload_runs(c.fd, batch, refs, [(t[0], t[1]) for t in taken])
        except OSError as e:
            trace(log, "TCP flow %s: host send failed: %s", self._h.fid(c), e)
            self._h.reset(c)
            return
        if c.flow is not None:
            self._h.flows.touch(c.flow)
        self._h.run(c, c.core.host_took(n, total, False))
