# SPDX-License-Identifier: MIT
"""The flow table: two-sided index, stable ids, limit, expiry (passt_py.flow)."""
from __future__ import annotations

import ipaddress
import logging

import pytest
from l4_helpers import pump

from passt_py.flow import (Flow, FlowConflict, FlowSide, FlowTable, FlowTableFull, FlowType,
                           Pif)
from passt_py.loop import EventLoop

A = ipaddress.ip_address


class Clock:
    """A manual monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sides(n: int) -> tuple[FlowSide, FlowSide]:
    """A distinct (guest side, host side) pair for flow number ``n``."""
    tap = FlowSide(Pif.TAP, A("10.0.2.15"), 10000 + n, A("10.0.2.2"), 53)
    host = FlowSide(Pif.HOST, A("127.0.0.1"), 53, A("127.0.0.1"), 20000 + n)
    return tap, host


@pytest.fixture()
def loop():
    lp = EventLoop()
    yield lp
    lp.close()


def test_both_sides_find_the_flow(loop: EventLoop) -> None:
    """A flow is found by its guest-side tuple and by its host-side tuple."""
    table = FlowTable(loop)
    tap, host = sides(1)
    flow = table.new(FlowType.UDP, tap, host, 30.0)
    assert table.lookup(FlowType.UDP, tap) is flow
    assert table.lookup(FlowType.UDP, host) is flow
    assert table.lookup(FlowType.PING4, tap) is None
    assert flow.side(Pif.TAP) == tap and flow.side(Pif.HOST) == host
    assert table.get(flow.id) is flow and len(table) == 1


def test_ids_are_small_and_reused(loop: EventLoop) -> None:
    """Ids are the lowest free indices, reused after a flow closes."""
    table = FlowTable(loop)
    flows = [table.new(FlowType.UDP, *sides(i), 30.0) for i in range(4)]
    assert [f.id for f in flows] == [0, 1, 2, 3]
    table.close(flows[1])
    table.close(flows[2])
    assert table.new(FlowType.UDP, *sides(10), 30.0).id == 1
    assert table.new(FlowType.UDP, *sides(11), 30.0).id == 2
    assert table.new(FlowType.UDP, *sides(12), 30.0).id == 4


def test_limit_refuses_new_keeps_old(loop: EventLoop, caplog: pytest.LogCaptureFixture) -> None:
    """At max_flows new flows are refused, logged once, and existing flows stay."""
    table = FlowTable(loop, max_flows=3)
    flows = [table.new(FlowType.UDP, *sides(i), 30.0) for i in range(3)]
    assert table.full
    with caplog.at_level(logging.WARNING, logger="passt_py.flow"):
        for i in range(50):
            with pytest.raises(FlowTableFull):
                table.new(FlowType.UDP, *sides(100 + i), 30.0)
    assert len([r for r in caplog.records if "flow table full" in r.message]) == 1
    assert table.refused_total == 50
    assert all(table.lookup(FlowType.UDP, f.sides[0]) is f for f in flows)
    table.close(flows[0])
    assert table.new(FlowType.UDP, *sides(200), 30.0).id == 0


def test_conflicting_side_refused(loop: EventLoop) -> None:
    """A side already owned by another flow of the same type cannot be reused."""
    table = FlowTable(loop)
    tap, host = sides(1)
    table.new(FlowType.UDP, tap, host, 30.0)
    with pytest.raises(FlowConflict):
        table.new(FlowType.UDP, tap, sides(2)[1], 30.0)
    assert len(table) == 1
    # The same tuple under another type is a different flow.
    table.new(FlowType.TCP, tap, host, 30.0)
    assert len(table) == 2


def test_close_runs_callback_once(loop: EventLoop) -> None:
    """Closing unindexes the flow and calls its callback exactly once."""
    table = FlowTable(loop)
    closed: list[Flow] = []
    flow = table.new(FlowType.UDP, *sides(1), 30.0, on_close=closed.append)
    table.close(flow)
    table.close(flow)
    assert closed == [flow] and flow.closed
    assert table.lookup(FlowType.UDP, flow.sides[0]) is None
    assert table.lookup(FlowType.UDP, flow.sides[1]) is None


def test_callback_error_does_not_corrupt(loop: EventLoop,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """A failing close callback is logged (at ERROR, naming the flow, with the traceback); the
    table stays consistent."""
    table = FlowTable(loop)

    def boom(_flow: Flow) -> None:
        raise RuntimeError("boom")

    flow = table.new(FlowType.UDP, *sides(1), 30.0, on_close=boom)
    with caplog.at_level(logging.ERROR, logger="passt_py.flow"):
        table.close(flow)
    assert len(table) == 0
    assert table.lookup(FlowType.UDP, flow.sides[0]) is None
    assert table.lookup(FlowType.UDP, flow.sides[1]) is None
    errors = [r for r in caplog.records if r.name == "passt_py.flow"]
    assert len(errors) == 1, caplog.text
    assert errors[0].levelno == logging.ERROR
    assert errors[0].getMessage() == f"error closing flow {flow!r}"
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is RuntimeError
    # The table still works: the id is reused, the tuple can be taken again.
    again = table.new(FlowType.UDP, *sides(1), 30.0)
    assert again.id == flow.id and table.lookup(FlowType.UDP, flow.sides[0]) is again


def test_expiry_and_touch(loop: EventLoop) -> None:
    """A flow expires timeout seconds after its last touch, not after its creation."""
    clock = Clock()
    table = FlowTable(loop, clock=clock)
    closed: list[Flow] = []
    a = table.new(FlowType.UDP, *sides(1), 30.0, on_close=closed.append)
    b = table.new(FlowType.UDP, *sides(2), 30.0, on_close=closed.append)
    clock.now += 20
    table.touch(b)
    clock.now += 15
    assert table.expire() == 1 and closed == [a]
    clock.now += 10
    table.touch(b, 120.0)
    clock.now += 100
    assert table.expire() == 0
    clock.now += 21
    assert table.expire() == 1 and closed == [a, b]
    assert len(table) == 0


def test_expiry_heap_bounded(loop: EventLoop) -> None:
    """Flows closed early do not pile up entries in the expiry queue."""
    table = FlowTable(loop)
    keep = table.new(FlowType.UDP, *sides(0), 30.0)
    for i in range(1, 5000):
        table.close(table.new(FlowType.UDP, *sides(i), 30.0))
    assert len(table._expiry) <= 2 * len(table) + 65
    assert table.lookup(FlowType.UDP, keep.sides[0]) is keep


def test_sweep_runs_from_the_loop(loop: EventLoop) -> None:
    """The table's own timer expires flows while the loop runs."""
    table = FlowTable(loop, sweep_interval=0.02)
    closed: list[Flow] = []
    table.new(FlowType.UDP, *sides(1), 0.05, on_close=closed.append)
    assert pump(loop, lambda: bool(closed), timeout=2.0)
    assert len(table) == 0


