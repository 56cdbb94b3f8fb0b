# SPDX-License-Identifier: MIT
"""--stats DELAY: one log line of the back-end's counters every DELAY seconds.

Theory of operation: passt prints event statistics periodically; passt-py keeps no table of
events, but its pieces already count what matters, so the line gathers those counters instead
of adding any to the data path: open flows by type, flows refused for a full table, frames and
datagrams carried to and from the guest (by the Python paths and by the C fast path), bytes the
fast path moved for TCP connections, and what was dropped or reset. Only a timer runs; a line
is logged at info level (hidden by -q), with totals since start-up except for the flows, which
are the current count.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from passt_py.flow import FlowType
from passt_py.loop import EventLoop

if TYPE_CHECKING:
    from passt_py.service import Service

log = logging.getLogger(__name__)

Counters = dict[str, int]


def service_counters(service: Service) -> Counters:
    """The counters of a running back-end, by name (absent pieces count nothing)."""
    by_type = {t: 0 for t in FlowType}
    for flow in service.flows:
        by_type[flow.type] += 1
    out: Counters = {
        "flows_tcp": by_type[FlowType.TCP],
        "flows_udp": by_type[FlowType.UDP],
        "flows_ping": by_type[FlowType.PING4] + by_type[FlowType.PING6],
        "flows_refused": service.flows.refused_total,
        "link_dropped": service.link.dropped_rx,
    }
    tcp, udp, fast = service.tcp, service.udp, service.fast
    if tcp is not None:
        out.update(tcp_frames_to_guest=getattr(tcp.datapath, "frames_sent", 0),
                   tcp_fast_bytes=tcp.fast_bytes,
                   tcp_resets=tcp.resets, tcp_retransmits=tcp.retransmits,
                   tcp_dropped=tcp.dropped)
    if udp is not None:
        out.update(udp_frames_to_guest=udp.frames_built, udp_dropped=udp.dropped)
    if fast is not None:
        s = fast.stats()
        out.update(fast_dgrams_to_guest=int(s.rx_dgrams), fast_dgrams_from_guest=int(s.tx_dgrams),
                   fast_events=int(s.handled))
    return out


def format_counters(counters: Counters) -> str:
    """``name=value`` pairs in a stable order, for one log line."""
    return " ".join(f"{name}={value}" for name, value in counters.items())


class StatsReporter:
    """Logs ``collect()`` every ``delay`` seconds on ``loop`` once started."""

    def __init__(self, loop: EventLoop, delay: float, collect: Callable[[], Counters]) -> None:
        self._loop = loop
        self._delay = delay
        self._collect = collect
        self.lines = 0              # how many lines were logged (for tests)

    def start(self) -> None:
        """Schedule the first line ``delay`` seconds from now."""
        self._loop.call_later(self._delay, self._tick)

    def _tick(self) -> None:
        """Log one line and schedule the next."""
        log.info("stats: %s", format_counters(self._collect()))
        self.lines += 1
        self._loop.call_later(self._delay, self._tick)
