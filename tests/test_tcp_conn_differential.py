# SPDX-License-Identifier: MIT
"""The TCP steady state in C against the connection core it implements (differential).

csrc/fast_tcp.c runs the subset of passt_py.tcp.conn's rules a connection in the steady state
needs. Here the same connection state and the same guest segments go through both: C on real
rings and a loopback socket (tests/fast_tcp_rig.py), and a TcpConn fed the same runs the way
TcpHandler.take_batch feeds it (run_verdict / run_ack / host_took for data, segment() for bare
ACKs). Compared: the point where C hands the batch back (the first run the core does not take
as steady), SND.UNA, RCV.NXT, the guest's window, the bytes the host peer received, and the one
ACK at the round's end.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from passt_py.tcp.conn import TcpConn
from passt_py.tcp.seg import ACK, TcpSegment, seq_add, seq_diff
from passt_py.tcp.state import Phase, TcpState
from tests.conftest import hypothesis_budget
# conn, rig: fixtures, used by name
from tests.fast_tcp_rig import ACK0, GPORT, OPORT, SEQ0, conn, register, seg, take  # noqa: F401
from tests.l4_helpers import recv_exactly
from tests.ring_rig import HDR, Wait, rig  # noqa: F401

WS = 7                      # the guest's window scale in the state handed to C
WND0 = 8192 << WS           # the guest's window in that state


@dataclass
class Frame:
    """One guest segment of the generated batch."""

    seq: int
    ack: int
    wnd: int
    payload: bytes = b""
    flags: str = "A"

    def wire(self) -> bytes:
        return seg(self.seq, self.ack, self.flags, self.payload, self.wnd)


def _runs(frames: list[Frame]) -> list[list[Frame]]:
    """The frames cut as core.tcp_runs cuts them (csrc/tcp_path.c): in-order data continuing
    the run's stream with an ACK not going back; bare ACKs each acknowledging more; anything
    else alone."""
    runs: list[list[Frame]] = []
    for f in frames:
        last = runs[-1][-1] if runs else None
        data = bool(f.payload) and f.flags == "A"
        bare = not f.payload and f.flags == "A"
        if last is not None and data and last.payload and last.flags == "A" and \
                f.seq == seq_add(last.seq, len(last.payload)) and seq_diff(f.ack, last.ack) >= 0:
            runs[-1].append(f)
        elif last is not None and bare and not last.payload and last.flags == "A" and \
                f.seq == last.seq and seq_diff(f.ack, last.ack) > 0:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def _core(in_flight: int) -> TcpConn:
    """The core's view of the state tests/fast_tcp_rig.py hands to C."""
    s = TcpState(version=4, guest_addr=ipaddress.IPv4Address("10.0.2.15"), guest_port=GPORT,
                 our_addr=ipaddress.IPv4Address("10.0.2.2"), our_port=OPORT, inbound=False,
                 phase=Phase.ESTABLISHED, seq_to_guest=seq_add(SEQ0, in_flight),
                 seq_acked_by_guest=SEQ0, seq_from_guest=ACK0, seq_acked_to_guest=ACK0,
                 wnd_from_guest=WND0, ws_from_guest=WS, ws_to_guest=8, mss_guest=1460)
    c = TcpConn(s, 1460)
    c.last_wnd_raw = 1000
    return c


def _steady_runs(c: TcpConn, runs: list[list[Frame]]) -> tuple[int, bytes]:
    """Feed the core the leading runs it takes as steady; (frames taken, bytes to the host)."""
    taken, sent = 0, b""
    for run in runs:
        last = run[-1]
        if run[0].payload and run[0].flags == "A":
            if not c.run_verdict(run[0].seq, last.ack):
                break
            data = b"".join(f.payload for f in run)
            c.run_ack(last.ack, last.wnd)
            c.host_took(len(data), len(data), False)
            sent += data
        elif not run[0].payload and run[0].flags == "A":
            if not c.ack_verdict(last.seq, last.ack, last.wnd):
                break
            c.segment(TcpSegment(GPORT, OPORT, last.seq, last.ack, ACK, last.wnd, None, None,
                                 False, False, memoryview(b"")))
        else:
            break
        taken += len(run)
    return taken, sent


