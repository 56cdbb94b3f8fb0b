# SPDX-License-Identifier: MIT
"""A UDP flow's entries in the C fast path (core.FastPath), and what they saw.

Theory of operation: once a flow is established its datagrams, both ways, can be handled in C
inside the loop's wait: the guest side (tuple -> socket) is added by the guest-to-host batch
path the first time it sends one of the flow's datagrams, the host side (socket -> header
templates) by the ring receive path the first time it delivers from the socket. Entries are
stamped with the fast path's generation (it drops them all when the RX ring changes), must be
removed before the socket closes (C would otherwise name a stale fd), and are asked for their
traffic before the flow table expires the flow: datagrams C moved never passed touch().
"""
from __future__ import annotations

from passt_py import core
from passt_py.flow import Flow, Pif
from passt_py.udp.context import UdpContext, UdpSockState


class UdpFastEntries:
    """Adds, removes and polls a flow's core.FastPath entries (nothing when there is none)."""

    def __init__(self, ctx: UdpContext) -> None:
        self._ctx = ctx

    def add_tx(self, flow: Flow, state: UdpSockState) -> None:
        """The guest's datagrams of ``flow`` go to its socket from C from now on."""
        fast = self._ctx.fast
        if fast is None or state.fast_tx == fast.gen:
            return
        tap = flow.side(Pif.TAP)
        if fast.add_tx(tap.eaddr, tap.oaddr, tap.eport, tap.oport, state.sock.fileno()):
            state.fast_tx = fast.gen

    def add_rx(self, state: UdpSockState, tmpls: core.UdpTemplates) -> None:
        """From now on C takes this socket's readiness itself (and gives back errors)."""
        fast = self._ctx.fast
        if fast is not None and state.fast_rx != fast.gen:
            if fast.add_rx(state.sock.fileno(), tmpls):
                state.fast_rx = fast.gen

    def forget(self, flow: Flow, state: UdpSockState) -> None:
        """Before the socket closes: no C entry may name its fd any more."""
        fast = self._ctx.fast
        if fast is None:
            return
        if state.fast_rx == fast.gen:
            fast.remove_rx(state.sock.fileno())
        if state.fast_tx == fast.gen:
            tap = flow.side(Pif.TAP)
            fast.remove_tx(tap.eaddr, tap.oaddr, tap.eport, tap.oport)
        state.fast_rx = state.fast_tx = -1

    def activity(self, flow: Flow) -> bool:
        """The flow table's probe before expiring ``flow``: did C move datagrams of it since
        last asked? Counted as the Python paths count (host side: bidirectional)."""
        fast = self._ctx.fast
        state: UdpSockState = flow.data  # type: ignore[assignment]
        if fast is None:
            return False
        rx = fast.rx_count(state.sock.fileno()) if state.fast_rx == fast.gen else 0
        tx = 0
        if state.fast_tx == fast.gen:
            tap = flow.side(Pif.TAP)
            tx = fast.tx_count(tap.eaddr, tap.oaddr, tap.eport, tap.oport)
        if rx:
            self._ctx.activity(flow, Pif.HOST)
        if tx:
            self._ctx.activity(flow, Pif.TAP)
        return bool(rx or tx)