def test_close_types(loop: EventLoop) -> None:
    """close_types closes only the flows of the given types."""
    table = FlowTable(loop)
    table.new(FlowType.UDP, *sides(1), 30.0)
    table.new(FlowType.PING4, *sides(2), 30.0)
    table.new(FlowType.PING6, *sides(3), 30.0)
    assert table.close_types([FlowType.PING4, FlowType.PING6]) == 2
    assert [f.type for f in table] == [FlowType.UDP]
    assert table.close_all() == 1 and len(table) == 0


def test_invalid_max_flows(loop: EventLoop) -> None:
    """A table must hold at least one flow."""
    with pytest.raises(ValueError):
        FlowTable(loop, max_flows=0)


class _Records:
    """What FlowTable.lookup_packet reads of core.PacketRecords, for one guest packet."""

    class _Rec:
        def __init__(self, sport: int, dport: int) -> None:
            self.sport, self.dport = sport, dport

    def __init__(self, tap: FlowSide) -> None:
        self.tap = tap
        self.calls = 0

    def key(self, i: int) -> tuple:
        return (self.tap.eaddr.packed, self.tap.eport, self.tap.oaddr.packed, self.tap.oport)

    def __getitem__(self, i: int) -> "_Records._Rec":
        self.calls += 1                  # only the slow lookup reads the record
        return self._Rec(self.tap.eport, self.tap.oport)

    def src(self, i: int):
        return self.tap.eaddr

    def dst(self, i: int):
        return self.tap.oaddr


def test_packet_lookup_aliases_the_raw_tuple_until_the_flow_closes(loop: EventLoop) -> None:
    """The first packet finds the flow through its FlowSide and adds a raw-tuple alias; the
    next ones use the alias alone; closing the flow drops it, and a new flow on the same
    tuple is found, not the closed one."""
    table = FlowTable(loop)
    tap, host = sides(1)
    flow = table.new(FlowType.UDP, tap, host, 30.0)
    recs = _Records(tap)
    assert table.lookup_packet(FlowType.UDP, recs, 0) is flow and recs.calls == 1
    assert table.lookup_packet(FlowType.UDP, recs, 0) is flow and recs.calls == 1
    assert table.lookup_packet(FlowType.TCP, recs, 0) is None          # per flow type
    table.add_alias(flow, ("listener", 7))
    assert table.lookup_alias(FlowType.UDP, ("listener", 7)) is flow
    table.close(flow)
    assert table.lookup_alias(FlowType.UDP, ("listener", 7)) is None
    again = table.new(FlowType.UDP, tap, host, 30.0)
    assert table.lookup_packet(FlowType.UDP, recs, 0) is again
    table.close(again)
    table.add_alias(again, ("late", 1))                 # a closed flow gets no alias
    assert table.lookup_alias(FlowType.UDP, ("late", 1)) is None


def test_activity_probe_keeps_a_flow_its_path_saw_busy() -> None:
    """A flow whose traffic a path outside touch() saw (the C fast path) is asked about
    before it expires: busy, it is touched and lives on; idle, it goes."""
    now = [0.0]
    loop = EventLoop()
    table = FlowTable(loop, clock=lambda: now[0])
    busy = {"n": 2}

    def probe(flow) -> bool:
        if busy["n"]:
            busy["n"] -= 1
            table.touch(flow)
            return True
        return False
    table.set_activity_probe(FlowType.UDP, probe)
    flow = table.new(FlowType.UDP, *sides(1), 10.0, None, None)
    for _ in range(2):
        now[0] += 11
        assert table.expire() == 0 and not flow.closed
    now[0] += 11
    assert table.expire() == 1 and flow.closed
    loop.close()
