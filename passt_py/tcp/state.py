# SPDX-License-Identifier: MIT
"""The guest-side state of one TCP connection: what migration carries, and its life phases.

A record of plain values and nothing else: the connection core (passt_py.tcp.conn) changes it,
migration exports and rebuilds it (passt_py.migrate), and its wire schema (``WIRE``) keeps the
stream format independent of attribute names.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from passt_py.migrate.record import WireField
from passt_py.tcp.seg import MSS_DEFAULT4

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class Phase(enum.IntEnum):
    """Where the connection is in its life (values are part of the migration format)."""

    CONNECTING = 1      # guest SYN seen, host connect() in progress
    SYNACK_SENT = 2     # host connected, our SYN-ACK to the guest not yet acknowledged
    SYN_SENT = 3        # accepted on a -t port, our SYN to the guest not yet answered
    ESTABLISHED = 4
    CLOSED = 5


@dataclass
class TcpState:
    """The guest-side state of one connection: everything migration must carry.

    Sequence fields are absolute 32-bit numbers on the guest-side connection. Host-side
    sequence numbers belong to the socket (TCP_REPAIR moves them).

    - ``version``, ``guest_addr``/``guest_port``: the guest's end; ``our_addr``/``our_port``:
      the address and port the guest talks to; ``inbound``: started from the host (-t).
    - ``seq_to_guest``: next sequence number we send (SND.NXT); ``seq_acked_by_guest``: the
      guest's last acknowledgement (SND.UNA). Bytes in between are in flight, still in the
      socket's receive queue at peek offsets 0..in-flight.
    - ``seq_from_guest``: next sequence number expected from the guest (RCV.NXT);
      ``seq_acked_to_guest``: the acknowledgement we last sent.
    - ``isn_ours`` / ``isn_guest``: initial sequence numbers (diagnostics).
    - ``wnd_from_guest``: the guest's window in bytes (already scaled);
      ``wnd_to_guest``: the window we last advertised, in bytes.
    - ``ws_from_guest`` / ``ws_to_guest``: window scale shifts (0 when not negotiated).
    - ``mss_guest``: the guest's MSS (our segments to it are at most this, and the MTU's).
    - ``guest_fin``: FIN received from the guest (host socket shut for writing);
      ``host_eof``: host peer's end of stream seen; ``fin_sent``/``fin_acked``: our FIN to
      the guest (it occupies the sequence number just before seq_to_guest once sent).
    - ``timestamps``: always False, the timestamps option is never negotiated with the guest.
    """

    version: int
    guest_addr: IPAddr
    guest_port: int
    our_addr: IPAddr
    our_port: int
    inbound: bool
    phase: Phase = Phase.CONNECTING
    seq_to_guest: int = 0
    seq_acked_by_guest: int = 0
    seq_from_guest: int = 0
    seq_acked_to_guest: int = 0
    isn_ours: int = 0
    isn_guest: int = 0
    wnd_from_guest: int = 0
    wnd_to_guest: int = 0
    ws_from_guest: int = 0
    ws_to_guest: int = 0
    mss_guest: int = MSS_DEFAULT4
    guest_fin: bool = False
    host_eof: bool = False
    fin_sent: bool = False
    fin_acked: bool = False
    timestamps: bool = False

    #: Wire schema (passt_py.migrate.record): ids never change or get reused.
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField(1, "version"), WireField(2, "guest_addr"), WireField(3, "guest_port"),
        WireField(4, "our_addr"), WireField(5, "our_port"), WireField(6, "inbound"),
        WireField(7, "phase"), WireField(8, "seq_to_guest"),
        WireField(9, "seq_acked_by_guest"), WireField(10, "seq_from_guest"),
        WireField(11, "seq_acked_to_guest"), WireField(12, "isn_ours"),
        WireField(13, "isn_guest"), WireField(14, "wnd_from_guest"),
        WireField(15, "wnd_to_guest"), WireField(16, "ws_from_guest"),
        WireField(17, "ws_to_guest"), WireField(18, "mss_guest"), WireField(19, "guest_fin"),
        WireField(20, "host_eof"), WireField(21, "fin_sent"), WireField(22, "fin_acked"),
        WireField(23, "timestamps"))
