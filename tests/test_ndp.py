# SPDX-License-Identifier: MIT
"""NDP: NAs for every address but the guest's, RAs with the guest's addressing, hostile input."""
import ipaddress
import random
import struct
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_Redirect,
                                ICMPv6ND_RS, ICMPv6NDOptDNSSL, ICMPv6NDOptDstLLAddr, ICMPv6NDOptMTU,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr, IPv6,
                                in6_chksum)
from scapy.layers.l2 import Ether

from passt_py.link import ndp
from passt_py.link.ethernet import ETH_P_IPV6
from passt_py.link.ip import IpPacket, parse_ip
from passt_py.link.netview import GuestState, Ip6View, NetView
from tests.conftest import hypothesis_budget

A = ipaddress.IPv6Address
OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC_S = "52:54:00:12:34:56"
GUEST_MAC = bytes.fromhex("525400123456")
GUEST_LL = "fe80::5054:ff:fe12:3456"
GUEST_GLOBAL = "2001:db8:1::2"
SLAAC_ADDR = "2001:db8:1:0:5054:ff:fe12:3456"
OUR_LL = "fe80::1"
GATEWAY = "2001:db8:1::1"

VIEW = NetView(
    our_mac=OUR_MAC,
    mtu=65520,
    ip4=None,
    ip6=Ip6View(addr=A(GUEST_GLOBAL), prefix_len=64, gateway=A(GATEWAY), our_ll=A(OUR_LL),
                dns=(A("2001:db8::53"), A("2001:db8::54"))),
    search=("example.com", "lab.example.org."),
)


def _guest() -> GuestState:
    return GuestState(mac=GUEST_MAC, addr6=A(GUEST_GLOBAL), addr6_ll=A(GUEST_LL))


def _solicited_node(addr: str) -> str:
    low = A(addr).packed[13:]
    return str(A(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + low))


def _ns(target: str, src: str = GUEST_LL, dst: str | None = None, hlim: int = 255,
        slla: bool = True) -> bytes:
    dst = dst or _solicited_node(target)
    pkt = (Ether(src=GUEST_MAC_S, dst="33:33:ff:00:00:01") / IPv6(src=src, dst=dst, hlim=hlim)
           / ICMPv6ND_NS(tgt=target))
    if slla:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_S)
    return bytes(pkt)


def _rs(src: str = GUEST_LL, hlim: int = 255, slla: bool = True) -> bytes:
    pkt = (Ether(src=GUEST_MAC_S, dst="33:33:00:00:00:02")
           / IPv6(src=src, dst="ff02::2", hlim=hlim) / ICMPv6ND_RS())
    if slla:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_S)
    return bytes(pkt)


def _handle(frame: bytes, view: NetView = VIEW, guest: GuestState | None = None) -> list[bytes]:
    pkt = parse_ip(frame, ETH_P_IPV6)
    assert pkt is not None
    return ndp.NdpResponder(view).handle(frame, pkt, guest or _guest())


def _one(frames: list[bytes]) -> Ether:
    assert len(frames) == 1
    return Ether(frames[0])


def _checksum_ok(frame: Ether, layer: type) -> bool:
    """Scapy recomputes the ICMPv6 checksum and gets the one we sent."""
    sent = frame[layer].cksum
    copy = frame.copy()
    del copy[layer].cksum
    return Ether(bytes(copy))[layer].cksum == sent


def _l4_packet(l4: bytes, src: str = GUEST_LL, dst: str = "ff02::2", hlim: int = 255,
               fix_checksum: bool = True) -> IpPacket:
    """An IpPacket carrying raw ICMPv6 bytes, with their checksum made valid when long enough."""
    if fix_checksum and len(l4) >= 4:
        zeroed = l4[:2] + b"\x00\x00" + l4[4:]
        csum = in6_chksum(58, IPv6(src=src, dst=dst), zeroed)
        l4 = l4[:2] + struct.pack("!H", csum) + l4[4:]
    return IpPacket(6, A(src), A(dst), 58, hlim, memoryview(l4))


