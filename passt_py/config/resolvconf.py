# SPDX-License-Identifier: MIT
"""Reading /etc/resolv.conf: the host's DNS servers and search domains become the guest's defaults.

Follows the resolver's own rules closely enough for that job: ``nameserver`` lines in order,
IPv6 zone suffixes dropped, ``search`` and ``domain`` lines where the last one wins, comments with
``#`` or ``;``. Unreadable files give an empty result, as a host without resolv.conf has no DNS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

RESOLV_CONF = "/etc/resolv.conf"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ResolvConf:
    """Name servers in file order and the effective search list."""

    nameservers: tuple[IpAddress, ...] = ()
    search: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf contents; malformed lines are skipped, like the libc resolver does."""
    servers: list[IpAddress] = []
    search: tuple[str, ...] = ()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        fields = line.split()
        if len(fields) < 2:
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            try:
                addr = ipaddress.ip_address(values[0].split("%", 1)[0])
            except ValueError:
                continue
            if addr not in servers:
                servers.append(addr)
        elif key in ("search", "domain"):
            search = tuple(v.rstrip(".") for v in values if v.rstrip("."))
    return ResolvConf(tuple(servers), search)


def read_resolv_conf(path: str = RESOLV_CONF) -> ResolvConf:
    """The host's resolver configuration; empty if the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read(1 << 20))
    except OSError:
        return ResolvConf()
