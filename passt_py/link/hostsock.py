# SPDX-License-Identifier: MIT
"""Host-socket options the configuration asks for: the outbound source and freebind.

Theory of operation: a guest-initiated flow (the guest's TCP SYN, its first UDP datagram or
echo request) gets a host socket that normally leaves the source to the kernel's routing.
With ``-o ADDR`` the socket is bound to ADDR first, and with ``--outbound-if4/6 IF`` it is
tied to IF (SO_BINDTODEVICE), each per address family: an IPv4 setting for IPv4 flows, an
IPv6 one for IPv6 flows. Flows to the host's loopback (the guest reaching the host through
map_host_loopback) are left alone, since a loopback peer cannot be reached from another
device's address or through another device.

``--freebind`` sets IP_FREEBIND / IPV6_FREEBIND on the -t/-u listening sockets, so a forward
may bind an address the host does not have (yet), e.g. one a later interface brings.
"""
from __future__ import annotations

import ipaddress
import socket

from passt_py.link import fwd
from passt_py.link.netview import NetView

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

#: From <linux/in.h> and <linux/in6.h>; Python's socket module does not name them.
IP_FREEBIND = 15
IPV6_FREEBIND = 78


def outbound_source(view: NetView, target: IPAddr) -> tuple[IPAddr | None, str | None]:
    """(bind address, device) for a guest-initiated flow's socket towards ``target``:
    from -o and --outbound-if4/6 of ``target``'s family; (None, None) when not configured
    or ``target`` is on the host's loopback."""
    fam = fwd.family_view(view, target.version)
    if fam is None or target.is_loopback:
        return None, None
    return fam.outbound, fam.outbound_if


def host_sockaddr(addr: IPAddr, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    """The socket-module address tuple for ``addr``:``port``."""
    return (str(addr), port) if addr.version == 4 else (str(addr), port, 0, 0)


def bind_outbound(sock: socket.socket, view: NetView, target: IPAddr, port: int = 0,
                  always: bool = False) -> None:
    """Tie ``sock`` (not yet bound) to the configured outbound device and bind it to the
    configured outbound address (the wildcard without one) and ``port``; without an address
    or port to set the bind is left to connect(), unless ``always``. Raises OSError."""
    addr, dev = outbound_source(view, target)
    if dev is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    if addr is not None or port or always:
        src = addr if addr is not None else fwd.unspecified(target.version)
        sock.bind(host_sockaddr(src, port))


def set_freebind(sock: socket.socket, version: int) -> None:
    """Let ``sock`` bind an address the host does not have (--freebind). Raises OSError."""
    if version == 4:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
