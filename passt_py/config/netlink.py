# SPDX-License-Identifier: MIT
"""Host discovery over rtnetlink (pyroute2): which interface, address, gateway and MTU to copy.

passt gives the guest the host's own addressing, so the guest's defaults come from the host: per
address family, the interface holding the default route (or the one named with -i), its first
global address with prefix length, the default gateway through it, its link-local address (IPv6)
and its MTU. Without a default route, as passt does, the first interface other than loopback
with any route of that family stands in, with no gateway (the caller then disables the family,
but knows an interface exists). Only a family with no such interface at all is reported as None:
that is the empty namespace in which the caller starts in local mode.
Runs once at start-up; nothing here is on the packet path.

The query runs in a short-lived child process: importing pyroute2 costs about 20 MiB of resident
memory, which the back-end would otherwise carry for its whole life (half of it, idle).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pickle
import socket
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFF_LOOPBACK = 0x8

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DiscoveryError(Exception):
    """The host's network configuration could not be read or names a missing interface."""


@dataclass(frozen=True)
class HostIface:
    """What the host has for one address family on its outbound interface."""

    family: int
    ifindex: int
    ifname: str
    mtu: int
    addr: IpAddress | None
    prefix_len: int
    gateway: IpAddress | None
    addr_ll: ipaddress.IPv6Address | None = None


def _attr(msg: Any, name: str) -> Any:
    """An rtnetlink attribute, or None."""
    return msg.get_attr(name)


def _flags(msg: Any) -> int:
    """Address flags: IFA_FLAGS (32 bit) when present, else the header's 8-bit field."""
    value = msg.get_attr("IFA_FLAGS")
    return int(value) if value is not None else int(msg["flags"])


def _route_gateway(route: Any) -> tuple[IpAddress | None, int | None]:
    """(gateway, oif) of a route, taking the first hop of a multipath route."""
    gw = _attr(route, "RTA_GATEWAY")
    oif = _attr(route, "RTA_OIF")
    if gw is None and oif is None:
        hops = _attr(route, "RTA_MULTIPATH") or []
        for hop in hops:
            gw = hop.get_attr("RTA_GATEWAY")
            oif = hop["oif"]
            break
    return (ipaddress.ip_address(gw) if gw else None), oif


def _default_routes(ipr: Any, family: int) -> list[tuple[int, IpAddress | None, int]]:
    """Default routes of the main table as (oif, gateway, metric), best metric first."""
    found = []
    for route in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
        if route["dst_len"] != 0 or route["type"] != RTN_UNICAST:
            continue
        gw, oif = _route_gateway(route)
        if oif is None:
            continue
        found.append((oif, gw, int(_attr(route, "RTA_PRIORITY") or 0)))
    found.sort(key=lambda r: r[2])
    return found


def _routed_interface(ipr: Any, family: int) -> int | None:
    """Index of the first non-loopback interface with a unicast route of ``family`` in the
    main table (any destination), or None."""
    for route in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
        if route["type"] != RTN_UNICAST:
            continue
        _gw, oif = _route_gateway(route)
        if oif is None:
            continue
        links = ipr.get_links(oif)
        if links and not int(links[0]["flags"]) & IFF_LOOPBACK:
            return int(oif)
    return None


def _addresses(ipr: Any, family: int, ifindex: int) -> tuple[list[Any], list[Any]]:
    """(global, link-local) usable addresses on ``ifindex``, in kernel order."""
    glob, link = [], []
    for msg in ipr.get_addr(family=family, index=ifindex):
        if _flags(msg) & (IFA_F_DADFAILED | IFA_F_DEPRECATED):
            continue
        if msg["scope"] == RT_SCOPE_UNIVERSE:
            glob.append(msg)
        elif msg["scope"] == RT_SCOPE_LINK:
            link.append(msg)
    # Prefer stable addresses over privacy (temporary) ones.
    glob.sort(key=lambda m: bool(_flags(m) & IFA_F_TEMPORARY))
    return glob, link


def _link(ipr: Any, ifindex: int) -> tuple[str, int]:
    """(name, MTU) of a link."""
    msg = ipr.get_links(ifindex)[0]
    return str(msg.get_attr("IFLA_IFNAME")), int(msg.get_attr("IFLA_MTU"))


def lookup_ifindex(ipr: Any, ifname: str) -> int:
    """Index of interface ``ifname``; DiscoveryError if it does not exist."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise DiscoveryError(f"no such interface '{ifname}'")
    return int(found[0])


def _discover(ipr: Any, family: int, ifname: str | None) -> HostIface | None:
    """One family's HostIface, or None when the host has nothing usable for it."""
    routes = _default_routes(ipr, family)
    if ifname is not None:
        ifindex = lookup_ifindex(ipr, ifname)
        gateway = next((gw for oif, gw, _ in routes if oif == ifindex), None)
    elif routes:
        ifindex, gateway, _ = routes[0]
    else:
        found = _routed_interface(ipr, family)
        if found is None:
            return None
        ifindex, gateway = found, None
    name, mtu = _link(ipr, ifindex)
    glob, link = _addresses(ipr, family, ifindex)
    addr: IpAddress | None = None
    prefix_len = 0
    if glob:
        addr = ipaddress.ip_address(_attr(glob[0], "IFA_LOCAL") or _attr(glob[0], "IFA_ADDRESS"))
        prefix_len = int(glob[0]["prefixlen"])
    addr_ll = None
    if family == socket.AF_INET6 and link:
        addr_ll = ipaddress.IPv6Address(_attr(link[0], "IFA_ADDRESS"))
    return HostIface(family, ifindex, name, mtu, addr, prefix_len, gateway, addr_ll)


def discover(family: int, ifname: str | None = None) -> HostIface | None:
    """Host interface data for ``family`` (AF_INET or AF_INET6), from ``ifname`` or the default route."""
    found = _in_child(family, ifname)
    log.debug("host %s: %s", socket.AddressFamily(family).name, found)
    return found


def _query(family: int, ifname: str | None) -> HostIface | None:
    """The netlink query itself (in the child: see the module docstring)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        with IPRoute() as ipr:
            return _discover(ipr, family, ifname)
    except NetlinkError as e:
        raise DiscoveryError(f"netlink query failed: {e}") from e
    except OSError as e:
        raise DiscoveryError(f"cannot talk to netlink: {e}") from e


def _in_child(family: int, ifname: str | None) -> HostIface | None:
    """Run :func:`_query` in a forked child and bring its answer (or error) back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                        # child: answer, then leave at once
        code = 0
        try:
            os.close(r)
            try:
                answer: tuple[str, Any] = ("ok", _query(family, ifname))
            except DiscoveryError as e:
                answer = ("error", str(e))
            except Exception as e:  # noqa: BLE001 - reported by the parent
                answer = ("error", f"host discovery failed: {e!r}")
            data = pickle.dumps(answer)
            while data:
                data = data[os.write(w, data):]
        except BaseException:  # noqa: BLE001 - never return into the parent's code
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    try:
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    try:
        kind, value = pickle.loads(b"".join(chunks))
    except Exception as e:  # noqa: BLE001 - a child that died says nothing usable
        raise DiscoveryError(f"host discovery process failed: {e!r}") from None
    if kind != "ok":
        raise DiscoveryError(value)
    return value