def _handle_l4(pkt: IpPacket, view: NetView = VIEW) -> list[bytes]:
    frame = bytes.fromhex("333300000002") + GUEST_MAC + b"\x86\xdd"
    return ndp.NdpResponder(view).handle(frame, pkt, _guest())


# ---- Neighbor Solicitation ----

def test_ns_for_gateway_gets_na_to_asker():
    """An NS for the gateway is answered by an NA to the asker's addresses, from our link-local."""
    na = _one(_handle(_ns(GATEWAY)))
    assert na[Ether].dst == GUEST_MAC_S
    assert na[Ether].src == "9a:55:9a:55:9a:55"
    assert na[IPv6].src == OUR_LL
    assert na[IPv6].dst == GUEST_LL
    assert na[IPv6].hlim == 255
    assert na[IPv6].nh == 58


def test_na_flags_router_solicited_override():
    """The NA claims to be a router, solicited, overriding any cached MAC."""
    na = _one(_handle(_ns(GATEWAY)))
    assert na[ICMPv6ND_NA].type == 136
    assert na[ICMPv6ND_NA].code == 0
    assert na[ICMPv6ND_NA].R == 1
    assert na[ICMPv6ND_NA].S == 1
    assert na[ICMPv6ND_NA].O == 1
    assert na[ICMPv6ND_NA].tgt == GATEWAY


def test_na_carries_our_mac_as_target_link_layer_address():
    """The target link-layer address option is our MAC, the only option."""
    na = _one(_handle(_ns(GATEWAY)))
    assert na[ICMPv6NDOptDstLLAddr].type == 2
    assert na[ICMPv6NDOptDstLLAddr].len == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "9a:55:9a:55:9a:55"
    assert na[IPv6].plen == 32


def test_na_checksum_verifies():
    """Scapy recomputes the same ICMPv6 checksum the NA carries."""
    assert _checksum_ok(_one(_handle(_ns(GATEWAY))), ICMPv6ND_NA)


def test_ns_for_any_other_address_is_answered():
    """Every node on the link but the guest is the back-end."""
    na = _one(_handle(_ns("2001:db8:1::77", src=GUEST_GLOBAL, dst="2001:db8:1::77")))
    assert na[ICMPv6ND_NA].tgt == "2001:db8:1::77"
    assert na[IPv6].dst == GUEST_GLOBAL


def test_ns_for_our_link_local_is_answered():
    """NUD towards our link-local address (the router's) is answered."""
    assert _one(_handle(_ns(OUR_LL)))[ICMPv6ND_NA].tgt == OUR_LL


def test_ns_without_source_link_layer_option_is_answered():
    """The option is optional for unicast-sourced solicitations."""
    assert _one(_handle(_ns(GATEWAY, slla=False)))[ICMPv6ND_NA].tgt == GATEWAY


def test_ns_for_guest_global_address_is_ignored():
    """The guest's observed global address is its own."""
    assert _handle(_ns(GUEST_GLOBAL)) == []


def test_ns_for_guest_link_local_is_ignored():
    """The guest's observed link-local address is its own."""
    assert _handle(_ns(GUEST_LL, src=GUEST_GLOBAL)) == []


def test_ns_for_configured_guest_address_is_ignored_before_guest_uses_it():
    """The address the guest is given is its own even before it is observed."""
    assert _handle(_ns(GUEST_GLOBAL), guest=GuestState(mac=GUEST_MAC)) == []


def test_ns_for_multicast_target_is_dropped():
    """RFC 4861 7.1.1: the target must not be multicast."""
    assert _handle(_ns("ff02::1", dst="ff02::1")) == []


# ---- Duplicate Address Detection ----

def test_dad_for_guest_slaac_address_is_not_defended():
    """A probe for an address the guest forms itself gets no answer, so DAD succeeds."""
    assert _handle(_ns(SLAAC_ADDR, src="::", slla=False)) == []


