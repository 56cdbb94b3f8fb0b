# SPDX-License-Identifier: MIT
"""Host to guest: datagrams arriving on a UDP flow's own (connected) socket.

Theory of operation: every outbound flow's socket is in the loop with this reader. On
readiness it relays what the error queue holds (errqueue.py), then the datagrams: straight into
the guest's RX buffers by the ring path (core.UdpPath through udp.ring, with one header
template since the connected socket only hears its peer) when the RX ring runs, else read here
and framed in Python. The first ring delivery also hands the socket to the C fast path, which
from then on reads it inside the loop's wait. When the guest has no RX buffer left the socket
is muted until it adds some (UdpContext.wait_rx). Replies come from the address and port the
guest talked to; the first one makes the flow bidirectional (the longer timeout).
"""
from __future__ import annotations

import errno
import logging

from passt_py import core
from passt_py.config.log import trace
from passt_py.flow import Flow, Pif
from passt_py.loop import ERR, HUP, IN
from passt_py.udp.context import RECV_BATCH, UdpContext, UdpSockState
from passt_py.udp.errqueue import ErrorRelay
from passt_py.udp.fast import UdpFastEntries

log = logging.getLogger(__name__)


def set_template(ctx: UdpContext, tmpls: core.UdpTemplates, i: int, flow: Flow,
                 any_peer: bool) -> None:
    """Entry ``i`` of ``tmpls``: the headers of ``flow``'s datagrams to the guest, taken
    from any peer (its own connected socket) or from its host peer only (a listener)."""
    tap, host = flow.side(Pif.TAP), flow.side(Pif.HOST)
    tmpls.set(i, ctx.guest.mac, ctx.view.our_mac, tap.oaddr, tap.eaddr, tap.oport,
              tap.eport, peer=None if any_peer else (host.eaddr, host.eport))


class UdpFlowReceiver:
    """Reads flow sockets (not listeners: forward.py) and delivers to the guest."""

    def __init__(self, ctx: UdpContext, errors: ErrorRelay, fast: UdpFastEntries) -> None:
        self._ctx = ctx
        self._errors = errors
        self._fast = fast

    def on_ready(self, flow: Flow, mask: int) -> None:
        """Relay datagrams and errors arriving on a flow's own socket."""
        if flow.closed:
            return
        ctx = self._ctx
        state: UdpSockState = flow.data  # type: ignore[assignment]
        if mask & (ERR | HUP):
            self._errors.drain(flow, state.sock)
        if mask & IN and not flow.closed:
            if ctx.ring_active():
                self._ring_flow(flow, state)
                return
            frames = []
            tap = flow.side(Pif.TAP)
            for _ in range(RECV_BATCH):
                try:
                    n = state.sock.recv_into(ctx.buf)
                except BlockingIOError:
                    break
                except OSError as e:
                    # An ICMP error reported through recv (also queued): relay it.
                    trace(log, "UDP flow %d: receive error %s", flow.id, e)
                    self._errors.drain(flow, state.sock)
                    continue
                frames.append(ctx.frame(tap, memoryview(ctx.buf)[:n]))
            if frames:
                ctx.activity(flow, Pif.HOST)
                ctx.to_guest(frames)

    def _ring_flow(self, flow: Flow, state: UdpSockState) -> None:
        """A flow socket's datagrams straight into the guest's RX buffers (udp_ring)."""
        ctx = self._ctx
        tmpls = state.tmpls
        if tmpls is None or tmpls.mac != ctx.guest.mac:
            tmpls = state.tmpls = core.UdpTemplates(1)
            set_template(ctx, tmpls, 0, flow, any_peer=True)
            tmpls.n = 1
        path = ctx.rx_path
        assert path is not None
        n = path.deliver(state.sock.fileno(), tmpls, RECV_BATCH)
        res = path.last
        ctx.dropped += res.dropped
        if n:
            ctx.activity(flow, Pif.HOST)
        self._fast.add_rx(state, tmpls)
        if res.stop == core.UDP_STOP_ERROR:
            # An ICMP error reported through recv (also queued): relay it.
            trace(log, "UDP flow %d: receive error %s", flow.id, errno.errorcode.get(-res.err))
            self._errors.drain(flow, state.sock)
        elif res.stop == core.UDP_STOP_NOBUFS:
            ctx.wait_rx(state.sock)
