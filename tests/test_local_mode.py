# SPDX-License-Identifier: MIT
"""Local mode: no host interface to copy (an empty network namespace), and passt-py starts anyway.

What must hold, as for passt (its man page, "Local mode for disconnected setups", and a real
passt run in ``unshare -rn``): the guest is leased 169.254.2.1/16 behind the router 169.254.2.2;
IPv6 gives it no address, only the router fe80::1; both routers lead to the host's loopback.
Each test builds the Config from a described host with no routes, then the NetView the service
derives from it, and asks the protocol pieces (DHCP, NDP, DHCPv6, address translation).
"""
from __future__ import annotations

import ipaddress
import socket

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (DUID_LL, DHCP6_InfoRequest, DHCP6_Solicit, DHCP6OptClientId,
                                DHCP6OptDNSServers, DHCP6OptElapsedTime, DHCP6OptIA_NA)
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import Ether

from passt_py.config import cli
from passt_py.config.conf import LOCAL_MODE_NOTE, Config, ConfigError, build_config
from passt_py.config.netlink import HostIface
from passt_py.config.resolvconf import ResolvConf
from passt_py.link import dhcp, dhcpv6, fwd, ndp
from passt_py.link.ethernet import ETH_P_IP, ETH_P_IPV6
from passt_py.link.ip import parse_ip, parse_udp
from passt_py.link.netview import GuestState, NetView
from passt_py.service import netview_from_config

A = ipaddress.ip_address
GUEST_MAC = "52:54:00:12:34:56"
GUEST_LL = "fe80::5054:ff:fe12:3456"
RESOLV = ResolvConf((A("10.255.255.53"),), ())
HOST4 = HostIface(socket.AF_INET, 2, "eth0", 1500, A("192.0.2.10"), 24, A("192.0.2.1"))


def local_config(argv: list[str] = (), resolv: ResolvConf = RESOLV,  # type: ignore[assignment]
                 host4: HostIface | None = None) -> Config:
    """build_config for ``argv`` on a host with no routes at all (unless ``host4`` is given)."""

    def discover(family: int, ifname: str | None) -> HostIface | None:
        return host4 if family == socket.AF_INET else None

    return build_config(cli.parse_args(["--vhost-user", *argv]), discover, lambda: resolv)


def local_view(argv: list[str] = ()) -> NetView:  # type: ignore[assignment]
    """The NetView the service derives in local mode."""
    return netview_from_config(local_config(argv))


# ---- configuration ----

def test_no_routes_starts_in_local_mode_with_passts_ipv4_addressing():
    """No host interface: IPv4 is 169.254.2.1/16 with gateway 169.254.2.2, not an error."""
    cfg = local_config()
    assert cfg.local_mode
    assert (cfg.ip4.addr, cfg.ip4.prefix_len, cfg.ip4.gw) == (A("169.254.2.1"), 16, A("169.254.2.2"))
    assert cfg.ip4.ifname is None and cfg.ip4.host_addr is None


def test_local_mode_ipv6_has_no_address_and_router_fe80_1():
    """IPv6 stays on, with no address for the guest and fe80::1 as its router."""
    ip6 = local_config().ip6
    assert ip6 is not None and ip6.addr.is_unspecified and ip6.gw == A("fe80::1")


def test_local_mode_gateways_map_to_host_loopback():
    """By default both gateways are the addresses that reach the host's loopback."""
    cfg = local_config()
    assert cfg.ip4.map_host_loopback == A("169.254.2.2")
    assert cfg.ip6.map_host_loopback == A("fe80::1")


def test_local_mode_no_map_gw_leaves_loopback_unmapped():
    """--no-map-gw still means what it says in local mode."""
    cfg = local_config(["--no-map-gw"])
    assert cfg.ip4.map_host_loopback is None and cfg.ip6.map_host_loopback is None