def test_dad_for_guest_address_is_not_defended():
    """A probe for the configured guest address gets no answer."""
    assert _handle(_ns(GUEST_GLOBAL, src="::", slla=False)) == []


def test_dad_for_our_link_local_is_defended_to_all_nodes():
    """A probe for our own link-local is a real conflict: NA to all-nodes, S clear."""
    na = _one(_handle(_ns(OUR_LL, src="::", slla=False)))
    assert na[Ether].dst == "33:33:00:00:00:01"
    assert na[IPv6].src == OUR_LL
    assert na[IPv6].dst == "ff02::1"
    assert na[IPv6].hlim == 255
    assert na[ICMPv6ND_NA].tgt == OUR_LL
    assert na[ICMPv6ND_NA].R == 1
    assert na[ICMPv6ND_NA].S == 0
    assert na[ICMPv6ND_NA].O == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "9a:55:9a:55:9a:55"
    assert _checksum_ok(na, ICMPv6ND_NA)


def test_dad_for_gateway_is_defended():
    """The gateway address is ours too."""
    assert _one(_handle(_ns(GATEWAY, src="::", slla=False)))[ICMPv6ND_NA].tgt == GATEWAY


def test_dad_with_source_link_layer_option_is_dropped():
    """RFC 4861 7.1.1: a probe from :: must not carry a source link-layer address."""
    assert _handle(_ns(OUR_LL, src="::", slla=True)) == []


def test_dad_not_to_solicited_node_group_is_dropped():
    """RFC 4861 7.1.1: a probe from :: must go to a solicited-node multicast address."""
    assert _handle(_ns(OUR_LL, src="::", dst="ff02::1", slla=False)) == []


# ---- Router Solicitation ----

def test_rs_gets_unicast_ra_from_our_link_local():
    """An RS from a link-local address gets an RA sent straight back to it."""
    ra = _one(_handle(_rs()))
    assert ra[Ether].dst == GUEST_MAC_S
    assert ra[Ether].src == "9a:55:9a:55:9a:55"
    assert ra[IPv6].src == OUR_LL
    assert ra[IPv6].dst == GUEST_LL
    assert ra[IPv6].hlim == 255
    assert ra[IPv6].nh == 58


def test_ra_header_fields():
    """Hop limit 64, M and O with DHCPv6 on, medium preference, 65535 s, timers unspecified."""
    ra = _one(_handle(_rs()))[ICMPv6ND_RA]
    assert ra.type == 134
    assert ra.code == 0
    assert ra.chlim == 64
    assert ra.M == 1
    assert ra.O == 1
    assert ra.H == 0
    assert ra.prf == 0
    assert ra.routerlifetime == 65535
    assert ra.reachabletime == 0
    assert ra.retranstimer == 0


def test_ra_checksum_verifies():
    """Scapy recomputes the same ICMPv6 checksum the RA carries."""
    assert _checksum_ok(_one(_handle(_rs())), ICMPv6ND_RA)


def test_ra_prefix_information():
    """The guest's /64, on-link and autonomous, with infinite lifetimes."""
    opt = _one(_handle(_rs()))[ICMPv6NDOptPrefixInfo]
    assert opt.type == 3
    assert opt.len == 4
    assert opt.prefixlen == 64
    assert opt.L == 1
    assert opt.A == 1
    assert opt.R == 0
    assert opt.validlifetime == 0xFFFFFFFF
    assert opt.preferredlifetime == 0xFFFFFFFF
    assert opt.prefix == "2001:db8:1::"


def test_ra_prefix_is_the_64_even_for_a_longer_host_prefix():
    """SLAAC needs a /64, so a /128 host address still advertises its /64."""
    view = replace(VIEW, ip6=replace(VIEW.ip6, addr=A("2001:db8:5:6:7::9"), prefix_len=128))
    opt = _one(_handle(_rs(), view=view))[ICMPv6NDOptPrefixInfo]
    assert opt.prefixlen == 64
    assert opt.prefix == "2001:db8:5:6::"


