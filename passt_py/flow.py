# SPDX-License-Identifier: MIT
"""The flow table: every translated conversation (ping, UDP, later TCP) in one bounded table.

Theory of operation: a flow joins two sides. The *initiating* side is where the conversation
started (the guest for outbound traffic, the host for port forwarding), the *target* side is
where it goes. Each side says which interface it is on (TAP: the guest; HOST: host sockets)
and holds the endpoint's address/port and our own address/port as seen from that side. For
ping flows the "port" is the echo identifier.

Both sides are indexed in one hash by (flow type, side), so a guest 5-tuple and a host-side
tuple each find the flow in O(1). Flows get a small integer id, the lowest free index below the
table size: stable for the flow's lifetime, so migration can name them.

Expiry: each flow carries a deadline that activity pushes forward (touch is O(1)). A heap holds
exactly one (deadline, flow) entry per flow; a sweep once per ``sweep_interval`` pops entries
that are due, closes the flows whose deadline really passed and re-queues the others. The cost
is bounded by the number of flows due, never a walk over the whole table.

At ``max_flows`` new flows are refused with FlowTableFull (the caller answers the guest with an
ICMP error or drops); existing flows are unaffected. Refusals are logged at most once per
``LOG_INTERVAL`` seconds with a count of the ones suppressed.
"""
from __future__ import annotations

import enum
import heapq
import ipaddress
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from passt_py.loop import EventLoop, Timer

log = logging.getLogger(__name__)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_FLOWS = 131072
SWEEP_INTERVAL = 1.0
LOG_INTERVAL = 10.0


class Pif(enum.IntEnum):
    """Which interface a flow side lives on."""

    TAP = 1    # the guest
    HOST = 2   # host sockets


class FlowType(enum.IntEnum):
    """What a flow translates (the values are part of the migration format: never renumber)."""

    PING4 = 1
    PING6 = 2
    UDP = 3
    TCP = 4


@dataclass(frozen=True, slots=True)
class FlowSide:
    """One side of a flow: the endpoint (e*) and our address/port facing it (o*)."""

    pif: Pif
    eaddr: IPAddr
    eport: int
    oaddr: IPAddr
    oport: int


class FlowRefused(Exception):
    """A new flow could not be created."""


class FlowTableFull(FlowRefused):
    """The table holds max_flows flows already."""


class FlowConflict(FlowRefused):
    """One of the new flow's sides is already indexed by another flow."""


INI = 0   # index of the initiating side in Flow.sides
TGT = 1   # index of the target side


class Flow:
    """One entry of the table; ``data`` belongs to the protocol that created it."""

    __slots__ = ("id", "type", "sides", "timeout", "deadline", "on_close", "data", "closed",
                 "aliases")

    def __init__(self, fid: int, ftype: FlowType, ini: FlowSide, tgt: FlowSide,
                 timeout: float, deadline: float,
                 on_close: Callable[["Flow"], None] | None, data: object) -> None:
        self.id = fid
        self.type = ftype
        self.sides = (ini, tgt)
        self.timeout = timeout
        self.deadline = deadline
        self.on_close = on_close
        self.data = data
        self.closed = False
        self.aliases: list[tuple[FlowType, tuple]] = []   # see FlowTable.add_alias

    def side(self, pif: Pif) -> FlowSide:
        """The side on ``pif`` (the initiating one if both are on the same interface)."""
        return self.sides[INI] if self.sides[INI].pif == pif else self.sides[TGT]

    def __repr__(self) -> str:
        ini, tgt = self.sides
        return (f"<Flow {self.id} {self.type.name} {ini.pif.name} [{ini.eaddr}]:{ini.eport} -> "
                f"[{ini.oaddr}]:{ini.oport} => {tgt.pif.name} [{tgt.oaddr}]:{tgt.oport} -> "
                f"[{tgt.eaddr}]:{tgt.eport}>")


