# SPDX-License-Identifier: MIT
"""The TCP connection core: one connection's rules as events in, actions out (sans-IO).

Theory of operation: :class:`TcpConn` owns a connection's guest-side state (:class:`TcpState`)
and the protocol bookkeeping around it (retries, RTO, duplicate ACKs, probes, what is due at
the batch's end), and nothing else: no socket, no ring, no clock, no loop. Each event method
changes the state and returns the actions the caller must carry out, in order:

- events from the guest: :meth:`segment` (one parsed segment, any phase), :meth:`run_ack` (the
  ACK field and window of an in-order data run taken from a TX batch), :meth:`host_took` (what
  the socket accepted of the guest data :meth:`segment` or the run asked to send);
- events from the host: :meth:`connected` (connect() finished), :meth:`host_eof`,
  :meth:`writable`, :meth:`delivered` (what the data path moved to the guest and why it
  stopped);
- events from time: :meth:`timeout`.

The actions (tuples whose first item is one of the ``A_*`` codes) are the only way the core
reaches the world, so every path uses the same rules: the copying path and the ring path in
passt_py.tcp.handler execute them, and csrc/fast_tcp.c implements exactly the subset a
connection in the steady state needs (:meth:`steady`, :meth:`run_verdict`), which
tests/test_tcp_conn_differential.py checks against this module.

Sequence numbers in actions are resolved when the action is made, so the caller may run them
after the core has moved on; the window field of a control segment is the caller's (it asks
the host socket), unless the action gives it.
"""
from __future__ import annotations

from passt_py.tcp.copy import STOP_AGAIN, STOP_DRAINED, STOP_EOF, STOP_NOBUFS, STOP_WINDOW
from passt_py.tcp.seg import (ACK, FIN, MSS_DEFAULT4, MSS_DEFAULT6, RST, SYN, TcpSegment,
                              seq_add, seq_diff, syn_options)
from passt_py.tcp.state import Phase, TcpState

RTO_INITIAL = 1.0           # RFC 6298 2.1 (we take no RTT samples: the link is local)
RTO_MAX = 60.0              # RFC 6298 2.5
MAX_RETRIES = 6             # then RST both ways (1+2+4+8+16+32+60 s at the defaults)
DUP_ACKS = 3                # RFC 5681 3.2
GAP_ACKS = 3                # duplicate ACKs for gaps, per connection and TX batch
WS_OURS = 8                 # our window scale: windows up to 16 MiB
MAX_WINDOW = 0xFFFF << WS_OURS

# Actions: (code, arguments...). Carried out in order by the caller.
A_CONTROL = 1       # (A_CONTROL, flags, seq, ack, opts, wnd): a segment without payload;
                    # wnd: the window in bytes to offer, WND_SOCKET (ask the socket),
                    # WND_SYN or WND_NONE (see below)
A_QUEUE_ACK = 2     # (A_QUEUE_ACK,): one ACK at the batch's end
A_ARM = 3           # (A_ARM, delay): (re)arm the connection's timer
A_DISARM = 4        # (A_DISARM,)
A_DISCARD = 5       # (A_DISCARD, n): n acknowledged bytes leave the socket now
A_REWIND = 6        # (A_REWIND,): peek offset back to zero (go back to SND.UNA)
A_CLOSE = 7         # (A_CLOSE, rst_host): forget the connection; RST the host peer or not
A_RESET = 8         # (A_RESET,): RST to the guest and to the host peer, then forget it
A_SEND = 9          # (A_SEND, data): write guest payload to the socket, then host_took()
A_SHUT_WR = 10      # (A_SHUT_WR,): the guest's FIN: shutdown(SHUT_WR) the socket
A_TO_GUEST = 11     # (A_TO_GUEST,): move host data to the guest now (then delivered())
A_BATCH_END = 12    # (A_BATCH_END,): look at the connection again at the batch's end
A_RX_WAIT = 13      # (A_RX_WAIT,): no RX buffers: resume on the guest's RX kick
A_MORE = 14         # (A_MORE,): come back for more host data after the others' turn
A_TRACE = 15        # (A_TRACE, message): a per-connection trace line
A_RETRANSMIT = 16   # (A_RETRANSMIT,): count one retransmission (the caller's statistics)

# The window field of a control segment.
WND_SOCKET = None   # what the host socket lets us offer (and record it as advertised)
WND_SYN = -1        # a SYN's: the socket's offer, unscaled, capped at 0xffff, not recorded
WND_NONE = -2       # an RST's: zero, not recorded