def test_ra_mtu_option():
    """The MTU option carries the view's MTU."""
    opt = _one(_handle(_rs()))[ICMPv6NDOptMTU]
    assert opt.type == 5
    assert opt.len == 1
    assert opt.mtu == 65520


def test_ra_without_mtu_option_below_ipv6_minimum():
    """An MTU below 1280 is not advertised (IPv6 cannot use it)."""
    view = replace(VIEW, mtu=576)
    assert ICMPv6NDOptMTU not in _one(_handle(_rs(), view=view))


def test_ra_source_link_layer_option():
    """The RA names our MAC as the router's link-layer address."""
    opt = _one(_handle(_rs()))[ICMPv6NDOptSrcLLAddr]
    assert opt.type == 1
    assert opt.len == 1
    assert opt.lladdr == "9a:55:9a:55:9a:55"


def test_ra_rdnss_option():
    """RDNSS lists the view's DNS servers with a lifetime of 3 * MaxRtrAdvInterval."""
    opt = _one(_handle(_rs()))[ICMPv6NDOptRDNSS]
    assert opt.type == 25
    assert opt.len == 5
    assert opt.lifetime == 1800
    assert opt.dns == ["2001:db8::53", "2001:db8::54"]


def test_ra_dnssl_option():
    """DNSSL lists the search domains, padded to 8 bytes."""
    opt = _one(_handle(_rs()))[ICMPv6NDOptDNSSL]
    assert opt.type == 31
    assert opt.len == 5
    assert opt.lifetime == 1800
    assert opt.searchlist == ["example.com.", "lab.example.org."]


def test_ra_option_order_and_total_length():
    """Options: prefix, MTU, source LL, RDNSS, DNSSL; lengths add up to the payload length."""
    ra = _one(_handle(_rs()))
    assert ra[IPv6].plen == 16 + 32 + 8 + 8 + 40 + 40
    layer = ra[ICMPv6ND_RA].payload
    order = []
    while layer and layer.name != "NoPayload":
        order.append(type(layer))
        layer = layer.payload
    assert order == [ICMPv6NDOptPrefixInfo, ICMPv6NDOptMTU, ICMPv6NDOptSrcLLAddr,
                     ICMPv6NDOptRDNSS, ICMPv6NDOptDNSSL]


def test_ra_without_dhcpv6_clears_m_and_o():
    """Without DHCPv6 the guest is told to rely on SLAAC alone."""
    ra = _one(_handle(_rs(), view=replace(VIEW, dhcpv6=False)))[ICMPv6ND_RA]
    assert ra.M == 0
    assert ra.O == 0


def test_ra_without_dns_options_when_dhcp_dns_off():
    """--no-dhcp-dns leaves RDNSS out."""
    ra = _one(_handle(_rs(), view=replace(VIEW, dhcp_dns=False)))
    assert ICMPv6NDOptRDNSS not in ra
    assert ICMPv6NDOptDNSSL in ra


def test_ra_without_dnssl_when_dhcp_search_off():
    """--no-dhcp-search leaves DNSSL out."""
    ra = _one(_handle(_rs(), view=replace(VIEW, dhcp_search=False)))
    assert ICMPv6NDOptDNSSL not in ra
    assert ICMPv6NDOptRDNSS in ra


def test_ra_without_dns_options_when_lists_empty():
    """No servers and no domains: neither option appears."""
    view = replace(VIEW, search=(), ip6=replace(VIEW.ip6, dns=()))
    ra = _one(_handle(_rs(), view=view))
    assert ICMPv6NDOptRDNSS not in ra
    assert ICMPv6NDOptDNSSL not in ra


