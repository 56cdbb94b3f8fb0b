# SPDX-License-Identifier: MIT
"""What the guest sees of the network, and what the back-end has observed of the guest.

NetView is derived once from the Config: the addresses the guest is given, the gateway it
routes through, the MAC the back-end answers with, which services are on. GuestState is the
small mutable part learned from the guest's own traffic (its MAC and the addresses it uses).
Protocol handlers take both and stay free of configuration parsing.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from passt_py.link.ethernet import BROADCAST

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address


@dataclass(frozen=True)
class Ip4View:
    """IPv4 as the guest sees it."""

    addr: IPv4                     # the guest's address (the DHCP lease)
    prefix_len: int
    gateway: IPv4                  # the guest's router: the back-end answers for it
    dns: tuple[IPv4, ...] = ()     # DNS servers handed to the guest
    map_host_loopback: IPv4 | None = None   # guest-side address reaching the host's 127.0.0.1
    map_guest_addr: IPv4 | None = None      # guest-side address reaching the host's own address
    host_addr: IPv4 | None = None  # the host's address on the outbound interface
    dns_match: IPv4 | None = None  # guest-side address whose port-53 traffic goes to dns_host
    dns_host: IPv4 | None = None   # host-side resolver for that traffic (--dns-host)
    outbound: IPv4 | None = None   # host-side source of guest-initiated flows (-o)
    outbound_if: str | None = None  # device of guest-initiated flows' sockets (--outbound-if4)

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The guest's subnet."""
        return ipaddress.IPv4Network(f"{self.addr}/{self.prefix_len}", strict=False)


@dataclass(frozen=True)
class Ip6View:
    """IPv6 as the guest sees it."""

    addr: IPv6                     # the guest's global address (DHCPv6 lease; prefix from RA)
    prefix_len: int
    gateway: IPv6                  # the guest's router
    our_ll: IPv6                   # link-local source of RAs, NAs and DHCPv6 replies
    dns: tuple[IPv6, ...] = ()
    map_host_loopback: IPv6 | None = None
    map_guest_addr: IPv6 | None = None
    host_addr: IPv6 | None = None
    dns_match: IPv6 | None = None
    dns_host: IPv6 | None = None
    outbound: IPv6 | None = None
    outbound_if: str | None = None

    @property
    def prefix(self) -> ipaddress.IPv6Network:
        """The /64 (or configured) prefix advertised to the guest."""
        return ipaddress.IPv6Network(f"{self.addr}/{self.prefix_len}", strict=False)


@dataclass(frozen=True)
class NetView:
    """Everything protocol handlers need to know about the configuration."""

    our_mac: bytes
    mtu: int
    ip4: Ip4View | None
    ip6: Ip6View | None
    search: tuple[str, ...] = ()
    hostname: str | None = None
    fqdn: str | None = None
    dhcp: bool = True
    dhcp_dns: bool = True
    dhcp_search: bool = True
    dhcpv6: bool = True
    ndp: bool = True
    ra: bool = True
    icmp: bool = True
    udp: bool = True
    tcp: bool = True
    freebind: bool = False         # -t/-u listeners may bind addresses the host lacks


@dataclass
class GuestState:
    """What the back-end learnt from the guest's frames (replaced when a new front-end comes)."""

    mac: bytes = BROADCAST         # until the guest has sent anything, frames go to broadcast
    addr4: IPv4 | None = None      # last IPv4 source address the guest used
    addr6: IPv6 | None = None      # last global IPv6 source address
    addr6_ll: IPv6 | None = None   # last link-local IPv6 source address
    arp_answered: bool = False     # the guest answered our ARP request for its address
    extra: dict[str, object] = field(default_factory=dict)