# Per-connection statistics (TcpConn.stats indices).
S_TO_HOST, S_TO_GUEST, S_TIMEOUTS, S_FAST_RETRANSMITS, S_SOCKET_FULL, S_RX_FULL, \
    S_OUT_OF_ORDER = range(7)

Action = tuple
Actions = list[Action]


_NONE: Actions = []


def default_mss(version: int) -> int:
    """RFC 9293 3.7.1: the MSS to assume when the peer's SYN gives none."""
    return MSS_DEFAULT4 if version == 4 else MSS_DEFAULT6


class ConnRecord:
    """One connection's state and the primitives its rules build actions with: the record
    TcpConn's rules change, kept apart from them so each reads on its own."""

    __slots__ = ("st", "our_mss", "seg_size", "rto0", "max_retries", "retries", "rto",
                 "armed", "dup_acks", "recovering", "probe", "ack_due", "send_full",
                 "last_wnd_raw", "gap_acks", "discard_due", "wnd_poll", "more_due",
                 "rx_wait", "stats")

    def __init__(self, st: TcpState, our_mss: int, rto0: float = RTO_INITIAL,
                 max_retries: int = MAX_RETRIES) -> None:
        self.st = st
        self.our_mss = our_mss                  # what the MTU allows us to send per segment
        self.seg_size = min(st.mss_guest, our_mss)
        self.rto0 = rto0
        self.max_retries = max_retries
        self.retries = 0
        self.rto = rto0
        self.armed = False                      # a retransmission/probe/connect deadline
        self.dup_acks = 0
        self.recovering = False                 # fast retransmit done, waiting for progress
        self.probe = False                      # guest's window is closed, data waits
        self.ack_due = False
        self.send_full = False                  # the socket refused data: window closed
        self.last_wnd_raw = -1
        self.gap_acks = 0                       # duplicate ACKs for gaps in this batch
        self.discard_due = 0                    # acknowledged bytes still in the socket
        self.wnd_poll = False                   # our advertised window was closed
        self.more_due = False                   # host data left after this event's share
        self.rx_wait = False                    # RX ring full: wait for the guest's kick
        self.stats = [0] * 7                    # S_* counters (the close log line)

    # ---- small helpers ----
    def in_flight(self) -> int:
        """Sequence numbers sent to the guest and not acknowledged (our FIN included)."""
        return seq_diff(self.st.seq_to_guest, self.st.seq_acked_by_guest)

    def _space(self) -> int | None:
        """The window to offer when it does not depend on the socket, else None."""
        if self.st.guest_fin:
            return MAX_WINDOW   # nothing more is accepted anyway; keep the window open
        if self.send_full:
            return 0            # the socket refused data: closed until it reports room
        return None

    def control(self, flags: int, seq: int | None = None, opts: bytes = b"",
                wnd: int | None = WND_SOCKET) -> Action:
        """A control segment action, its numbers resolved now."""
        st = self.st
        ack = st.seq_from_guest if flags & ACK else 0
        if flags & RST:
            wnd = WND_NONE
        elif wnd is WND_SOCKET:
            wnd = self._space()
        return (A_CONTROL, flags, st.seq_to_guest if seq is None else seq, ack, opts, wnd)

    def control_sent(self, flags: int, ack: int, wnd_raw: int) -> None:
        """The caller sent a control segment (or data) carrying ``ack`` and ``wnd_raw``."""
        if flags & ACK:
            self.st.seq_acked_to_guest = ack
            self.ack_due = False
            self.last_wnd_raw = wnd_raw

    def window_raw(self, space: int) -> int:
        """The raw window field for ``space`` bytes (recorded as what we advertised)."""
        st = self.st
        raw = min(0xFFFF, space >> st.ws_to_guest)
        st.wnd_to_guest = raw << st.ws_to_guest
        return raw

    def wants_window_poll(self, raw: int) -> bool:
        """Our window went to zero while the socket may drain without telling us: poll."""
        if raw == 0 and not self.st.guest_fin and not self.send_full and not self.wnd_poll:
            self.wnd_poll = True
            return True
        return False

    def _arm(self, delay: float) -> Action:
        self.armed = True
        return (A_ARM, delay)

    def _disarm(self) -> Action:
        self.armed = False
        return (A_DISARM,)

    def _progress(self) -> None:
        self.retries, self.rto = 0, self.rto0

    def steady(self) -> bool:
        """Established with nothing pending that only the full rules handle: no FIN either
        way, no refused data, closed window, retransmission or deferred work. Such a
        connection may be run by the steady-state rules alone (csrc/fast_tcp.c)."""
        st = self.st
        return (st.phase == Phase.ESTABLISHED
                and not (st.guest_fin or st.host_eof or st.fin_sent)
                and not (self.send_full or self.probe or self.recovering or self.wnd_poll)
                and not (self.dup_acks or self.more_due or self.ack_due
                         or self.discard_due or self.gap_acks)
                and self.last_wnd_raw > 0)

    def _queue_ack(self) -> Actions:
        self.ack_due = True
        return [(A_BATCH_END,)]

    def take_discard(self) -> int:
        """Acknowledged bytes to drop from the socket now (before a rewind, a migration or
        at the batch's end); 0 once closed."""
        n, self.discard_due = self.discard_due, 0
        return n if self.st.phase != Phase.CLOSED else 0