def test_ra_skips_unencodable_search_domains():
    """Empty labels, over-long labels and non-ASCII names are left out."""
    view = replace(VIEW, search=("a..b", "x" * 64 + ".com", "bücher.de", ".", "ok.net"))
    assert _one(_handle(_rs(), view=view))[ICMPv6NDOptDNSSL].searchlist == ["ok.net."]


def test_ra_stays_within_minimum_mtu_with_huge_lists():
    """Many servers and domains are cut so the RA fits 1280 bytes and still parses."""
    dns = tuple(A(f"2001:db8::{i:x}") for i in range(1, 200))
    search = tuple(f"domain{i}.example.com" for i in range(200))
    view = replace(VIEW, search=search, ip6=replace(VIEW.ip6, dns=dns))
    ra = _one(_handle(_rs(), view=view))
    assert len(ra[IPv6]) <= 1280
    assert len(ra[ICMPv6NDOptRDNSS].dns) == 73
    assert ra[ICMPv6NDOptRDNSS].len == 1 + 2 * 73
    assert ICMPv6NDOptDNSSL not in ra
    assert _checksum_ok(ra, ICMPv6ND_RA)


def test_rs_from_unspecified_gets_multicast_ra():
    """An RS from :: is answered to all-nodes on the all-nodes MAC."""
    ra = _one(_handle(_rs(src="::", slla=False)))
    assert ra[Ether].dst == "33:33:00:00:00:01"
    assert ra[IPv6].dst == "ff02::1"
    assert ra[IPv6].src == OUR_LL
    assert _checksum_ok(ra, ICMPv6ND_RA)


def test_rs_from_global_address_gets_multicast_ra():
    """Only a link-local asker gets a unicast RA."""
    assert _one(_handle(_rs(src=GUEST_GLOBAL)))[IPv6].dst == "ff02::1"


def test_rs_from_unspecified_with_source_link_layer_option_is_dropped():
    """RFC 4861 6.1.1: an RS from :: must not carry a source link-layer address."""
    assert _handle(_rs(src="::", slla=True)) == []


# ---- unsolicited messages and the timer ----

def test_unsolicited_ra_to_all_nodes():
    """The timer's RA goes to all-nodes with every option a solicited one has."""
    ra = Ether(ndp.NdpResponder(VIEW).unsolicited_ra())
    assert ra[Ether].dst == "33:33:00:00:00:01"
    assert ra[Ether].src == "9a:55:9a:55:9a:55"
    assert ra[IPv6].src == OUR_LL
    assert ra[IPv6].dst == "ff02::1"
    assert ra[IPv6].hlim == 255
    assert ra[ICMPv6ND_RA].routerlifetime == 65535
    assert ra[ICMPv6ND_RA].M == 1
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "2001:db8:1::"
    assert ra[ICMPv6NDOptMTU].mtu == 65520
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == "9a:55:9a:55:9a:55"
    assert ra[ICMPv6NDOptRDNSS].dns == ["2001:db8::53", "2001:db8::54"]
    assert ra[ICMPv6NDOptDNSSL].searchlist == ["example.com.", "lab.example.org."]
    assert _checksum_ok(ra, ICMPv6ND_RA)


def test_unsolicited_nas_announce_our_addresses():
    """After connect or migration, NAs to all-nodes refresh our MAC for our addresses."""
    frames = [Ether(f) for f in ndp.NdpResponder(VIEW).unsolicited_nas()]
    assert [f[ICMPv6ND_NA].tgt for f in frames] == [OUR_LL, GATEWAY]
    for na in frames:
        assert na[Ether].dst == "33:33:00:00:00:01"
        assert na[IPv6].dst == "ff02::1"
        assert na[IPv6].hlim == 255
        assert na[ICMPv6ND_NA].S == 0
        assert na[ICMPv6ND_NA].O == 1
        assert na[ICMPv6ND_NA].R == 1
        assert na[ICMPv6NDOptDstLLAddr].lladdr == "9a:55:9a:55:9a:55"
        assert _checksum_ok(na, ICMPv6ND_NA)


