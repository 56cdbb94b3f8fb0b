# SPDX-License-Identifier: MIT
"""DHCPv6: one address with infinite lifetimes, DNS configuration, RFC 8415 message rules."""
from __future__ import annotations

import dataclasses
import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (DUID_LL, DUID_LLT, DHCP6_Advertise, DHCP6_Confirm, DHCP6_Decline,
                                DHCP6_InfoRequest, DHCP6_Rebind, DHCP6_Release, DHCP6_Renew,
                                DHCP6_Reply, DHCP6_Request, DHCP6_Solicit, DHCP6OptClientFQDN,
                                DHCP6OptClientId, DHCP6OptDNSDomains, DHCP6OptDNSServers,
                                DHCP6OptElapsedTime, DHCP6OptIA_NA, DHCP6OptIA_PD,
                                DHCP6OptIAAddress, DHCP6OptOptReq, DHCP6OptRapidCommit,
                                DHCP6OptServerId, DHCP6OptStatusCode)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from passt_py.link import dhcpv6
from passt_py.link.ethernet import parse_header
from passt_py.link.ip import parse_ip, parse_udp, udp_frame
from passt_py.link.netview import GuestState, Ip6View, NetView
from tests.conftest import hypothesis_budget

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = "52:54:00:12:34:56"
GUEST_LL = "fe80::5054:ff:fe12:3456"
V6 = ipaddress.IPv6Address
DUID_TIME = 812345678
OURS = "2001:db8:1::10"
STALE = "2001:db8:1::77"

VIEW = NetView(
    our_mac=OUR_MAC,
    mtu=65520,
    ip4=None,
    ip6=Ip6View(addr=V6(OURS), prefix_len=64, gateway=V6("fe80::1"), our_ll=V6("fe80::1"),
                dns=(V6("2001:db8::53"), V6("2001:db8::54"))),
    search=("example.com", "lab.example.com"),
    hostname="guest",
    fqdn="guest.example.com",
)
SERVER_DUID = DUID_LLT(hwtype=1, timeval=DUID_TIME, lladdr="9a:55:9a:55:9a:55")
CLIENT_DUID = DUID_LL(hwtype=1, lladdr=GUEST_MAC)


def _view(**changes: object) -> NetView:
    return dataclasses.replace(VIEW, **changes)


def _frame(msg: object) -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst="33:33:00:01:00:02")
                 / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / msg)


def _payload_frame(payload: bytes) -> bytes:
    """A well-formed frame around an arbitrary UDP payload for port 547."""
    return udp_frame(bytes.fromhex("333300010002"), bytes.fromhex("525400123456"), V6(GUEST_LL),
                     V6("ff02::1:2"), 546, 547, payload)


def _handle(frame: bytes, view: NetView = VIEW) -> bytes | None:
    """Run a frame through the demux's parsers and the server, as the loop does."""
    eth = parse_header(frame)
    if eth is None:
        return None
    pkt = parse_ip(frame, eth.ethertype)
    if pkt is None or pkt.proto != 17:
        return None
    udp = parse_udp(pkt.l4)
    if udp is None:
        return None
    return dhcpv6.Dhcpv6Server(view, DUID_TIME).handle(frame, pkt, udp, GuestState())


def _reply(msg: object, view: NetView = VIEW) -> Ether:
    raw = _handle(_frame(msg), view)
    assert raw is not None
    return Ether(raw)


