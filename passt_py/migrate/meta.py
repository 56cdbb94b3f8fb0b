# SPDX-License-Identifier: MIT
"""The sections migration owns itself: META (who wrote the stream, flow counts, the
configuration fingerprint) and GUEST (what we knew of the guest).

META comes first in every version: the target checks the fingerprint against its own
configuration and the flow counts against its table before any flow section is parsed, and
the flow sections check their record counts against META's.
"""
from __future__ import annotations

import errno
import logging
import struct

import passt_py
from passt_py.link.netview import GuestState
from passt_py.migrate.codec import SEC_GUEST, SEC_META, U16, MigrationError, Reader
from passt_py.migrate.context import (Loaded, Meta, MigrationContext, Report, Saved,
                                      describe_fingerprint, fingerprint)
from passt_py.migrate.record import pack_addr, pack_text
from passt_py.migrate.section import Section

log = logging.getLogger(__name__)

IMPLEMENTATION = "passt-py"
_COUNTS = struct.Struct("!III")


def _impl_version() -> str:
    """Our version, for the META section (informational)."""
    return str(getattr(passt_py, "__version__", "unknown"))


def _save_meta(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """META: who writes, the flow counts, the configuration fingerprint."""
    fp = fingerprint(ctx.view)
    return [pack_text(IMPLEMENTATION) + pack_text(_impl_version())
            + _COUNTS.pack(len(saved.ping), len(saved.udp), len(saved.tcp))
            + U16.pack(len(fp)) + fp]


def _parse_meta(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """META: who wrote the stream, flow counts, and the fingerprint we must share."""
    impl = r.text()
    version = r.text()
    counts = r.unpack(_COUNTS)
    fp = bytes(r.take(r.u16()))
    r.end()
    ours = fingerprint(ctx.view)
    if fp != ours:
        raise MigrationError(errno.EINVAL, "meta",
                             f"configuration mismatch: source has {describe_fingerprint(fp)}; "
                             f"this back-end has {describe_fingerprint(ours)}")
    total = sum(counts)
    if total > ctx.flows.max_flows:
        raise MigrationError(errno.E2BIG, "meta", f"{total} flows announced, this back-end "
                             f"holds at most {ctx.flows.max_flows}")
    out.meta = Meta(impl, version, counts, fp)
    log.info("migration: stream from %s %s: %d ping, %d UDP, %d TCP flows", impl, version,
             *counts)


def _save_guest(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """GUEST: the guest's MAC and the addresses we saw it use."""
    g = ctx.guest
    return [g.mac + bytes([int(g.arp_answered)]) + pack_addr(g.addr4) + pack_addr(g.addr6)
            + pack_addr(g.addr6_ll)]


def _parse_guest(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """GUEST: MAC, ARP flag, addresses."""
    mac = bytes(r.take(6))
    flags = r.u8()
    addr4, addr6, addr6_ll = r.addr(), r.addr(), r.addr()
    r.end()
    if (addr4 is not None and addr4.version != 4) or (addr6 is not None and addr6.version != 6) \
            or (addr6_ll is not None and addr6_ll.version != 6):
        raise r.fail("address of the wrong family")
    out.guest = GuestState(mac=mac, addr4=addr4, addr6=addr6,  # type: ignore[arg-type]
                           addr6_ll=addr6_ll, arp_answered=bool(flags & 1))


def _apply_guest(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """What we knew of the guest, so no ARP/NDP round is needed before traffic flows."""
    g = out.guest
    assert g is not None
    ctx.guest.mac, ctx.guest.addr4 = g.mac, g.addr4
    ctx.guest.addr6, ctx.guest.addr6_ll = g.addr6, g.addr6_ll
    ctx.guest.arp_answered = g.arp_answered


META = Section("meta", SEC_META, False, _save_meta, _parse_meta)
GUEST = Section("guest", SEC_GUEST, False, _save_guest, _parse_guest,
                _apply_guest)
