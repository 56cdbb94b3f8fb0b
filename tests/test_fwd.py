# SPDX-License-Identifier: MIT
"""Address translation between the guest's addresses and the host's (passt_py.link.fwd)."""
from __future__ import annotations

import dataclasses
import ipaddress

from l4_helpers import GUEST4, GUEST6, GW4, GW6, LO4, LO6, make_guest, make_view

from passt_py.link import fwd
from passt_py.link.netview import GuestState

A = ipaddress.ip_address
DNS4 = A("10.0.2.3")
MAPPED_GUEST = A("10.0.2.9")


def view_with(**ip4: object):
    """The test view with IPv4 fields replaced."""
    view = make_view()
    return dataclasses.replace(view, ip4=dataclasses.replace(view.ip4, **ip4))


def test_gateway_reaches_host_loopback() -> None:
    """Traffic to the gateway (default map_host_loopback) goes to 127.0.0.1 / ::1."""
    view = make_view()
    assert fwd.nat_from_guest(view, GW4, 1234) == LO4
    assert fwd.nat_from_guest(view, GW6, 1234) == LO6
    assert fwd.nat_from_guest(view, GW4, None) == LO4


def test_no_map_gw_leaves_gateway_alone() -> None:
    """With the mapping disabled the gateway is an ordinary destination."""
    view = make_view(map_gw=False)
    assert fwd.nat_from_guest(view, GW4, 1234) == GW4
    # ...and a link-local IPv6 gateway means nothing to a host socket: dropped.
    assert fwd.nat_from_guest(view, GW6, 1234) is None


def test_other_destinations_pass_unchanged() -> None:
    """Any other unicast destination is used as is."""
    view = make_view()
    for dst in (A("192.0.2.7"), A("10.0.2.77"), A("2001:db8::1")):
        assert fwd.nat_from_guest(view, dst, 80) == dst


def test_unroutable_destinations_dropped() -> None:
    """Multicast, broadcast, unspecified, loopback and subnet broadcast are not forwarded."""
    view = make_view()
    for dst in ("224.0.0.251", "255.255.255.255", "0.0.0.0", "127.0.0.1", "10.0.2.255",
                "ff02::fb", "::", "::1", "fe80::1234"):
        assert fwd.nat_from_guest(view, A(dst), 5353) is None, dst


def test_disabled_family_dropped() -> None:
    """A family the view disables translates to nothing."""
    view = dataclasses.replace(make_view(), ip6=None)
    assert fwd.nat_from_guest(view, A("2001:db8::1"), 1) is None
    assert fwd.nat_from_host(view, A("2001:db8::1"), 1) is None
    assert fwd.guest_address(view, make_guest(), 6) is None


def test_map_guest_addr_reaches_guest_assigned_address() -> None:
    """--map-guest-addr: its address reaches the address assigned to the guest (the host's)."""
    view = view_with(map_guest_addr=MAPPED_GUEST)
    assert fwd.nat_from_guest(view, MAPPED_GUEST, 80) == GUEST4
    assert fwd.nat_from_host(view, GUEST4, 80) == MAPPED_GUEST


def test_dns_forward_only_port_53() -> None:
    """--dns-forward: port 53 to dns_match goes to dns_host; other ports do not."""
    view = view_with(dns_match=DNS4, dns_host=LO4)
    assert fwd.nat_from_guest(view, DNS4, 53) == LO4
    assert fwd.nat_from_guest(view, DNS4, 54) == DNS4
    assert fwd.nat_from_guest(view, DNS4, None) == DNS4
    assert fwd.nat_from_host(view, LO4, 53) == DNS4


def test_dns_forward_wins_over_gateway_mapping() -> None:
    """When dns_match is the gateway, port 53 goes to dns_host, other ports to loopback."""
    host = A("192.0.2.53")
    view = view_with(dns_match=GW4, dns_host=host)
    assert fwd.nat_from_guest(view, GW4, 53) == host
    assert fwd.nat_from_guest(view, GW4, 80) == LO4


def test_host_sources_seen_by_guest() -> None:
    """Host → guest: loopback shows as map_host_loopback, others unchanged."""
    view = make_view()
    assert fwd.nat_from_host(view, LO4, 9) == GW4
    assert fwd.nat_from_host(view, A("127.0.0.5"), 9) == GW4
    assert fwd.nat_from_host(view, LO6, 9) == GW6
    assert fwd.nat_from_host(view, A("192.0.2.1"), 9) == A("192.0.2.1")
    assert fwd.nat_from_host(view, A("0.0.0.0"), 9) is None


def test_unmapped_loopback_source_shown_as_gateway() -> None:
    """Without a loopback mapping the guest still gets an answerable source: the gateway."""
    view = make_view(map_gw=False)
    assert fwd.nat_from_host(view, LO4, 9) == GW4
    assert fwd.nat_from_host(view, GUEST4, 9) == GW4


def test_guest_address_prefers_observed() -> None:
    """Forwarded traffic goes to the address the guest uses, else its lease."""
    view = make_view()
    assert fwd.guest_address(view, GuestState(), 4) == GUEST4
    assert fwd.guest_address(view, GuestState(), 6) == GUEST6
    seen = GuestState(addr4=A("10.0.2.99"), addr6=A("fd00:abcd::99"))
    assert fwd.guest_address(view, seen, 4) == A("10.0.2.99")
    assert fwd.guest_address(view, seen, 6) == A("fd00:abcd::99")


def test_roundtrip_mapping_symmetric() -> None:
    """What the guest sends to a mapped address comes back from that same address."""
    view = view_with(map_guest_addr=MAPPED_GUEST)
    for guest_dst in (GW4, MAPPED_GUEST, A("192.0.2.1")):
        host_dst = fwd.nat_from_guest(view, guest_dst, 4000)
        assert host_dst is not None
        assert fwd.nat_from_host(view, host_dst, 4000) == guest_dst