def test_unsolicited_nas_name_each_address_once():
    """When the gateway is our link-local, one NA covers it."""
    view = replace(VIEW, ip6=replace(VIEW.ip6, gateway=A(OUR_LL)))
    frames = [Ether(f) for f in ndp.NdpResponder(view).unsolicited_nas()]
    assert [f[ICMPv6ND_NA].tgt for f in frames] == [OUR_LL]


def test_first_ra_delays_are_quick_and_bounded():
    """The first three delays after connect fall in [3, 16] s for every seed."""
    for seed in range(500):
        resp = ndp.NdpResponder(VIEW)
        rng = random.Random(seed)
        for _ in range(3):
            assert 3.0 <= resp.next_ra_delay(rng) <= 16.0


def test_later_ra_delays_within_rfc_interval():
    """After the initial ones, delays fall in [MinRtrAdvInterval, MaxRtrAdvInterval]."""
    for seed in range(500):
        resp = ndp.NdpResponder(VIEW)
        rng = random.Random(seed)
        for _ in range(3):
            resp.next_ra_delay(rng)
        for _ in range(5):
            assert 198.0 <= resp.next_ra_delay(rng) <= 600.0


def test_ra_delays_are_randomised():
    """Different seeds spread the delays rather than repeating one value."""
    resp = ndp.NdpResponder(VIEW)
    rng = random.Random(1)
    for _ in range(3):
        resp.next_ra_delay(rng)
    delays = {round(resp.next_ra_delay(rng), 3) for _ in range(200)}
    assert len(delays) > 150
    assert min(delays) < 250
    assert max(delays) > 550


def test_reset_restarts_quick_initial_ras():
    """A new front-end gets quick RAs again."""
    resp = ndp.NdpResponder(VIEW)
    rng = random.Random(7)
    for _ in range(10):
        resp.next_ra_delay(rng)
    resp.reset()
    assert resp.next_ra_delay(rng) <= 16.0