def _raw_options(reply: Ether) -> list[tuple[int, bytes]]:
    """Top-level options of a reply as (code, data), parsed independently of the server."""
    data = bytes(reply[UDP].payload)[4:]
    out, pos = [], 0
    while pos < len(data):
        code, length = struct.unpack_from("!HH", data, pos)
        out.append((code, data[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return out


def _codes(reply: Ether) -> list[int]:
    """Top-level option codes of a reply, in order."""
    return [code for code, _ in _raw_options(reply)]


def _ia(iaid: int = 7, addr: str | None = None) -> DHCP6OptIA_NA:
    if addr is None:
        return DHCP6OptIA_NA(iaid=iaid, T1=0, T2=0)
    return DHCP6OptIA_NA(iaid=iaid, T1=0, T2=0,
                         ianaopts=[DHCP6OptIAAddress(addr=addr, preflft=0, validlft=0)])


def _solicit(*opts: object) -> object:
    msg = DHCP6_Solicit(trid=0xABCDEF) / DHCP6OptClientId(duid=CLIENT_DUID) / DHCP6OptElapsedTime()
    for opt in opts:
        msg = msg / opt
    return msg


def _with_server(cls: type, *opts: object, server: object = SERVER_DUID) -> object:
    msg = cls(trid=0x123456) / DHCP6OptClientId(duid=CLIENT_DUID) / DHCP6OptServerId(duid=server)
    for opt in opts:
        msg = msg / opt
    return msg


def _without_server(cls: type, *opts: object) -> object:
    msg = cls(trid=0x123456) / DHCP6OptClientId(duid=CLIENT_DUID)
    for opt in opts:
        msg = msg / opt
    return msg


def _status(layer: object) -> int:
    return layer[DHCP6OptStatusCode].statuscode


# --- SOLICIT / ADVERTISE ------------------------------------------------------------------

def test_solicit_gets_advertise():
    """SOLICIT is answered with an ADVERTISE carrying the transaction id."""
    reply = _reply(_solicit(_ia()))
    assert reply.haslayer(DHCP6_Advertise)
    assert reply[DHCP6_Advertise].trid == 0xABCDEF


def test_advertise_addressing():
    """From our link-local, port 547, to the client's link-local, port 546, at its MAC."""
    reply = _reply(_solicit(_ia()))
    assert reply[Ether].dst == GUEST_MAC
    assert reply[Ether].src == "9a:55:9a:55:9a:55"
    assert reply[IPv6].src == "fe80::1"
    assert reply[IPv6].dst == GUEST_LL
    assert reply[UDP].sport == 547
    assert reply[UDP].dport == 546


def test_checksum_verifies():
    """The UDP checksum of the reply is valid."""
    reply = _reply(_solicit(_ia()))
    udp_sum = reply[UDP].chksum
    del reply[UDP].chksum
    assert Ether(bytes(reply))[UDP].chksum == udp_sum


def test_server_identifier_is_duid_llt():
    """Server id: DUID-LLT, Ethernet, the given time, our MAC."""
    duid = _reply(_solicit(_ia()))[DHCP6OptServerId].duid
    assert duid.type == 1
    assert duid.hwtype == 1
    assert duid.timeval == DUID_TIME
    assert duid.lladdr == "9a:55:9a:55:9a:55"


def test_duid_time_wraps_to_32_bits():
    """A time beyond 32 bits is reduced modulo 2^32."""
    assert dhcpv6.duid_llt(OUR_MAC, (1 << 32) + 5)[4:8] == b"\x00\x00\x00\x05"


def test_client_identifier_is_echoed():
    """The client's DUID comes back unchanged."""
    duid = _reply(_solicit(_ia()))[DHCP6OptClientId].duid
    assert bytes(duid) == bytes(CLIENT_DUID)


def test_ia_na_holds_our_address_forever():
    """IA_NA: the client's IAID, infinite T1/T2, our address with infinite lifetimes."""
    reply = _reply(_solicit(_ia(iaid=0x01020304)))
    ia = reply[DHCP6OptIA_NA]
    assert ia.iaid == 0x01020304
    assert ia.T1 == 0xFFFFFFFF
    assert ia.T2 == 0xFFFFFFFF
    addr = ia[DHCP6OptIAAddress]
    assert addr.addr == OURS
    assert addr.preflft == 0xFFFFFFFF
    assert addr.validlft == 0xFFFFFFFF


def test_solicit_hint_is_overridden():
    """A SOLICIT hinting at another address still gets ours."""
    reply = _reply(_solicit(_ia(addr=STALE)))
    assert reply[DHCP6OptIAAddress].addr == OURS


def test_dns_servers_option():
    """Option 23 lists the configured DNS servers."""
    assert _reply(_solicit(_ia()))[DHCP6OptDNSServers].dnsservers == ["2001:db8::53",
                                                                      "2001:db8::54"]


def test_domain_list_option():
    """Option 24 lists the search domains, uncompressed wire format."""
    reply = _reply(_solicit(_ia()))
    assert reply[DHCP6OptDNSDomains].dnsdomains == ["example.com.", "lab.example.com."]
    assert dict(_raw_options(reply))[24] == (b"\x07example\x03com\x00"
                                             b"\x03lab\x07example\x03com\x00")


def test_fqdn_option():
    """Option 39: N set (we do no updates), fully qualified name."""
    fqdn = _reply(_solicit(_ia()))[DHCP6OptClientFQDN]
    assert fqdn.flags == dhcpv6.FQDN_N
    assert fqdn.fqdn == b"guest.example.com."


def test_fqdn_override_flag_when_client_wanted_updates():
    """A client asking for server updates (S) is told we overrode it (O)."""
    reply = _reply(_solicit(_ia(), DHCP6OptClientFQDN(flags=1, fqdn="guest")))
    assert reply[DHCP6OptClientFQDN].flags == dhcpv6.FQDN_N | dhcpv6.FQDN_O


def test_option_order():
    """Server id, client id, IA_NA, then DNS, domains and FQDN."""
    assert _codes(_reply(_solicit(_ia()))) == [2, 1, 3, 23, 24, 39]


def test_oro_does_not_change_what_is_sent():
    """Configuration is sent whether or not the client listed it."""
    reply = _reply(_solicit(_ia(), DHCP6OptOptReq(reqopts=[23])))
    assert _codes(reply) == [2, 1, 3, 23, 24, 39]


def test_no_dns_when_disabled():
    """--no-dhcp-dns keeps option 23 out."""
    assert 23 not in _codes(_reply(_solicit(_ia()), _view(dhcp_dns=False)))


def test_no_dns_without_servers():
    """No configured IPv6 DNS server, no option 23."""
    assert VIEW.ip6 is not None
    view = _view(ip6=dataclasses.replace(VIEW.ip6, dns=()))
    assert 23 not in _codes(_reply(_solicit(_ia()), view))


def test_no_domains_when_disabled():
    """--no-dhcp-search keeps option 24 out."""
    assert 24 not in _codes(_reply(_solicit(_ia()), _view(dhcp_search=False)))


def test_no_fqdn_unless_configured():
    """Option 39 needs a configured FQDN."""
    assert 39 not in _codes(_reply(_solicit(_ia()), _view(fqdn=None)))


def test_rapid_commit_gets_reply():
    """SOLICIT with rapid commit gets a REPLY carrying option 14 and the address."""
    reply = _reply(_solicit(_ia(), DHCP6OptRapidCommit()))
    assert reply.haslayer(DHCP6_Reply)
    assert reply.haslayer(DHCP6OptRapidCommit)
    assert reply[DHCP6OptIAAddress].addr == OURS


def test_second_ia_na_gets_no_addrs_avail():
    """Only the first IA_NA gets the address; another gets NoAddrsAvail."""
    reply = _reply(_solicit(_ia(iaid=1), _ia(iaid=2)))
    first = reply[DHCP6OptIA_NA]
    second = reply.getlayer(DHCP6OptIA_NA, 2)
    assert first.iaid == 1
    assert first[DHCP6OptIAAddress].addr == OURS
    assert second.iaid == 2
    assert _status(second) == dhcpv6.STATUS_NO_ADDRS_AVAIL
    assert not second.haslayer(DHCP6OptIAAddress)


def test_solicit_without_ia_na_gets_no_addrs_avail():
    """A SOLICIT for no IA_NA (e.g. only IA_PD) gets a top-level NoAddrsAvail."""
    reply = _reply(_solicit(DHCP6OptIA_PD(iaid=3)))
    assert reply.haslayer(DHCP6_Advertise)
    assert _status(reply) == dhcpv6.STATUS_NO_ADDRS_AVAIL
    assert _codes(reply) == [2, 1, 13]


def test_solicit_with_server_id_is_dropped():
    """SOLICIT must not carry a server identifier."""
    msg = DHCP6_Solicit() / DHCP6OptClientId(duid=CLIENT_DUID) / DHCP6OptServerId(
        duid=SERVER_DUID) / _ia()
    assert _handle(_frame(msg)) is None


def test_solicit_without_client_id_is_dropped():
    """SOLICIT must carry a client identifier."""
    assert _handle(_frame(DHCP6_Solicit() / _ia())) is None


# --- REQUEST / RENEW / REBIND / CONFIRM ------------------------------------------------------

def test_request_gets_reply_with_address():
    """REQUEST naming us gets a REPLY with the address."""
    reply = _reply(_with_server(DHCP6_Request, _ia(addr=OURS)))
    assert reply.haslayer(DHCP6_Reply)
    assert reply[DHCP6_Reply].trid == 0x123456
    assert reply[DHCP6OptIAAddress].addr == OURS
    assert reply[DHCP6OptIAAddress].validlft == 0xFFFFFFFF


def test_request_without_address_gets_address():
    """A REQUEST whose IA_NA is empty gets our address."""
    reply = _reply(_with_server(DHCP6_Request, _ia()))
    assert reply[DHCP6OptIAAddress].addr == OURS


def test_request_for_other_server_is_dropped():
    """A REQUEST with someone else's server id is not for us."""
    other = DUID_LLT(hwtype=1, timeval=1, lladdr="02:00:00:00:00:01")
    assert _handle(_frame(_with_server(DHCP6_Request, _ia(), server=other))) is None


def test_request_without_server_id_is_dropped():
    """REQUEST must carry a server identifier."""
    assert _handle(_frame(_without_server(DHCP6_Request, _ia()))) is None


def test_request_for_foreign_address_gets_not_on_link():
    """REQUEST for an address that is not ours: the IA_NA comes back with NotOnLink."""
    reply = _reply(_with_server(DHCP6_Request, _ia(iaid=9, addr=STALE)))
    ia = reply[DHCP6OptIA_NA]
    assert ia.iaid == 9
    assert _status(ia) == dhcpv6.STATUS_NOT_ON_LINK
    assert not ia.haslayer(DHCP6OptIAAddress)


def test_renew_gets_reply():
    """RENEW naming us gets the address again."""
    reply = _reply(_with_server(DHCP6_Renew, _ia(addr=OURS)))
    assert reply.haslayer(DHCP6_Reply)
    assert reply[DHCP6OptIAAddress].addr == OURS


def test_renew_of_stale_address_swaps_it():
    """RENEW of a foreign address: ours with infinite lifetimes, the stale one with 0."""
    reply = _reply(_with_server(DHCP6_Renew, _ia(addr=STALE)))
    ia = reply[DHCP6OptIA_NA]
    first = ia.getlayer(DHCP6OptIAAddress, 1)
    second = ia.getlayer(DHCP6OptIAAddress, 2)
    assert first.addr == OURS
    assert first.validlft == 0xFFFFFFFF
    assert second.addr == STALE
    assert second.preflft == 0
    assert second.validlft == 0


def test_renew_second_ia_gets_no_binding():
    """A second IA_NA in RENEW has no binding here."""
    reply = _reply(_with_server(DHCP6_Renew, _ia(iaid=1, addr=OURS), _ia(iaid=2)))
    assert _status(reply.getlayer(DHCP6OptIA_NA, 2)) == dhcpv6.STATUS_NO_BINDING


def test_rebind_gets_reply():
    """REBIND (no server id) gets the address."""
    reply = _reply(_without_server(DHCP6_Rebind, _ia(addr=OURS)))
    assert reply.haslayer(DHCP6_Reply)
    assert reply[DHCP6OptIAAddress].addr == OURS


def test_rebind_with_server_id_is_dropped():
    """REBIND must not carry a server identifier."""
    assert _handle(_frame(_with_server(DHCP6_Rebind, _ia(addr=OURS)))) is None


def test_confirm_our_address_gets_success():
    """CONFIRM of our address: REPLY with status Success and no IA."""
    reply = _reply(_without_server(DHCP6_Confirm, _ia(addr=OURS)))
    assert reply.haslayer(DHCP6_Reply)
    assert _status(reply) == dhcpv6.STATUS_SUCCESS
    assert _codes(reply) == [2, 1, 13]


def test_confirm_foreign_address_gets_not_on_link():
    """CONFIRM of another address: top-level NotOnLink."""
    reply = _reply(_without_server(DHCP6_Confirm, _ia(addr=STALE)))
    assert _status(reply) == dhcpv6.STATUS_NOT_ON_LINK
    assert not reply.haslayer(DHCP6OptIA_NA)


def test_confirm_without_addresses_is_not_answered():
    """CONFIRM listing no address cannot be judged and gets no reply."""
    assert _handle(_frame(_without_server(DHCP6_Confirm, _ia()))) is None


def test_confirm_with_server_id_is_dropped():
    """CONFIRM must not carry a server identifier."""
    assert _handle(_frame(_with_server(DHCP6_Confirm, _ia(addr=OURS)))) is None


def test_release_gets_success():
    """RELEASE naming us gets a REPLY with status Success."""
    reply = _reply(_with_server(DHCP6_Release, _ia(addr=OURS)))
    assert reply.haslayer(DHCP6_Reply)
    assert _status(reply) == dhcpv6.STATUS_SUCCESS


def test_decline_gets_success():
    """DECLINE naming us gets a REPLY with status Success."""
    reply = _reply(_with_server(DHCP6_Decline, _ia(addr=OURS)))
    assert _status(reply) == dhcpv6.STATUS_SUCCESS


# --- INFORMATION-REQUEST ------------------------------------------------------------------

def test_information_request_gets_dns_only():
    """INFORMATION-REQUEST: server id, client id, DNS servers and domains, nothing else."""
    reply = _reply(DHCP6_InfoRequest(trid=0x010203) / DHCP6OptClientId(duid=CLIENT_DUID))
    assert reply.haslayer(DHCP6_Reply)
    assert reply[DHCP6_Reply].trid == 0x010203
    assert _codes(reply) == [2, 1, 23, 24]
    assert reply[DHCP6OptDNSServers].dnsservers == ["2001:db8::53", "2001:db8::54"]


def test_information_request_without_client_id():
    """The client id is optional in INFORMATION-REQUEST."""
    reply = _reply(DHCP6_InfoRequest(trid=1))
    assert _codes(reply) == [2, 23, 24]


def test_information_request_with_ia_is_dropped():
    """INFORMATION-REQUEST must not carry an IA."""
    assert _handle(_frame(DHCP6_InfoRequest() / _ia())) is None


def test_information_request_for_other_server_is_dropped():
    """An INFORMATION-REQUEST naming another server is not for us."""
    other = DUID_LLT(hwtype=1, timeval=1, lladdr="02:00:00:00:00:01")
    assert _handle(_frame(DHCP6_InfoRequest() / DHCP6OptServerId(duid=other))) is None


# --- disabled, malformed ------------------------------------------------------------------

def test_disabled_is_silent():
    """--no-dhcpv6: nothing is answered."""
    assert _handle(_frame(_solicit(_ia())), _view(dhcpv6=False)) is None


def test_no_ipv6_is_silent():
    """Without IPv6 there is nothing to give."""
    assert _handle(_frame(_solicit(_ia())), _view(ip6=None)) is None


def test_server_and_relay_types_are_ignored():
    """ADVERTISE, REPLY, RELAY-FORW and unknown types from the guest get nothing."""
    for mtype in (2, 7, 10, 12, 13, 99):
        payload = bytes([mtype, 0, 0, 1]) + bytes(DHCP6OptClientId(duid=CLIENT_DUID))
        assert _handle(_payload_frame(payload)) is None


def test_payload_builder_gives_a_valid_solicit():
    """Control for the malformed cases below: a raw well-formed SOLICIT is answered."""
    payload = bytes(_solicit(_ia()))
    assert _handle(_payload_frame(payload)) is not None


def test_option_running_off_the_end_is_dropped():
    """A top-level option longer than the message drops it."""
    payload = bytes(_solicit(_ia())) + b"\x00\x17\x00\x10" + bytes(8)
    assert _handle(_payload_frame(payload)) is None


def test_short_ia_na_is_dropped():
    """An IA_NA shorter than its 12 fixed bytes drops the message."""
    payload = bytes(_solicit()) + b"\x00\x03\x00\x08" + bytes(8)
    assert _handle(_payload_frame(payload)) is None


def test_short_ia_address_is_dropped():
    """An IA address option shorter than 24 bytes drops the message."""
    inner = b"\x00\x05\x00\x10" + V6(OURS).packed
    payload = bytes(_solicit()) + b"\x00\x03" + (12 + len(inner)).to_bytes(2, "big") \
        + bytes(12) + inner
    assert _handle(_payload_frame(payload)) is None


def test_ia_suboption_running_off_the_end_is_dropped():
    """A sub-option longer than its IA_NA drops the message."""
    inner = b"\x00\x05\x00\x30" + bytes(24)
    payload = bytes(_solicit()) + b"\x00\x03" + (12 + len(inner)).to_bytes(2, "big") \
        + bytes(12) + inner
    assert _handle(_payload_frame(payload)) is None


def test_payload_truncated_at_every_length():
    """Every prefix of a request is handled without an exception; short ones are dropped."""
    payload = bytes(_with_server(DHCP6_Request, _ia(addr=OURS)))
    for cut in range(len(payload)):
        result = _handle(_payload_frame(payload[:cut]))
        if cut < 4:
            assert result is None


def test_frame_truncated_at_every_length():
    """Every prefix of a whole request frame is handled without an exception."""
    frame = _frame(_solicit(_ia()))
    for cut in range(len(frame)):
        assert _handle(frame[:cut]) is None


def _length_positions(payload: bytes) -> list[int]:
    """Offsets of the length fields of top-level options and IA_NA sub-options."""
    out, pos = [], 4
    while pos < len(payload):
        code, length = struct.unpack_from("!HH", payload, pos)
        out.append(pos + 2)
        if code == 3:
            sub = pos + 4 + 12
            while sub < pos + 4 + length:
                out.append(sub + 2)
                sub += 4 + struct.unpack_from("!H", payload, sub + 2)[0]
        pos += 4 + length
    return out


@hypothesis_budget(3)
@given(index=st.integers(min_value=0, max_value=40), length=st.integers(0, 0xFFFF))
def test_corrupt_option_length_never_raises(index: int, length: int):
    """Rewriting any option length gives a reply or None, never an exception."""
    payload = bytearray(bytes(_with_server(DHCP6_Request, _ia(addr=OURS),
                                           DHCP6OptClientFQDN(flags=1, fqdn="guest"))))
    positions = _length_positions(bytes(payload))
    where = positions[index % len(positions)]
    struct.pack_into("!H", payload, where, length)
    result = _handle(_payload_frame(bytes(payload)))
    if where + 2 + length > len(payload):
        assert result is None


@hypothesis_budget(3)
@given(st.binary(min_size=0, max_size=400))
def test_random_options_never_raise(tail: bytes):
    """Arbitrary bytes after a SOLICIT header never raise."""
    _handle(_payload_frame(b"\x01\x00\x00\x01" + tail))


@hypothesis_budget(2)
@given(st.sampled_from([1, 3, 4, 5, 6, 8, 9, 11]), st.binary(min_size=0, max_size=300))
def test_random_messages_never_raise(mtype: int, tail: bytes):
    """Arbitrary options under every client message type never raise."""
    head = bytes([mtype, 1, 2, 3]) + bytes(DHCP6OptClientId(duid=CLIENT_DUID))
    _handle(_payload_frame(head + tail))

