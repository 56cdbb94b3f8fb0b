# SPDX-License-Identifier: MIT
"""What migration works on and hands around: the back-end's parts, the parsed stream, results.

:class:`MigrationContext` is the view of a running back-end that every section's save, parse
and apply receives (the service builds it; tests build their own). :class:`Saved` carries the
source's encoded flow records from the protocols to the sections that write them;
:class:`Loaded` carries what the target parsed and validated from a stream, before anything
changes; :class:`Report` says what a save or load did. :func:`fingerprint` is the
configuration both ends must share (the META section carries the source's).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from passt_py.flow import FlowTable
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import EventLoop
from passt_py.migrate import repair as tcp_repair
from passt_py.migrate.codec import MAX_STREAM, U32, MigrationError, Reader
from passt_py.migrate.record import pack_addr


@dataclass
class MigrationContext:
    """The parts of a running back-end that migration reads and rebuilds."""

    loop: EventLoop
    view: NetView
    guest: GuestState
    flows: FlowTable
    icmp: Any = None
    udp: Any = None
    tcp: Any = None
    repair: tcp_repair.RepairControl | None = None
    drop: tcp_repair.DropFilter = tcp_repair.CLASSIC    # the freeze (see DropFilter)
    udp_forwards: Any = None
    tcp_forwards: Any = None
    migrate_exit: bool = False
    migrate_no_linger: bool = False   # close the migrated TCP sockets at once (see TcpSource)
    max_stream: int = MAX_STREAM


def fingerprint(view: NetView) -> bytes:
    """What source and target must agree on: MTU, our MAC, the guest's addresses and routes."""
    out = bytearray(U32.pack(view.mtu) + view.our_mac)
    for fam in (view.ip4, view.ip6):
        if fam is None:
            out += b"\0"
            continue
        out += b"\1" + pack_addr(fam.addr) + bytes([fam.prefix_len]) + pack_addr(fam.gateway)
    return bytes(out)


def describe_fingerprint(raw: bytes) -> str:
    """A fingerprint in words, for the mismatch message."""
    try:
        r = Reader(raw, "meta")
        mtu = r.u32()
        mac = bytes(r.take(6))
        parts = [f"MTU {mtu}", "MAC " + ":".join(f"{b:02x}" for b in mac)]
        for name in ("IPv4", "IPv6"):
            if r.u8():
                addr = r.addr()
                plen = r.u8()
                gw = r.addr()
                parts.append(f"{name} {addr}/{plen} via {gw}")
            else:
                parts.append(f"no {name}")
        return ", ".join(parts)
    except MigrationError:
        return "(unreadable)"


@dataclass
class Meta:
    """The META section."""

    implementation: str
    impl_version: str
    counts: tuple[int, int, int]          # ping, UDP, TCP flows
    fingerprint: bytes


@dataclass
class Loaded:
    """Everything parsed and validated from a stream, before anything is applied."""

    version: int = 0
    meta: Meta | None = None
    guest: GuestState | None = None
    ping: list[Any] = field(default_factory=list)
    udp: list[Any] = field(default_factory=list)
    tcp: list[tuple[Any, tcp_repair.TcpSockState]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


@dataclass
class Report:
    """What a save or load did, for logs, tests and benchmarks."""

    ping: int = 0
    udp: int = 0
    tcp: int = 0
    failed: int = 0
    unrepairable: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: Target: restored TCP sockets waiting for activation (state record, socket state,
    #: socket).
    pending: list[tuple[Any, tcp_repair.TcpSockState, socket.socket]] = field(
        default_factory=list)
    #: Target: TCP connections that could not be rebuilt (state records), whose guest end is
    #: reset on activation so the guest's application learns at once.
    lost: list[Any] = field(default_factory=list)


@dataclass
class Saved:
    """The source's encoded flow records, from which each section is written (the field
    names are the sections' names)."""

    ping: list[bytes] = field(default_factory=list)
    udp: list[bytes] = field(default_factory=list)
    tcp: list[bytes] = field(default_factory=list)   # per connection: state + socket record
