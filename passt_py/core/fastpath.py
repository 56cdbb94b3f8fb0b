# SPDX-License-Identifier: MIT
"""Readiness events the C core handles inside the loop's wait (csrc/fast_api.c,
csrc/fastpath.c, csrc/fast_udp.c, csrc/fast_tcp.c).
"""
from __future__ import annotations

import errno
import ipaddress
from typing import Any

from passt_py.core._lib import _ip16, check, ffi, lib
from passt_py.core.udp_path import UdpTemplates
from passt_py.core.virtq import Virtqueue


class FastPath:
    """Readiness events the C core handles inside the loop's wait (csrc/fastpath.c).

    poll() replaces epoll's poll(): a readable socket of a registered UDP flow has its
    datagrams delivered into the RX ring, a TX kick whose frames are datagrams of registered
    tuples has them sent, without a return to Python; the other events come back as
    (fd, mask) pairs, a socket error C met as EPOLLERR. Entries are a cache of Python's flow
    table: add them for flows that may take this path, remove them before the socket closes.
    The rings given to set_rx()/set_tx() are kept referenced until replaced.
    """

    def __init__(self, max_entries: int, max_events: int = 256) -> None:
        self._f = ffi.gc(lib.pc_fast_new(max_entries), lib.pc_fast_free)
        if self._f == ffi.NULL:
            raise MemoryError("pc_fast_new")
        self._out = ffi.new("struct pc_fast_event[]", max_events)
        self._max = max_events
        self._rx: Virtqueue | None = None        # referenced while C holds the ring
        self._tx: Virtqueue | None = None
        self._key = (ffi.new("uint8_t[16]"), ffi.new("uint8_t[16]"))
        self.gen = 0        # bumped by clear(): entries added before it are gone

    def set_rx(self, ring: "Virtqueue | None", hdr_len: int = 12, mergeable: bool = True,
               opts: int = 0, batch: int = 64) -> None:
        """Deliver into ``ring`` (running and enabled), or into nothing (None)."""
        self._rx = ring
        lib.pc_fast_set_rx(self._f, ring._vq if ring is not None else ffi.NULL, hdr_len,
                           1 if mergeable else 0, opts, batch)

    def set_tx(self, ring: "Virtqueue | None", kick_fd: int = -1) -> None:
        """Drain ``ring`` (running and enabled) on its kick fd's events, or nothing (None)."""
        self._tx = ring
        lib.pc_fast_set_tx(self._f, ring._vq if ring is not None else ffi.NULL,
                           kick_fd if ring is not None else -1)

    @staticmethod
    def _added(ret: int, what: str) -> bool:
        """An add call's result: True, False for a full table, CoreError otherwise."""
        if ret == -errno.ENOSPC:
            return False
        check(ret, what)
        return True

    def add_rx(self, fd: int, tmpls: UdpTemplates) -> bool:
        """Deliver ``fd``'s datagrams with ``tmpls``' first template; False if full."""
        return self._added(lib.pc_fast_add_rx(self._f, fd, tmpls.c), "fast_add_rx")

    def _tuple(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
               dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[object, object]:
        a, b = self._key
        ffi.memmove(a, _ip16(src), 16)
        ffi.memmove(b, _ip16(dst), 16)
        return a, b

    def _by_tuple(self, fn: Any, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                  dport: int) -> int:
        """A count-returning call on a tuple's entry (0 without one)."""
        a, b = self._tuple(src, dst)
        return max(0, fn(self._f, src.version, a, b, sport, dport))

    def add_tx(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
               dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int,
               fd: int) -> bool:
        """Send the guest's datagrams src:sport -> dst:dport on ``fd``; False if full."""
        a, b = self._tuple(src, dst)
        return self._added(lib.pc_fast_add_tx(self._f, src.version, a, b, sport, dport, fd),
                           "fast_add_tx")

    def remove_rx(self, fd: int) -> int:
        """Forget ``fd``'s entry; datagrams delivered since last counted (0 if none)."""
        return max(0, lib.pc_fast_remove_rx(self._f, fd))

    def remove_tx(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                  dport: int) -> int:
        """Forget a tuple's entry; datagrams sent since last counted (0 if none)."""
        return self._by_tuple(lib.pc_fast_remove_tx, src, dst, sport, dport)

    def rx_count(self, fd: int) -> int:
        """Datagrams delivered from ``fd`` since the last call (0 without an entry)."""
        return max(0, lib.pc_fast_rx_count(self._f, fd))

    def tx_count(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                 dport: int) -> int:
        """Guest datagrams of a tuple sent since the last call (0 without an entry)."""
        return self._by_tuple(lib.pc_fast_tx_count, src, dst, sport, dport)

    def clear(self, epfd: int) -> None:
        """Forget every entry (muted sockets are restored in ``epfd`` first)."""
        check(lib.pc_fast_clear(self._f, epfd), "fast_clear")
        self.gen += 1

    def rx_ready(self, epfd: int) -> int:
        """The guest added RX buffers: sockets muted for lack of them are watched again."""
        return lib.pc_fast_rx_ready(self._f, epfd)

    def stats(self) -> Any:
        """Counters (struct pc_fast_stats): datagrams each way, dropped, events handled and
        reported, entries, muted sockets."""
        out = ffi.new("struct pc_fast_stats *")
        lib.pc_fast_stats(self._f, out)
        return out

    # ---- TCP connections (csrc/fast_tcp.c) ----
    def set_tcp(self, opts4: int, opts6: int, per_event: int, max_window: int) -> None:
        """RX options (TCP_RX_*: GSO, checksums) per IP version, host bytes per connection
        and event, the largest window offered."""
        lib.pc_fast_set_tcp(self._f, opts4, opts6, per_event, max_window)

    @staticmethod
    def tcp_state() -> Any:
        """A zeroed struct pc_fast_tcp, to fill for add_tcp() or receive remove_tcp()'s."""
        return ffi.new("struct pc_fast_tcp *")

    def add_tcp(self, state: Any) -> bool:
        """Run an established connection's steady state in C; False if a table is full."""
        return self._added(lib.pc_fast_add_tcp(self._f, state), "fast_add_tcp")

    def remove_tcp(self, fd: int, out: Any) -> bool:
        """Take ``fd``'s connection back into ``out``; False if C did not hold it."""
        return lib.pc_fast_remove_tcp(self._f, fd, out) == 0

    def tcp_events(self, fd: int) -> int:
        """Events C handled for ``fd``'s connection since the last call (0 without one)."""
        return max(0, lib.pc_fast_tcp_events(self._f, fd))

    def poll(self, epfd: int, timeout: float) -> list[tuple[int, int]]:
        """Like epoll's poll(timeout) (seconds, negative: no limit): the events C left."""
        ms = -1 if timeout < 0 else int(timeout * 1000 + 0.999)
        n = check(lib.pc_fast_poll(self._f, epfd, ms, self._out, self._max), "fast_poll")
        out = self._out
        return [(out[i].fd, out[i].events) for i in range(n)]


FAST_EV_BACK = lib.PC_FAST_EV_BACK
FAST_BACK_ACK = lib.PC_FAST_BACK_ACK
FAST_BACK_H2G = lib.PC_FAST_BACK_H2G
FAST_BACK_FULL = lib.PC_FAST_BACK_FULL
FAST_BACK_ERR = lib.PC_FAST_BACK_ERR
FAST_BACK_TIMER = lib.PC_FAST_BACK_TIMER


def tcp_send_window(fd: int, local: bool, max_window: int) -> int:
    """The window to offer the guest on socket ``fd`` (see pc_tcp_send_window())."""
    return lib.pc_tcp_send_window(fd, 1 if local else 0, max_window)


def tcp_sndbuf_limit(sndbuf: int) -> int:
    """How much the guest may queue in a socket of SO_SNDBUF ``sndbuf``."""
    return lib.pc_tcp_sndbuf_limit(sndbuf)