class FlowTable:
    """Bounded table of flows with a two-sided hash index and deadline-based expiry."""

    def __init__(self, loop: EventLoop, max_flows: int = DEFAULT_MAX_FLOWS,
                 sweep_interval: float = SWEEP_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self._loop = loop
        self.max_flows = max_flows
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._flows: dict[int, Flow] = {}
        self._index: dict[tuple[FlowType, FlowSide], Flow] = {}
        self._aliases: dict[tuple[FlowType, tuple], Flow] = {}
        self._free: list[int] = []           # heap of released ids below _next_id
        self._next_id = 0
        self._expiry: list[tuple[float, int, Flow]] = []
        self._probes: dict[FlowType, Callable[[Flow], bool]] = {}
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._refused = 0                    # refusals since the last log line
        self._last_log = float("-inf")
        self.refused_total = 0

    # ---- queries ----
    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    @property
    def full(self) -> bool:
        """True when a new flow would be refused."""
        return len(self._flows) >= self.max_flows

    def get(self, fid: int) -> Flow | None:
        """The flow with id ``fid``, if any."""
        return self._flows.get(fid)

    def lookup(self, ftype: FlowType, side: FlowSide) -> Flow | None:
        """The flow of type ``ftype`` having ``side`` as one of its sides."""
        return self._index.get((ftype, side))

    def lookup_alias(self, ftype: FlowType, key: tuple) -> Flow | None:
        """The flow indexed under ``key`` by :meth:`add_alias`."""
        return self._aliases.get((ftype, key))

    def lookup_packet(self, ftype: FlowType, recs, i: int) -> Flow | None:
        """The flow of guest packet ``i`` of a classified TX batch (core.PacketRecords).

        Data paths look a flow up per packet: after the first packet, the packet's raw tuple
        (recs.key: address bytes and ports) finds the flow in one dict lookup, without the
        address objects a FlowSide needs.
        """
        key = recs.key(i)
        flow = self._aliases.get((ftype, key))
        if flow is not None:
            return flow
        r = recs[i]
        try:
            side = FlowSide(Pif.TAP, recs.src(i), r.sport, recs.dst(i), r.dport)
        except ValueError:
            return None
        flow = self._index.get((ftype, side))
        if flow is not None:
            self.add_alias(flow, key)
        return flow

    # ---- changes ----
    def add_alias(self, flow: Flow, key: tuple) -> None:
        """Index ``flow`` also under ``key``, a cheap stand-in for one of its sides that the
        caller meets per packet (raw packet bytes, a socket and its peer's address); the
        alias goes with the flow when it is closed."""
        entry = (flow.type, key)
        if flow.closed or entry in self._aliases:
            return
        self._aliases[entry] = flow
        flow.aliases.append(entry)

    def new(self, ftype: FlowType, ini: FlowSide, tgt: FlowSide, timeout: float,
            on_close: Callable[[Flow], None] | None = None, data: object = None) -> Flow:
        """Create and index a flow expiring ``timeout`` s after its last touch.

        Raises FlowTableFull at the limit (logged, rate-limited) and FlowConflict when a side
        already belongs to another flow; in both cases nothing changes.
        """
        if self.full:
            self.refuse()
            raise FlowTableFull(f"flow table full ({self.max_flows} flows)")
        keys = [(ftype, ini), (ftype, tgt)]
        if any(k in self._index for k in keys):
            raise FlowConflict(f"{ftype.name} flow side already in use")
        fid = heapq.heappop(self._free) if self._free else self._alloc_id()
        deadline = self._clock() + timeout
        flow = Flow(fid, ftype, ini, tgt, timeout, deadline, on_close, data)
        self._flows[fid] = flow
        for key in keys:
            self._index[key] = flow
        heapq.heappush(self._expiry, (deadline, next(self._seq), flow))
        self._arm()
        return flow

    def _alloc_id(self) -> int:
        fid = self._next_id
        self._next_id += 1
        return fid

    def refuse(self) -> None:
        """Count (and log, at most once per LOG_INTERVAL) a flow refused for lack of room."""
        self._refused += 1
        self.refused_total += 1
        now = self._clock()
        if now - self._last_log >= LOG_INTERVAL:
            log.warning("flow table full (%d flows): refused %d new flow(s)",
                        self.max_flows, self._refused)
            self._refused = 0
            self._last_log = now

    def set_activity_probe(self, ftype: FlowType, probe: Callable[[Flow], bool]) -> None:
        """Ask ``probe(flow)`` before expiring a flow of ``ftype``: activity seen by a path
        that does not call touch() per packet (the C fast path); it touches and says True."""
        self._probes[ftype] = probe

    def touch(self, flow: Flow, timeout: float | None = None) -> None:
        """Record activity: the flow now expires ``timeout`` (default: its own) s from now."""
        if timeout is not None:
            flow.timeout = timeout
        flow.deadline = self._clock() + flow.timeout

    def close(self, flow: Flow) -> None:
        """Remove ``flow`` and run its close callback (idempotent)."""
        if flow.closed or self._flows.get(flow.id) is not flow:
            return
        flow.closed = True
        del self._flows[flow.id]
        for side in flow.sides:
            key = (flow.type, side)
            if self._index.get(key) is flow:
                del self._index[key]
        for alias in flow.aliases:
            if self._aliases.get(alias) is flow:
                del self._aliases[alias]
        heapq.heappush(self._free, flow.id)
        if len(self._expiry) > 2 * len(self._flows) + 64:
            # Entries of flows closed early pile up: rebuild from the live flows (amortised).
            self._expiry = [(f.deadline, next(self._seq), f) for f in self._flows.values()]
            heapq.heapify(self._expiry)
        if not self._flows:
            # Empty table: forget ids and queued deadlines, so ids restart from 0.
            self._free.clear()
            self._next_id = 0
            self._expiry.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if flow.on_close is not None:
            try:
                flow.on_close(flow)
            except Exception:  # noqa: BLE001 - a broken callback must not corrupt the table
                log.exception("error closing flow %r", flow)

    def close_types(self, types: Iterable[FlowType]) -> int:
        """Close every flow of the given types; returns how many were closed."""
        wanted = set(types)
        victims = [f for f in self._flows.values() if f.type in wanted]
        for flow in victims:
            self.close(flow)
        return len(victims)

    def close_all(self) -> int:
        """Close every flow; returns how many were closed."""
        return self.close_types(FlowType)

    # ---- expiry ----
    def _arm(self) -> None:
        if self._timer is None and self._flows:
            self._timer = self._loop.call_later(self._sweep_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expire()
        self._arm()

    def expire(self, now: float | None = None) -> int:
        """Close flows whose deadline has passed; returns how many were closed."""
        if now is None:
            now = self._clock()
        closed = 0
        while self._expiry and self._expiry[0][0] <= now:
            _deadline, _seq, flow = heapq.heappop(self._expiry)
            if flow.closed:
                continue
            if flow.deadline <= now:
                probe = self._probes.get(flow.type)
                if probe is not None and probe(flow) and flow.deadline > now:
                    heapq.heappush(self._expiry, (flow.deadline, next(self._seq), flow))
                    continue
                self.close(flow)
                closed += 1
            else:
                heapq.heappush(self._expiry, (flow.deadline, next(self._seq), flow))
        return closed
