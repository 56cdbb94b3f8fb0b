# SPDX-License-Identifier: MIT
"""Guest to host: the guest's UDP datagrams onto their flows' host sockets.

Theory of operation: two routes. The batch route (take_batch) sees a classified TX batch still
in guest memory: runs of datagrams whose flow exists and owns a connected socket leave in one C
call (sendmmsg, no copy), and the flow's guest side is handed to the C fast path so the next
ones never reach Python. Everything else — a tuple without a flow, a forwarded flow (its
replies leave through the listener with sendto()), a malformed frame — comes back to the
copying route (from_guest, called by the tap demux with a parsed datagram), which creates
flows (sockets.py) and sends one datagram at a time. Either route retries once a send that met
ECONNREFUSED: that is a pending error from an earlier ICMP message, cleared by the send.
"""
from __future__ import annotations

import errno
import logging
from typing import Sequence

from passt_py import core
from passt_py.config.log import trace
from passt_py.flow import Flow, FlowSide, FlowType, Pif
from passt_py.link.ip import IpPacket, UdpDatagram
from passt_py.udp.context import UdpContext, UdpSockState
from passt_py.udp.fast import UdpFastEntries
from passt_py.udp.sockets import UdpFlowSockets

log = logging.getLogger(__name__)


class UdpGuestPath:
    """Sends the guest's datagrams, by the batch route or the copying one."""

    def __init__(self, ctx: UdpContext, sockets: UdpFlowSockets, fast: UdpFastEntries) -> None:
        self._ctx = ctx
        self._sockets = sockets
        self._fast = fast

    def from_guest(self, pkt: IpPacket, dgram: UdpDatagram) -> None:
        """Send one guest datagram on its flow, creating the flow if it is new."""
        try:
            self._send(pkt, dgram)
        except Exception:  # noqa: BLE001 - malformed input must never escape
            log.exception("error handling a UDP datagram from the guest")

    def _send(self, pkt: IpPacket, dgram: UdpDatagram) -> None:
        """from_guest() without the guard: drop, or find/create the flow and send."""
        ctx = self._ctx
        if not ctx.view.udp or pkt.src.is_multicast or pkt.src.is_unspecified:
            return
        if dgram.sport == 0 or dgram.dport == 0:
            return
        tap = FlowSide(Pif.TAP, pkt.src, dgram.sport, pkt.dst, dgram.dport)
        flow = ctx.flows.lookup(FlowType.UDP, tap)
        if flow is None:
            flow = self._sockets.new_outbound(tap, pkt)
            if flow is None:
                ctx.dropped += 1
                return
        state: UdpSockState = flow.data  # type: ignore[assignment]
        for attempt in range(2):
            try:
                if state.peer is None:
                    state.sock.send(dgram.payload)
                else:
                    state.sock.sendto(dgram.payload, state.peer)
                break
            except ConnectionRefusedError:
                # A pending error from an earlier ICMP message; it is cleared now: retry once.
                if attempt:
                    ctx.dropped += 1
                    return
            except OSError as e:
                ctx.dropped += 1
                trace(log, "UDP flow %d: send failed: %s", flow.id, e)
                return
        ctx.activity(flow, Pif.TAP)

    def take_batch(self, recs: "core.PacketRecords", frames: Sequence[int]) -> list[int]:
        """Send datagrams of known outbound flows straight from guest memory.

        ``frames`` are indices into ``recs`` (a classified TX batch) not taken by anyone yet.
        A well-formed, unsegmented UDP datagram whose flow exists and owns a connected socket
        goes out with the others in one C call (sendmmsg, no copy). Everything else is
        returned, in order, for the copying path, which creates flows, answers DHCP and
        relays errors; a tuple without a flow stays without one for the whole batch, so its
        datagrams all go there. Never raises.
        """
        if not self._ctx.view.udp:
            return list(frames)
        rest: list[int] = []
        sent: list[tuple[int, Flow]] = []
        try:
            runs = core.UdpRuns(recs, frames)
            r_ = runs.runs
            for r in range(runs.count):
                run = r_[r]
                flow = (self._ctx.flows.lookup_packet(FlowType.UDP, recs, runs.idx[run.first])
                        if run.udp else None)
                # A forwarded flow's replies leave through its listener with sendto().
                state: UdpSockState | None = flow.data if flow is not None else None
                if state is None or state.peer is not None:
                    rest += runs.frames(r)
                    continue
                run.fd = state.sock.fileno()
                sent.append((r, flow))  # type: ignore[arg-type]
                self._fast.add_tx(flow, state)  # type: ignore[arg-type]
            failed = runs.send() if sent else 0
        except Exception:  # noqa: BLE001 - a broken batch is the copying path's business
            log.exception("UDP fast path failed: batch left to the copying path")
            return list(frames)
        self._account(recs, runs, sent, failed)
        return rest

    def _account(self, recs: "core.PacketRecords", runs: core.UdpRuns,
                 sent: list[tuple[int, Flow]], failed: int) -> None:
        """After runs.send(): retry stale-error sends, count drops, touch the flows."""
        r_ = runs.runs
        for r, flow in sent:
            ok = r_[r].count
            if failed and r_[r].failed:
                for i, code in runs.errors(r):
                    if code == -errno.ECONNREFUSED:
                        # A pending error from an earlier ICMP message, cleared by this
                        # send: retry.
                        rec = recs[i]
                        code = self._resend(flow, recs.read(i, rec.payload_off,
                                                            rec.payload_len))
                    if code:
                        ok -= 1
                        self._ctx.dropped += 1
                        trace(log, "UDP flow %d: send failed: %s", flow.id,
                              errno.errorcode.get(-code))
            if ok:
                self._ctx.activity(flow, Pif.TAP)

    def _resend(self, flow: Flow, payload: bytes) -> int:
        """One more send of a datagram whose first attempt met a stale error: 0 or -errno."""
        state: UdpSockState = flow.data  # type: ignore[assignment]
        try:
            state.sock.send(payload)
        except OSError as e:
            return -(e.errno or errno.EIO)
        return 0
