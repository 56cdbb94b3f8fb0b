# SPDX-License-Identifier: MIT
"""Host socket helpers for TCP: addresses, buffer sizes, MSS, where the peer is.

Plain functions over sockets and addresses, shared by the connection opener (passt_py.tcp.open),
the listeners and the handler; nothing here knows about flows or the guest.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

from passt_py.tcp.state import IPAddr

SNDBUF_BIG = 4 << 20        # net.core.wmem_max from which sockets get a big send buffer...
RCVBUF_BIG = 2 << 20        # ...and rmem_max from which a big receive buffer (as passt does)...
BUF_HEADROOM = 8            # ...an eighth below the limit: a migration target can rebuild it
SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)
ET = 1 << 31                # EPOLLET
LINGER0 = struct.pack("ii", 1, 0)


def sockaddr(addr: IPAddr, port: int) -> tuple[object, ...]:
    """The address tuple socket calls take for ``addr``:``port``."""
    return (str(addr), port) if addr.version == 4 else (str(addr), port, 0, 0)


def addr_of(name: tuple[object, ...]) -> tuple[IPAddr, int]:
    """(address, port) of a socket address tuple (a scope suffix dropped)."""
    return ipaddress.ip_address(str(name[0]).partition("%")[0]), int(name[1])  # type: ignore


def _sysctl_int(path: str) -> int:
    """An integer sysctl, 0 if unreadable."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def big_buffers() -> tuple[int, int]:
    """The send / receive buffer sizes to ask for where the system allows big ones
    (net.core.wmem_max and rmem_max), else 0 (autotuning): then every connection gets a big
    one from the start, as passt does. Autotuning grows a buffer only after it was found
    full, and each time the send buffer is full the guest's data past it is refused and must
    be resent.

    Not quite the largest: BUF_HEADROOM of the limit is left, so that a full queue can be
    rebuilt on a migration target with the same limits and no CAP_NET_ADMIN (no forced
    sizes). A target refills the queue in its own segments, whose overhead differs a little
    from the source's: a queue that filled a buffer at the limit does not fit in one
    (measured: 8.27 MB queued in an 8 MiB buffer, EAGAIN on restore)."""
    wmem, rmem = (_sysctl_int(f"/proc/sys/net/core/{n}") for n in ("wmem_max", "rmem_max"))
    return (wmem - wmem // BUF_HEADROOM if wmem >= SNDBUF_BIG else 0,
            rmem - rmem // BUF_HEADROOM if rmem >= RCVBUF_BIG else 0)


def is_loopback(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A loopback destination, IPv4-mapped ones included."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def clamp_mss(sock: socket.socket, mss: int) -> None:
    """The guest's MSS for the host side too, before connect() (it only shapes a handshake
    still to come), so that a remote peer sees the segment size the guest would have used.
    Not for a peer on this host: there is no path to fit, and loopback segments of a
    1500-byte MTU's MSS cost the kernel about twice the CPU per byte (measured: tcp-tx at MTU
    1500 with the guest's TSO, 16 Gbit/s at 0.44 s/GB clamped, 31 at 0.24 not)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, max(88, mss))
    except OSError:
        pass


def peer_is_local(peer: IPAddr, ours: IPAddr) -> bool:
    """The host peer is on this host: a loopback address, or our own address (the kernel
    picks the destination itself as source when we connect to one of our addresses)."""
    return is_loopback(peer) or peer == ours