def test_local_mode_says_so_once_and_nothing_about_disabled_families():
    """One note names local mode; the 'IPv4/IPv6 disabled' notes of the failed lookup are gone."""
    cfg = local_config()
    assert cfg.notes.count(LOCAL_MODE_NOTE) == 1
    assert not any("disabled" in n for n in cfg.notes)
    assert "mode: local (no host interface as template)" in cfg.describe()


def test_local_mode_keeps_resolv_conf_servers():
    """The resolver's servers are handed out as passt does (it offers 10.255.255.53 here too)."""
    assert local_config().ip4.dns == (A("10.255.255.53"),)


def test_local_mode_host_loopback_resolver_is_reached_through_the_gateway():
    """A resolver on the host's 127.0.0.1 is advertised as the gateway and forwarded there."""
    ip4 = local_config(resolv=ResolvConf((A("127.0.0.53"),), ())).ip4
    assert ip4.dns == (A("169.254.2.2"),)
    assert (ip4.dns_match, ip4.dns_host) == (A("169.254.2.2"), A("127.0.0.53"))


def test_local_mode_respects_ipv4_only():
    """-4 in local mode: IPv6 stays off."""
    cfg = local_config(["-4"])
    assert cfg.local_mode and cfg.ip4 is not None and cfg.ip6 is None


def test_local_mode_respects_ipv6_only():
    """-6 in local mode: IPv4 stays off, IPv6 has only its router."""
    cfg = local_config(["-6"])
    assert cfg.local_mode and cfg.ip4 is None and cfg.ip6.gw == A("fe80::1")


def test_command_line_addresses_still_win_over_local_mode():
    """-a/-g with no host routes configure that family as before, not local mode."""
    cfg = local_config(["-a", "10.0.0.2/24", "-g", "10.0.0.1", "-4"])
    assert not cfg.local_mode
    assert (cfg.ip4.addr, cfg.ip4.gw) == (A("10.0.0.2"), A("10.0.0.1"))


def test_gateway_alone_is_kept_in_local_mode():
    """-g alone in an empty namespace: local addressing with the gateway the user chose."""
    cfg = local_config(["-g", "169.254.0.1", "-4"])
    assert cfg.local_mode and (cfg.ip4.addr, cfg.ip4.gw) == (A("169.254.2.1"), A("169.254.0.1"))


def test_one_usable_family_is_not_local_mode():
    """With a routed IPv4 interface and no IPv6, IPv6 is disabled as before: no local mode."""
    cfg = local_config(host4=HOST4)
    assert not cfg.local_mode and cfg.ip4.addr == A("192.0.2.10") and cfg.ip6 is None


def test_interface_option_without_routes_is_still_an_error():
    """-i names an interface: if it has no routes, that is the user's error, not local mode."""
    with pytest.raises(ConfigError, match="^no usable host interface on eth0"):
        local_config(["-i", "eth0"])


# ---- the guest's view ----

def test_netview_in_local_mode():
    """The service's view: addresses, gateways, our link-local, MTU 65520."""
    view = local_view()
    assert (view.ip4.addr, view.ip4.prefix_len, view.ip4.gateway) == \
        (A("169.254.2.1"), 16, A("169.254.2.2"))
    assert view.ip6.addr.is_unspecified and view.ip6.gateway == A("fe80::1")
    assert view.ip6.our_ll == A("fe80::1")
    assert view.mtu == 65520


def _dhcp_reply(view: NetView) -> Ether:
    frame = bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
                  / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                  / BOOTP(chaddr=bytes.fromhex("525400123456"), xid=7)
                  / DHCP(options=[("message-type", "discover"), "end"]))
    pkt = parse_ip(frame, ETH_P_IP)
    raw = dhcp.DhcpServer(view).handle(frame, pkt, parse_udp(pkt.l4), GuestState())
    assert raw is not None
    return Ether(raw)