#: Where a frame's ACK field points: SND.UNA (a duplicate if the window is the same and data
#: is in flight), SND.NXT, in between, past SND.NXT (never sent), or before SND.UNA (old).
_ACK_AT = st.one_of(st.just(("una", 0)), st.just(("nxt", 0)),
                    st.tuples(st.just("mid"), st.integers(1, 2000)),
                    st.tuples(st.just("past"), st.integers(1, 100)),
                    st.tuples(st.just("old"), st.integers(1, 100)))
_ITEMS = st.lists(st.tuples(
    st.sampled_from(["data", "data", "ack", "ack", "gap", "old", "fin"]),
    st.integers(1, 1400), _ACK_AT, st.booleans()), min_size=1, max_size=24)


def _ack_field(at: tuple[str, int], in_flight: int) -> int:
    where, k = at
    if where == "una":
        return SEQ0
    if where == "nxt":
        return seq_add(SEQ0, in_flight)
    if where == "mid":
        return seq_add(SEQ0, min(k, in_flight))
    return seq_add(SEQ0, in_flight + k) if where == "past" else seq_add(SEQ0, -k)


def _frames(items: list, in_flight: int) -> list[Frame]:
    """The generated batch: ACK fields move from SND.UNA on, within or past SND.NXT by the
    drawn amount; windows stay or change; data continues RCV.NXT (or leaves a gap, or
    repeats old data); a FIN."""
    frames, nxt, ack = [], ACK0, SEQ0
    for kind, size, ack_at, new_window in items:
        ack = _ack_field(ack_at, in_flight)
        wnd = 8192 + (size if new_window else 0)
        if kind == "data":
            frames.append(Frame(nxt, ack, wnd, os.urandom(size)))
            nxt = seq_add(nxt, size)
        elif kind == "ack":
            frames.append(Frame(nxt, ack, wnd))
        elif kind == "gap":
            frames.append(Frame(seq_add(nxt, 1000), ack, wnd, os.urandom(size)))
        elif kind == "old":
            frames.append(Frame(seq_add(nxt, -size), ack, wnd, os.urandom(size)))
        else:
            frames.append(Frame(nxt, ack, wnd, flags="FA"))
    return frames


@hypothesis_budget(0.5, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=_ITEMS, in_flight=st.integers(0, 2000))
def test_c_takes_exactly_what_the_core_calls_steady_and_ends_in_the_same_state(
        rig, conn, items, in_flight):
    """Any batch of one connection's segments: C takes exactly the leading runs the core
    takes as steady; afterwards SND.UNA, RCV.NXT and the guest's window agree, the host peer
    got exactly those runs' bytes, and C sent one ACK for RCV.NXT exactly when the core has
    one due."""
    ours, peer = conn
    frames = _frames(items, in_flight)
    core_conn = _core(in_flight)
    want_frames, want_bytes = _steady_runs(core_conn, _runs(frames))

    r = rig()
    r.rx.add_rx_buffers(64, 4096)
    w = Wait()
    try:
        kick = register(w, r, ours, seq=seq_add(SEQ0, in_flight), una=SEQ0, wnd=WND0, ws=WS)
        for f in frames:
            r.tx.add_tx_buffer(f.wire(), bytes(HDR))
        os.eventfd_write(kick, 1)
        w.poll(0)
        got_frames = len(r.tx.pop_used())
        s = take(w, ours)
        acks = [frame for _hdr, frame, _n in r.rx_frames()]
        os.close(kick)
    finally:
        w.close()
    got_bytes = recv_exactly(peer, len(want_bytes)) if want_bytes else b""
    core_st = core_conn.st
    assert got_frames == want_frames, "C handed back at another frame than the core"
    assert got_bytes == want_bytes
    assert (s.una, s.tmpl.ack, s.tmpl.seq) == (core_st.seq_acked_by_guest,
                                               core_st.seq_from_guest, core_st.seq_to_guest)
    assert s.wnd_from_guest == core_st.wnd_from_guest
    assert s.back == 0
    # The round's ACK: C sends it at once, the core has it due for the batch's end.
    assert len(acks) == (1 if core_conn.ack_due else 0)
    for frame in acks:
        assert int.from_bytes(frame[14 + 20 + 8:14 + 20 + 12], "big") == core_st.seq_from_guest