def test_ra_delays_take_randomness_only_from_rng():
    """Same seed, same delays: no hidden clock or global randomness."""
    a = [ndp.NdpResponder(VIEW).next_ra_delay(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]


# ---- disabled modes ----

def test_no_ndp_answers_nothing():
    """--no-ndp: neither NS nor RS are answered, no RA or NA is built."""
    view = replace(VIEW, ndp=False)
    resp = ndp.NdpResponder(view)
    assert _handle(_ns(GATEWAY), view=view) == []
    assert _handle(_rs(), view=view) == []
    assert resp.unsolicited_ra() is None
    assert resp.unsolicited_nas() == []


def test_no_ra_still_answers_ns():
    """--no-ra: neighbour resolution keeps working."""
    view = replace(VIEW, ra=False)
    assert _one(_handle(_ns(GATEWAY), view=view))[ICMPv6ND_NA].tgt == GATEWAY


def test_no_ra_ignores_rs_and_sends_no_unsolicited_ra():
    """--no-ra: no RA at all."""
    view = replace(VIEW, ra=False)
    assert _handle(_rs(), view=view) == []
    assert ndp.NdpResponder(view).unsolicited_ra() is None


def test_no_ipv6_answers_nothing():
    """Without IPv6 in the view there is nothing to advertise."""
    view = replace(VIEW, ip6=None)
    assert _handle(_ns(GATEWAY), view=view) == []
    assert _handle(_rs(), view=view) == []
    assert ndp.NdpResponder(view).unsolicited_ra() is None
    assert ndp.NdpResponder(view).unsolicited_nas() == []


# ---- messages not answered ----

def test_guest_na_ra_and_redirect_are_not_answered():
    """Advertisements and redirects from the guest need no reply."""
    na = bytes(Ether(src=GUEST_MAC_S) / IPv6(src=GUEST_LL, dst="ff02::1", hlim=255)
               / ICMPv6ND_NA(tgt=GUEST_LL, R=0, S=0, O=1))
    ra = bytes(Ether(src=GUEST_MAC_S) / IPv6(src=GUEST_LL, dst="ff02::1", hlim=255)
               / ICMPv6ND_RA())
    redirect = bytes(Ether(src=GUEST_MAC_S) / IPv6(src=GUEST_LL, dst=OUR_LL, hlim=255)
                     / ICMPv6ND_Redirect(tgt=OUR_LL, dst=GATEWAY))
    for frame in (na, ra, redirect):
        assert _handle(frame) == []


# ---- hostile input ----

def test_ns_with_hop_limit_64_is_dropped():
    """RFC 4861 7.1.1: an NS that crossed a router (hop limit < 255) is not trusted."""
    assert _handle(_ns(GATEWAY, hlim=64)) == []


def test_rs_with_hop_limit_64_is_dropped():
    """RFC 4861 6.1.1: an RS that crossed a router is not trusted."""
    assert _handle(_rs(hlim=64)) == []


def test_ns_with_bad_checksum_is_dropped():
    """A corrupted NS gets no answer."""
    frame = bytearray(_ns(GATEWAY))
    frame[14 + 40 + 2] ^= 0x01
    assert _handle(bytes(frame)) == []


def test_rs_with_bad_checksum_is_dropped():
    """A corrupted RS gets no answer."""
    frame = bytearray(_rs())
    frame[14 + 40 + 3] ^= 0x80
    assert _handle(bytes(frame)) == []


def test_checksum_0xffff_is_accepted_for_computed_zero():
    """0xffff and 0x0000 are the same one's-complement zero."""
    base = bytes(ICMPv6ND_RS())
    for filler in range(0x10000):
        l4 = base[:4] + struct.pack("!H", filler) + base[6:]
        pkt = _l4_packet(l4)
        if pkt.l4[2:4] == b"\x00\x00":
            flipped = IpPacket(6, pkt.src, pkt.dst, 58, 255,
                               memoryview(l4[:2] + b"\xff\xff" + l4[4:]))
            assert len(_handle_l4(flipped)) == 1
            return
    raise AssertionError("no filler gives a zero checksum")


def test_nonzero_code_is_dropped():
    """RFC 4861 6.1.1/7.1.1: ICMP code must be 0."""
    ns = bytes(ICMPv6ND_NS(tgt=GATEWAY, code=1))
    rs = bytes(ICMPv6ND_RS(code=1))
    assert _handle_l4(_l4_packet(ns, dst=_solicited_node(GATEWAY))) == []
    assert _handle_l4(_l4_packet(rs)) == []


def test_zero_length_option_is_dropped():
    """An option with length 0 makes the whole message invalid."""
    ns = bytes(ICMPv6ND_NS(tgt=GATEWAY)) + b"\x01\x00" + b"\x00" * 6
    rs = bytes(ICMPv6ND_RS()) + b"\x01\x00" + b"\x00" * 6
    assert _handle_l4(_l4_packet(ns, dst=_solicited_node(GATEWAY))) == []
    assert _handle_l4(_l4_packet(rs)) == []


def test_option_running_off_the_end_is_dropped():
    """An option claiming more bytes than remain makes the message invalid."""
    ns = bytes(ICMPv6ND_NS(tgt=GATEWAY)) + b"\x01\x02" + GUEST_MAC
    rs = bytes(ICMPv6ND_RS()) + b"\x01\x01" + GUEST_MAC[:5]
    assert _handle_l4(_l4_packet(ns, dst=_solicited_node(GATEWAY))) == []
    assert _handle_l4(_l4_packet(rs)) == []


def test_unknown_options_are_skipped():
    """Options of unknown type are ignored (RFC 4861 4.6), the message still answered."""
    rs = bytes(ICMPv6ND_RS()) + b"\xc8\x01" + b"\x00" * 6
    assert len(_handle_l4(_l4_packet(rs))) == 1


def test_truncated_ns_at_every_length_is_dropped():
    """An NS cut short of its header or inside its option (checksum fixed up) gets no answer."""
    full = bytes(ICMPv6ND_NS(tgt=GATEWAY) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_S))
    for cut in range(len(full)):
        if cut == 24:           # a complete NS without options: valid
            continue
        pkt = _l4_packet(full[:cut], dst=_solicited_node(GATEWAY))
        assert _handle_l4(pkt) == []