def test_dhcp_offers_169_254_2_1_with_router_169_254_2_2():
    """DHCP leases what real passt leases in local mode: address, /16 mask, router, MTU."""
    reply = _dhcp_reply(local_view())
    opts = {o[0]: o[1:] for o in reply[DHCP].options if isinstance(o, tuple)}
    assert reply[BOOTP].yiaddr == "169.254.2.1" and reply[IP].src == "169.254.2.2"
    assert opts["subnet_mask"] == ("255.255.0.0",) and opts["router"] == ("169.254.2.2",)
    assert opts["server_id"] == ("169.254.2.2",) and opts["interface-mtu"] == (65520,)


def _rs() -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
                 / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
                 / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))


def test_ra_makes_fe80_1_the_router_without_a_prefix_or_lease():
    """The RA comes from fe80::1 with a router lifetime, and no prefix (there is no global
    address to form) and no M flag (there is no lease to fetch)."""
    frame = _rs()
    (raw,) = ndp.NdpResponder(local_view()).handle(frame, parse_ip(frame, ETH_P_IPV6),
                                                   GuestState())
    ra = Ether(raw)
    assert ra[IPv6].src == "fe80::1" and ra[IPv6].dst == GUEST_LL
    assert ra[ICMPv6ND_RA].routerlifetime > 0
    assert ra[ICMPv6ND_RA].M == 0 and ra[ICMPv6ND_RA].O == 1
    assert ICMPv6NDOptPrefixInfo not in ra


def _dhcpv6(msg: object) -> bytes | None:
    frame = bytes(Ether(src=GUEST_MAC, dst="33:33:00:01:00:02")
                  / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / msg)
    pkt = parse_ip(frame, ETH_P_IPV6)
    view = netview_from_config(local_config(resolv=ResolvConf((A("::1"),), ())))
    return dhcpv6.Dhcpv6Server(view, 0).handle(frame, pkt, parse_udp(pkt.l4), GuestState())


def test_dhcpv6_solicit_gets_no_answer():
    """No address to lease: a SOLICIT is not answered (real passt is silent too)."""
    assert _dhcpv6(DHCP6_Solicit(trid=1) / DHCP6OptElapsedTime()
                   / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC)) / DHCP6OptIA_NA(iaid=1)) \
        is None


def test_dhcpv6_information_request_gets_the_dns_server():
    """Stateless DHCPv6 still tells the DNS server: the host's ::1 resolver, seen as fe80::1."""
    raw = _dhcpv6(DHCP6_InfoRequest(trid=2) / DHCP6OptElapsedTime())
    assert raw is not None
    assert Ether(raw)[DHCP6OptDNSServers].dnsservers == ["fe80::1"]


# ---- address translation ----

def test_guest_traffic_to_gateways_goes_to_host_loopback():
    """169.254.2.2 and fe80::1 are the host's 127.0.0.1 and ::1; other destinations pass."""
    view = local_view()
    assert fwd.nat_from_guest(view, A("169.254.2.2"), 8080) == A("127.0.0.1")
    assert fwd.nat_from_guest(view, A("fe80::1"), 8080) == A("::1")
    assert fwd.nat_from_guest(view, A("192.0.2.7"), 80) == A("192.0.2.7")


def test_host_loopback_traffic_is_shown_from_the_gateways():
    """Replies and forwarded connections from the host's loopback come from the gateways."""
    view = local_view()
    assert fwd.nat_from_host(view, A("127.0.0.1"), 8080) == A("169.254.2.2")
    assert fwd.nat_from_host(view, A("::1"), 8080) == A("fe80::1")


def test_forwarded_ipv6_goes_to_the_guests_link_local_address():
    """No IPv6 lease: port forwarding targets the guest's link-local address once seen."""
    view = local_view()
    assert fwd.guest_address(view, GuestState(), 6) is None
    seen = GuestState(addr6_ll=A(GUEST_LL))
    assert fwd.guest_address(view, seen, 6) == A(GUEST_LL)
    assert fwd.guest_address(view, seen, 4) == A("169.254.2.1")
