# SPDX-License-Identifier: MIT
"""Address translation between the guest's view of the network and the host's sockets.

Theory of operation: the guest is given the host's own addressing, so almost every address
means the same on both sides and passes through unchanged. Three exceptions, all configured in
the NetView and all symmetric:

* ``map_host_loopback`` (by default the gateway; disabled by ``--no-map-gw`` or
  ``--map-host-loopback none``): the guest reaches the host's loopback through it, so a
  destination equal to it becomes 127.0.0.1 / ::1, and a host-side source on loopback is shown
  to the guest as that address.
* ``map_guest_addr`` (``--map-guest-addr``): like passt, a destination equal to it becomes the
  address assigned to the guest (by default the host's own global address); a host-side
  source equal to that address is shown as ``map_guest_addr``.
* DNS forwarding (``--dns-forward`` / ``--dns-host``): port-53 traffic to ``dns_match`` goes to
  ``dns_host``; replies from ``dns_host`` port 53 come back from ``dns_match``.

For flows the guest starts, replies need no reverse lookup here: the flow remembers which
address the guest talked to. The reverse functions serve flows started from the host (port
forwarding), where the guest must see a source address it can answer.

Local mode (no host interface; see passt_py.config.conf) needs nothing special here: the
gateways 169.254.2.2 and fe80::1 are the ``map_host_loopback`` addresses, so the guest's
traffic to them reaches the host's loopback, the only place there is to go.

Everything here is a pure function of the NetView (plus the guest's observed addresses).
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Iterable

from passt_py.config.portspec import Forward, PortForwards
from passt_py.link.netview import GuestState, Ip4View, Ip6View, NetView

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
LOOPBACK6 = ipaddress.IPv6Address("::1")
ANY4 = ipaddress.IPv4Address("0.0.0.0")
ANY6 = ipaddress.IPv6Address("::")
DNS_PORT = 53

log = logging.getLogger(__name__)


def family_view(view: NetView, version: int) -> Ip4View | Ip6View | None:
    """The per-family part of ``view``, or None when that family is disabled."""
    return view.ip4 if version == 4 else view.ip6


def loopback(version: int) -> IPAddr:
    """The host's loopback address for ``version``."""
    return LOOPBACK4 if version == 4 else LOOPBACK6


def unspecified(version: int) -> IPAddr:
    """The unspecified (wildcard) address for ``version``."""
    return ANY4 if version == 4 else ANY6


def guest_reachable(addr: IPAddr) -> bool:
    """Whether a guest may originate traffic to ``addr`` through a host socket at all.

    Multicast, broadcast, unspecified and (unmapped) loopback or link-local destinations mean
    nothing on the host's side of the translation, so they are dropped.
    """
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        return False
    if addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"):
        return False
    if addr.version == 6 and addr.is_link_local:
        return False
    return True


def nat_from_guest(view: NetView, dst: IPAddr, dport: int | None) -> IPAddr | None:
    """The host-side destination for guest traffic to ``dst``:``dport`` (None: drop it).

    ``dport`` is None for protocols without ports (ICMP echo), which never match the DNS rule.
    """
    fam = family_view(view, dst.version)
    if fam is None:
        return None
    if dport == DNS_PORT and fam.dns_match is not None and fam.dns_host is not None \
            and dst == fam.dns_match:
        return fam.dns_host
    if fam.map_host_loopback is not None and dst == fam.map_host_loopback:
        return loopback(dst.version)
    if fam.map_guest_addr is not None and dst == fam.map_guest_addr:
        return fam.addr
    if _subnet_broadcast(fam, dst):
        return None
    return dst if guest_reachable(dst) else None


def _subnet_broadcast(fam: Ip4View | Ip6View, dst: IPAddr) -> bool:
    """True for the IPv4 directed broadcast of the guest's subnet (never forwarded)."""
    return isinstance(fam, Ip4View) and dst == fam.network.broadcast_address \
        and fam.prefix_len < 31


def nat_from_host(view: NetView, src: IPAddr, sport: int) -> IPAddr | None:
    """The source address the guest sees for host traffic from ``src``:``sport``.

    None means the guest cannot be shown any sensible source (the family is disabled), and
    the datagram is dropped. A loopback or host-address source with no mapping configured is
    shown as the gateway, so the guest still has somewhere to send its replies.
    """
    fam = family_view(view, src.version)
    if fam is None:
        return None
    if sport == DNS_PORT and fam.dns_host is not None and fam.dns_match is not None \
            and src == fam.dns_host:
        return fam.dns_match
    if src.is_loopback:
        return fam.map_host_loopback if fam.map_host_loopback is not None else fam.gateway
    if src == fam.addr and not src.is_unspecified:
        # The guest owns this address: it would not answer a packet "from itself".
        return fam.map_guest_addr if fam.map_guest_addr is not None else fam.gateway
    if src.is_unspecified or src.is_multicast:
        return None
    return src


def guest_address(view: NetView, guest: GuestState, version: int) -> IPAddr | None:
    """The address host-initiated traffic is sent to: what the guest uses, else its lease.

    In local mode the guest has no IPv6 lease: its link-local address, once seen, stands in
    (None until then)."""
    if version == 4:
        if view.ip4 is None:
            return None
        return guest.addr4 if guest.addr4 is not None else view.ip4.addr
    if view.ip6 is None:
        return None
    if guest.addr6 is not None:
        return guest.addr6
    return view.ip6.addr if not view.ip6.addr.is_unspecified else guest.addr6_ll


def rule_versions(view: NetView, rule: Forward) -> list[int]:
    """The IP versions a forwarding rule listens on: its bind address's, or every enabled one."""
    if rule.bind_addr is not None:
        fam = family_view(view, rule.bind_addr.version)
        return [rule.bind_addr.version] if fam is not None else []
    return [v for v, fam in ((4, view.ip4), (6, view.ip6)) if fam is not None]


def open_listeners(view: NetView, rules: PortForwards | Iterable[Forward],
                   listen: Callable[[Forward, int, int], None], proto: str) -> int:
    """A listening socket per port and IP version of ``rules``, each through
    ``listen(rule, version, port)`` (raising OSError when it cannot bind); returns how many
    were bound. A port that cannot be bound is logged and skipped, as passt does: the others
    still forward."""
    forwards = rules.forwards if isinstance(rules, PortForwards) else tuple(rules)
    bound = failed = 0
    for rule in forwards:
        for port in range(rule.first, rule.last + 1):
            for version in rule_versions(view, rule):
                try:
                    listen(rule, version, port)
                    bound += 1
                except OSError as e:
                    failed += 1
                    log.debug("%s forward: cannot bind port %d (IPv%d): %s", proto, port,
                              version, e)
    if failed:
        log.warning("%s forwarding: %d of %d listening sockets could not be bound", proto,
                    failed, bound + failed)
    return bound