class TcpConn(ConnRecord):
    """One connection's protocol rules; see the module's theory of operation."""

    __slots__ = ()

    # ---- handshake ----
    def synack(self) -> Actions:
        """Our SYN-ACK to the guest (outbound connection), and its retransmission timer."""
        st = self.st
        opts = syn_options(self.our_mss, WS_OURS if st.ws_to_guest else None)
        return [self.control(SYN | ACK, seq=st.isn_ours, opts=opts, wnd=WND_SYN),
                self._arm(self.rto)]

    def syn(self) -> Actions:
        """Our SYN to the guest (inbound connection), and its retransmission timer."""
        st = self.st
        opts = syn_options(self.our_mss, WS_OURS)
        return [self.control(SYN, seq=st.isn_ours, opts=opts, wnd=WND_SYN),
                self._arm(self.rto)]

    def connected(self, err: int) -> Actions:
        """The host connect() finished (``err``: its SO_ERROR)."""
        if err:
            return [(A_RESET,)]
        self.st.phase = Phase.SYNACK_SENT
        self._progress()
        return self.synack()

    def segment(self, seg: TcpSegment) -> Actions:
        """One segment from the guest for this connection, in any phase."""
        phase = self.st.phase
        if phase == Phase.ESTABLISHED:
            return self._established(seg)
        if phase == Phase.SYNACK_SENT:
            return self._synack_sent(seg)
        if phase == Phase.SYN_SENT:
            return self._syn_sent(seg)
        if phase == Phase.CONNECTING and seg.flags & RST:
            return [(A_CLOSE, True)]
        return _NONE

    def _synack_sent(self, seg: TcpSegment) -> Actions:
        """Outbound: waiting for the guest's ACK of our SYN-ACK."""
        st = self.st
        if seg.flags & RST:
            return [(A_CLOSE, True)] if seg.seq == st.seq_from_guest else _NONE
        if seg.flags & SYN:
            if not seg.flags & ACK and seg.seq == st.isn_guest:
                return self.synack()        # our SYN-ACK was lost
            return _NONE
        if seg.ack != seq_add(st.isn_ours, 1):
            return [self.control(RST, seq=seg.ack)]
        st.phase = Phase.ESTABLISHED
        st.seq_to_guest = st.seq_acked_by_guest = seg.ack
        self._progress()
        return [self._disarm(), *self._established(seg)]

    def _syn_sent(self, seg: TcpSegment) -> Actions:
        """Inbound: waiting for the guest's SYN-ACK."""
        st = self.st
        want = seq_add(st.isn_ours, 1)
        if seg.flags & RST:
            return [(A_CLOSE, True)] if seg.flags & ACK and seg.ack == want else _NONE
        if seg.flags & (SYN | ACK) != SYN | ACK:
            return _NONE
        if seg.ack != want:
            return [self.control(RST, seq=seg.ack)]
        st.isn_guest = seg.seq
        st.seq_from_guest = seq_add(seg.seq, 1)
        st.seq_to_guest = st.seq_acked_by_guest = want
        st.mss_guest = seg.mss or default_mss(st.version)
        self.seg_size = min(st.mss_guest, self.our_mss)
        if seg.ws is not None:
            st.ws_from_guest, st.ws_to_guest = seg.ws, WS_OURS
        else:
            st.ws_from_guest = st.ws_to_guest = 0
        st.wnd_from_guest = seg.wnd             # never scaled in a SYN
        st.phase = Phase.ESTABLISHED
        self._progress()
        return [self._disarm(), self.control(ACK), (A_TO_GUEST,)]

    # ---- established: ACKs ----
    def _established(self, seg: TcpSegment) -> Actions:
        st = self.st
        if seg.flags & RST:
            d = seq_diff(seg.seq, st.seq_from_guest)
            return [(A_CLOSE, True)] if 0 <= d < max(st.wnd_to_guest, 1) else _NONE
        if seg.flags & SYN:
            return self._queue_ack()            # challenge ACK (RFC 5961 4.2)
        if not seg.flags & ACK:
            return _NONE
        if seq_diff(seg.ack, st.seq_to_guest) > 0:
            return self._queue_ack()            # acknowledges what we never sent
        out: Actions = []
        una_d = seq_diff(seg.ack, st.seq_acked_by_guest)
        if una_d > 0:
            self._acked(seg.ack, una_d, out)
        elif una_d == 0 and not seg.payload and not seg.flags & FIN and \
                self.in_flight() > 0 and seg.wnd << st.ws_from_guest == st.wnd_from_guest:
            self.dup_acks += 1
            if self.dup_acks == DUP_ACKS and not self.recovering:
                self.recovering = True
                self.stats[S_FAST_RETRANSMITS] += 1
                out.append((A_TRACE, f"fast retransmit from {seg.ack}"))
                out.append((A_RETRANSMIT,))
                out.extend(self._rewind())
        if una_d >= 0:
            self._window(seg.wnd)
        if seg.payload or seg.flags & FIN:
            out.extend(self._guest_data(seg))
            return out                          # the rest comes with host_took()
        if seq_diff(seg.seq, st.seq_from_guest) < 0:
            out.append(self.control(ACK))       # keepalive or old duplicate: answer it
        out.extend(self._after_segment())
        return out

    def _after_segment(self) -> Actions:
        st = self.st
        if st.guest_fin and st.fin_acked:
            return [(A_CLOSE, False)]
        return [(A_TO_GUEST,)]

    def _window(self, wnd: int) -> None:
        st = self.st
        st.wnd_from_guest = wnd << st.ws_from_guest
        if self.probe:
            self.retries = 0                    # the guest answers: keep probing
            if st.wnd_from_guest:
                self.probe = False

    def _acked(self, ack: int, n: int, out: Actions) -> None:
        """The guest acknowledged ``n`` more sequence numbers up to ``ack``."""
        st = self.st
        if st.fin_sent and ack == st.seq_to_guest and not st.fin_acked:
            st.fin_acked = True
            n -= 1
        if n > 0:
            # Dropped at the batch's end with its other ACKs: each discard that frees
            # receive space makes the kernel send the host peer a window update, one per
            # connection and batch rather than one per ACK.
            self.discard_due += n
            out.append((A_BATCH_END,))
        st.seq_acked_by_guest = ack
        self.dup_acks = 0
        self.recovering = False
        self._progress()
        out.append(self._arm(self.rto) if seq_diff(st.seq_to_guest, ack) > 0
                   else self._disarm())

    def run_verdict(self, seq: int, ack: int, pending: int = 0) -> bool:
        """Whether an in-order data run at ``seq`` acknowledging ``ack`` may be taken as it
        is: at RCV.NXT (after ``pending`` bytes taken earlier in the batch and not sent yet),
        acknowledging nothing we never sent, with no FIN received and no data refused."""
        st = self.st
        return (st.phase == Phase.ESTABLISHED and not st.guest_fin and not self.send_full
                and seq == seq_add(st.seq_from_guest, pending)
                and seq_diff(ack, st.seq_to_guest) <= 0)

    def ack_verdict(self, seq: int, ack: int, wnd: int) -> bool:
        """Whether a bare ACK at ``seq`` is the steady state's: at RCV.NXT, acknowledging
        nothing we never sent, nothing old, and not a duplicate (the same ACK and window with
        data in flight), which only the full rules count (fast retransmit)."""
        st = self.st
        if st.phase != Phase.ESTABLISHED or seq != st.seq_from_guest or \
                seq_diff(ack, st.seq_to_guest) > 0:
            return False
        una_d = seq_diff(ack, st.seq_acked_by_guest)
        return una_d > 0 or (una_d == 0 and not (
            self.in_flight() > 0 and wnd << st.ws_from_guest == st.wnd_from_guest))

    def run_ack(self, ack: int, wnd: int) -> Actions:
        """The ACK field and window of a data run taken from a TX batch (run_verdict())."""
        out: Actions = []
        una_d = seq_diff(ack, self.st.seq_acked_by_guest)
        if una_d > 0:
            self._acked(ack, una_d, out)
        if una_d >= 0:
            self._window(wnd)
        return out

    # ---- established: data from the guest ----
    def _guest_data(self, seg: TcpSegment) -> Actions:
        """In-order payload (and FIN) from the guest: what to write, or why not."""
        st = self.st
        data = seg.payload
        off = seq_diff(st.seq_from_guest, seg.seq)     # bytes of it we already have
        if off < 0 or st.guest_fin:
            # A gap (or data after FIN): duplicate ACKs, enough for a fast retransmit
            # (RFC 5681: three) but not one per segment: a batch often holds a whole flight
            # behind one loss, and a sender that halves its window per few duplicates
            # would collapse.
            self.stats[S_OUT_OF_ORDER] += 1
            if self.gap_acks < GAP_ACKS:
                self.gap_acks += 1
                return [(A_BATCH_END,), self.control(ACK), *self._after_segment()]
            return self._after_segment()
        if off > len(data) or (off == len(data) and not seg.flags & FIN):
            return [*self._queue_ack(), *self._after_segment()]     # old data or keepalive
        return [(A_SEND, data[off:], bool(seg.flags & FIN))]

    def host_took(self, n: int, wanted: int, fin: bool) -> Actions:
        """The socket accepted ``n`` of ``wanted`` bytes of guest data (then the guest's FIN,
        if ``fin``, is to be passed on)."""
        st = self.st
        st.seq_from_guest = seq_add(st.seq_from_guest, n)
        self.stats[S_TO_HOST] += n
        if n < wanted:
            self.stats[S_SOCKET_FULL] += 1
            # Full: the socket reports write space (EPOLLOUT edge) once it drains; until
            # then the window is closed. The guest resends what was not acknowledged.
            self.send_full = True
            return [self.control(ACK), *self._after_segment()]
        if fin:
            st.seq_from_guest = seq_add(st.seq_from_guest, 1)
            st.guest_fin = True
            return [(A_SHUT_WR,), self.control(ACK), *self._after_segment()]
        return [*self._queue_ack(), *self._after_segment()]

    def batch_end(self) -> Actions:
        """The batch is over: the acknowledged bytes leave, then one ACK if still due."""
        self.gap_acks = 0
        out: Actions = []
        n = self.take_discard()
        if n:
            out.append((A_DISCARD, n))
        if self.ack_due and self.st.phase == Phase.ESTABLISHED:
            out.append(self.control(ACK))
        return out

    # ---- from the host ----
    def host_eof(self) -> Actions:
        """The host peer's end of stream (noted in whatever phase it comes)."""
        if self.st.host_eof:
            return _NONE
        self.st.host_eof = True
        return [(A_TRACE, f"host end of stream ({self.st.phase.name}, "
                          f"{self.in_flight()} in flight)")]

    def writable(self) -> bool:
        """The socket has room again: whether our window may reopen (the caller then asks
        the socket and sends an ACK if it is open)."""
        if (self.last_wnd_raw == 0 or self.send_full) and not self.st.guest_fin:
            self.send_full = False
            return True
        return False

    def to_guest_limit(self, per_event: int) -> tuple[int, Actions]:
        """How many bytes of host data may go to the guest now (0: none, see actions)."""
        st = self.st
        if st.phase != Phase.ESTABLISHED or st.fin_sent or self.rx_wait:
            return 0, _NONE                 # rx_wait: the guest's RX kick brings us back
        in_flight = self.in_flight()
        room = st.wnd_from_guest - in_flight
        limit = min(room, per_event)
        if limit <= 0:
            if st.wnd_from_guest == 0 and in_flight == 0 and not self.probe:
                self.probe = True
                return 0, [self._arm(self.rto)]
            return 0, _NONE
        return limit, _NONE

    def delivered(self, n: int, stop: int, wnd_raw: int) -> Actions:
        """The data path moved ``n`` bytes to the guest (with our ACK and ``wnd_raw``) and
        stopped for ``stop``; the FIN follows the stream's last byte once it is acked."""
        st = self.st
        out: Actions = []
        if n > 0:
            self.stats[S_TO_GUEST] += n
            st.seq_to_guest = seq_add(st.seq_to_guest, n)
            self.control_sent(ACK, st.seq_from_guest, wnd_raw)
            if not self.armed:
                out.append(self._arm(self.rto))
        if stop == STOP_NOBUFS:
            if not self.rx_wait:            # resume on the RX kick, drop nothing
                self.stats[S_RX_FULL] += 1
                self.rx_wait = True
                out.append((A_RX_WAIT,))
            return out
        if (stop == STOP_AGAIN or stop == STOP_WINDOW and n > 0) and not self.more_due:
            # Bounded work per event: come back for the rest after the other connections
            # had their turn. AGAIN, even with nothing sent: the ring ran out but the guest
            # added buffers meanwhile (no kick for them).
            self.more_due = True
            out.append((A_MORE,))
            return out
        if stop == STOP_EOF or (st.host_eof and stop == STOP_DRAINED):
            # Every byte the host sent has been peeked (a rebuilt socket whose FIN came
            # before the migration never reports end of stream itself: host_eof says it).
            st.host_eof = True
            in_flight = self.in_flight()
            if in_flight == 0:
                out.append((A_TRACE, "FIN to the guest"))
                out.append(self.control(FIN | ACK))
                st.fin_sent = True
                st.seq_to_guest = seq_add(st.seq_to_guest, 1)
                out.append(self._arm(self.rto))
            else:                           # the guest's ACK of the rest brings us back
                out.append((A_TRACE, f"FIN after {in_flight} bytes in flight"))
        return out

    def steady_back(self, full: bool, ack: bool, to_guest: bool) -> Actions:
        """The steady state (C) handed the connection back: the socket refused data (our
        window closes), an ACK is due, or host data waits."""
        out: Actions = []
        if full:
            self.stats[S_SOCKET_FULL] += 1
            self.send_full = True
            out.append(self.control(ACK))
        elif ack:
            out.extend(self._queue_ack())
        if to_guest:
            out.append((A_TO_GUEST,))
        return out

    # ---- time ----
    def _rewind(self) -> Actions:
        """Go back to the guest's last ACK and send again (retransmission); the caller drops
        the acknowledged bytes first (take_discard()): peek offset 0 must be SND.UNA."""
        self.st.seq_to_guest = self.st.seq_acked_by_guest
        return [(A_REWIND,), self._arm(self.rto), (A_TO_GUEST,)]

    def timeout(self) -> Actions:
        """The connection's deadline passed: connect, handshake, retransmission or probe."""
        st = self.st
        self.armed = False
        if st.phase == Phase.CONNECTING:
            return [(A_TRACE, "host connect timed out"), (A_RESET,)]
        self.retries += 1
        self.stats[S_TIMEOUTS] += 1
        if self.retries > self.max_retries:
            return [(A_TRACE, "no answer from the guest, resetting"), (A_RESET,)]
        self.rto = min(self.rto * 2, RTO_MAX)
        if st.phase == Phase.SYNACK_SENT:
            return self.synack()
        if st.phase == Phase.SYN_SENT:
            return self.syn()
        if st.phase != Phase.ESTABLISHED:
            return _NONE
        in_flight = self.in_flight()
        if st.fin_sent and not st.fin_acked and in_flight == 1:
            return [(A_RETRANSMIT,), self.control(FIN | ACK, seq=st.seq_acked_by_guest),
                    self._arm(self.rto)]
        if in_flight > 0:
            return [(A_RETRANSMIT,), *self._rewind()]
        if self.probe:
            # Zero-window probe: an old sequence number makes the guest answer with an ACK
            # carrying its current window (RFC 9293 3.8.6.1).
            return [self.control(ACK, seq=seq_add(st.seq_to_guest, -1)), self._arm(self.rto)]
        return _NONE

    # ---- migration ----
    def adopted(self) -> Actions:
        """Rebuilt around a restored socket: resume from the guest's last ACK (frames in
        flight may have been lost with the old guest link)."""
        st = self.st
        if st.fin_sent and not st.fin_acked:
            st.seq_to_guest = seq_add(st.seq_acked_by_guest, 1)
            return [self._arm(self.rto)]
        st.seq_to_guest = st.seq_acked_by_guest
        st.fin_sent = st.fin_sent and st.fin_acked
        return _NONE