def test_truncated_rs_at_every_length_is_dropped():
    """An RS cut short of its header or inside its option (checksum fixed up) gets no answer."""
    full = bytes(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC_S))
    for cut in range(len(full)):
        if cut == 8:            # a complete RS without options: valid
            continue
        assert _handle_l4(_l4_packet(full[:cut])) == []


def test_truncated_frames_are_dropped_by_parser_or_responder():
    """Whole frames cut anywhere never produce an answer nor an exception."""
    for frame in (_ns(GATEWAY), _rs()):
        for cut in range(len(frame)):
            pkt = parse_ip(frame[:cut], ETH_P_IPV6)
            if pkt is not None:
                assert ndp.NdpResponder(VIEW).handle(frame[:cut], pkt, _guest()) == []


def test_multicast_source_is_dropped():
    """A multicast source address is never valid, so nothing is sent back to it."""
    ns = bytes(ICMPv6ND_NS(tgt=GATEWAY))
    assert _handle_l4(_l4_packet(ns, src="ff02::1", dst=_solicited_node(GATEWAY))) == []
    assert _handle_l4(_l4_packet(bytes(ICMPv6ND_RS()), src="ff02::1")) == []


def test_short_ethernet_frame_is_dropped():
    """A frame shorter than an Ethernet header cannot be answered."""
    pkt = _l4_packet(bytes(ICMPv6ND_RS()))
    assert ndp.NdpResponder(VIEW).handle(b"\x00" * 10, pkt, _guest()) == []


def test_non_icmpv6_packet_is_dropped():
    """A packet that is not ICMPv6 is never treated as NDP."""
    pkt = _l4_packet(bytes(ICMPv6ND_RS()))
    assert _handle_l4(pkt._replace(proto=17)) == []


def test_parse_options_bounds():
    """parse_options returns every option, or None on zero length or overrun."""
    assert ndp.parse_options(b"") == []
    assert ndp.parse_options(b"\x01\x01" + GUEST_MAC) == [(1, GUEST_MAC)]
    assert ndp.parse_options(b"\x01") is None
    assert ndp.parse_options(b"\x01\x00") is None
    assert ndp.parse_options(b"\x01\x02" + b"\x00" * 6) is None


@hypothesis_budget(4)
@given(st.binary(max_size=300), st.sampled_from([ndp.ICMPV6_NS, ndp.ICMPV6_RS]),
       st.sampled_from(["::", GUEST_LL, GUEST_GLOBAL]))
def test_random_bytes_after_header_never_raise(tail, kind, src):
    """Any bytes after the NS/RS header, with a valid checksum, give 0 or 1 well-formed reply."""
    head = bytes(ICMPv6ND_NS(tgt=GATEWAY)) if kind == ndp.ICMPV6_NS else bytes(ICMPv6ND_RS())
    dst = _solicited_node(GATEWAY) if kind == ndp.ICMPV6_NS else "ff02::2"
    replies = _handle_l4(_l4_packet(head + tail, src=src, dst=dst))
    assert len(replies) <= 1
    for reply in replies:
        assert Ether(reply)[IPv6].hlim == 255


@hypothesis_budget(4)
@given(st.binary(max_size=120), st.integers(0, 255), st.booleans())
def test_random_icmpv6_messages_never_raise(l4, hlim, fix):
    """Arbitrary ICMPv6 bytes and hop limits never raise; only hop limit 255 can be answered."""
    replies = _handle_l4(_l4_packet(l4, hlim=hlim, fix_checksum=fix))
    assert isinstance(replies, list)
    if hlim != 255:
        assert replies == []
