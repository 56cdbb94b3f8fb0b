# SPDX-License-Identifier: MIT
"""DHCP: one infinite lease of the configured address, options as the client asked for them."""
from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from passt_py.link import dhcp
from passt_py.link.ethernet import parse_header
from passt_py.link.ip import parse_ip, parse_udp, udp_frame
from passt_py.link.netview import GuestState, Ip4View, NetView
from tests.conftest import hypothesis_budget

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = "52:54:00:12:34:56"
V4 = ipaddress.IPv4Address

VIEW = NetView(
    our_mac=OUR_MAC,
    mtu=65520,
    ip4=Ip4View(addr=V4("192.0.2.10"), prefix_len=24, gateway=V4("192.0.2.1"),
                dns=(V4("192.0.2.53"), V4("198.51.100.53"))),
    ip6=None,
    search=("example.com", "lab.example.com", "example.org"),
    hostname="guest",
    fqdn="guest.example.com",
)


def _view(**changes: object) -> NetView:
    return dataclasses.replace(VIEW, **changes)


def _ip4(**changes: object) -> Ip4View:
    assert VIEW.ip4 is not None
    return dataclasses.replace(VIEW.ip4, **changes)


def _request(options: list[object] | None, src: str = "0.0.0.0", **bootp: object) -> bytes:
    """A client frame; ``options`` None means a BOOTP request (cookie but no options)."""
    fields = {"chaddr": bytes.fromhex("525400123456"), "xid": 0x12345678}
    fields.update(bootp)
    msg = BOOTP(**fields) / DHCP(options=options if options is not None else ["end"])
    return bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
                 / IP(src=src, dst="255.255.255.255") / UDP(sport=68, dport=67) / msg)


def _raw_request(options: bytes, **bootp: object) -> bytes:
    """A client frame whose options field (after the cookie) is ``options`` verbatim."""
    fields = {"chaddr": bytes.fromhex("525400123456"), "xid": 0x12345678}
    fields.update(bootp)
    return _payload_frame(bytes(BOOTP(**fields)) + dhcp.MAGIC_COOKIE + options)


def _payload_frame(payload: bytes) -> bytes:
    """A well-formed frame around an arbitrary UDP payload for port 67."""
    return udp_frame(b"\xff" * 6, bytes.fromhex("525400123456"), V4("0.0.0.0"),
                     V4("255.255.255.255"), 68, 67, payload)


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
    return dhcp.DhcpServer(view).handle(frame, pkt, udp, GuestState())


def _reply(frame: bytes, view: NetView = VIEW) -> Ether:
    raw = _handle(frame, view)
    assert raw is not None
    return Ether(raw)


def _discover(*extra: object, **bootp: object) -> bytes:
    return _request([("message-type", "discover"), *extra, "end"], **bootp)


def _raw_options(reply: Ether) -> list[tuple[int, bytes]]:
    """The options field of a reply as (code, data), parsed independently of the server."""
    data = bytes(reply[BOOTP])[240:]
    return _walk(data)


def _walk(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data) and data[pos] != 255:
        if data[pos] == 0:
            pos += 1
            continue
        code, length = data[pos], data[pos + 1]
        out.append((code, data[pos + 2:pos + 2 + length]))
        pos += 2 + length
    return out


def _concat(options: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for code, data in options:
        out[code] = out.get(code, b"") + data
    return out


def _opts(reply: Ether) -> dict[str, object]:
    """Scapy's decoding of the options, by name."""
    out: dict[str, object] = {}
    for opt in reply[DHCP].options:
        if isinstance(opt, tuple):
            out[opt[0]] = opt[1:] if len(opt) > 2 else opt[1]
    return out


def _decode_names(data: bytes) -> list[str]:
    """RFC 1035 names with compression pointers relative to the start of ``data``."""
    names, pos = [], 0
    while pos < len(data):
        labels, cur, jumped, hops = [], pos, False, 0
        while True:
            length = data[cur]
            if length & 0xC0 == 0xC0:
                if not jumped:
                    pos = cur + 2
                jumped = True
                cur = ((length & 0x3F) << 8) | data[cur + 1]
                hops += 1
                assert hops < 64
                continue
            if length == 0:
                if not jumped:
                    pos = cur + 1
                break
            labels.append(data[cur + 1:cur + 1 + length].decode())
            cur += 1 + length
        names.append(".".join(labels))
    return names


# --- DISCOVER / OFFER ---------------------------------------------------------------------

def test_discover_gets_offer():
    """A DISCOVER is answered with an OFFER of the configured address."""
    reply = _reply(_discover())
    assert _opts(reply)["message-type"] == dhcp.OFFER
    assert reply[BOOTP].yiaddr == "192.0.2.10"


def test_offer_header_fields():
    """The fixed fields are those of RFC 2131 table 3 for an OFFER."""
    reply = _reply(_discover(giaddr="0.0.0.0", secs=7, hops=1))
    bootp = reply[BOOTP]
    assert bootp.op == 2
    assert bootp.htype == 1
    assert bootp.hlen == 6
    assert bootp.hops == 0
    assert bootp.xid == 0x12345678
    assert bootp.secs == 0
    assert bootp.flags == 0
    assert bootp.ciaddr == "0.0.0.0"
    assert bootp.yiaddr == "192.0.2.10"
    assert bootp.siaddr == "0.0.0.0"
    assert bootp.giaddr == "0.0.0.0"
    assert bootp.chaddr == bytes.fromhex("525400123456") + bytes(10)
    assert bootp.sname == bytes(64)
    assert bootp.file == bytes(128)


def test_offer_is_unicast_to_offered_address_and_chaddr():
    """Without the broadcast flag the reply goes to yiaddr at chaddr, from the gateway."""
    reply = _reply(_discover())
    assert reply[Ether].dst == GUEST_MAC
    assert reply[Ether].src == "9a:55:9a:55:9a:55"
    assert reply[IP].src == "192.0.2.1"
    assert reply[IP].dst == "192.0.2.10"
    assert reply[UDP].sport == 67
    assert reply[UDP].dport == 68


def test_checksums_verify():
    """IP and UDP checksums of the reply are valid."""
    raw = _handle(_discover())
    assert raw is not None
    reply = Ether(raw)
    ip_sum, udp_sum = reply[IP].chksum, reply[UDP].chksum
    del reply[IP].chksum
    del reply[UDP].chksum
    rebuilt = Ether(bytes(reply))
    assert rebuilt[IP].chksum == ip_sum
    assert rebuilt[UDP].chksum == udp_sum


def test_broadcast_flag_gets_broadcast_reply():
    """A client that set the broadcast flag gets the reply at the broadcast addresses."""
    reply = _reply(_discover(flags=0x8000))
    assert reply[Ether].dst == "ff:ff:ff:ff:ff:ff"
    assert reply[IP].dst == "255.255.255.255"
    assert reply[BOOTP].flags == 0x8000


def test_ciaddr_wins_over_broadcast_flag():
    """A client with an address gets a unicast reply even with the broadcast flag set."""
    reply = _reply(_request([("message-type", "request"), "end"], src="192.0.2.10",
                            ciaddr="192.0.2.10", flags=0x8000))
    assert reply[Ether].dst == GUEST_MAC
    assert reply[IP].dst == "192.0.2.10"


def test_giaddr_is_copied():
    """giaddr is echoed even though no relay can exist on this link."""
    reply = _reply(_discover(giaddr="203.0.113.1"))
    assert reply[BOOTP].giaddr == "203.0.113.1"


def test_offer_carries_each_configured_option():
    """Mask, router, DNS, hostname, MTU, lease, server id and FQDN are all there."""
    opts = _opts(_reply(_discover()))
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == "192.0.2.1"
    assert opts["name_server"] == ("192.0.2.53", "198.51.100.53")
    assert opts["hostname"] == b"guest"
    assert opts["interface-mtu"] == 65520
    assert opts["lease_time"] == 0xFFFFFFFF
    assert opts["server_id"] == "192.0.2.1"
    assert "client_FQDN" in opts


def test_type_and_server_id_come_first():
    """Option 53 then option 54 open the options field."""
    codes = [c for c, _ in _raw_options(_reply(_discover()))]
    assert codes[:2] == [53, 54]


def test_options_follow_parameter_request_list_order():
    """Requested options come in the client's order, after 53/54, then the rest."""
    reply = _reply(_discover(("param_req_list", [119, 6, 26, 1, 3])))
    codes = [c for c, _ in _raw_options(reply)]
    assert codes[:7] == [53, 54, 119, 6, 26, 1, 3]
    assert set(codes[7:]) == {12, 51, 81}


def test_unknown_and_repeated_requests_do_not_add_options():
    """Codes we do not send and duplicates in the request list are skipped."""
    reply = _reply(_discover(("param_req_list", [42, 3, 3, 1, 200])))
    codes = [c for c, _ in _raw_options(reply)]
    assert codes[:4] == [53, 54, 3, 1]
    assert codes.count(3) == 1
    assert 42 not in codes


def test_no_dns_option_when_disabled():
    """--no-dhcp-dns keeps option 6 out."""
    codes = [c for c, _ in _raw_options(_reply(_discover(), _view(dhcp_dns=False)))]
    assert 6 not in codes


def test_no_dns_option_without_servers():
    """With no DNS servers configured there is no option 6."""
    codes = [c for c, _ in _raw_options(_reply(_discover(), _view(ip4=_ip4(dns=()))))]
    assert 6 not in codes


def test_no_search_option_when_disabled():
    """--no-dhcp-search keeps option 119 out."""
    codes = [c for c, _ in _raw_options(_reply(_discover(), _view(dhcp_search=False)))]
    assert 119 not in codes


def test_no_hostname_or_fqdn_unless_configured():
    """Options 12 and 81 need a configured hostname and FQDN."""
    codes = [c for c, _ in _raw_options(_reply(_discover(), _view(hostname=None, fqdn=None)))]
    assert 12 not in codes
    assert 81 not in codes


def test_client_identifier_is_echoed():
    """Option 61 comes back unchanged (RFC 6842)."""
    reply = _reply(_discover(("client_id", b"\x01\x52\x54\x00\x12\x34\x56")))
    assert _concat(_raw_options(reply))[61] == b"\x01\x52\x54\x00\x12\x34\x56"


def test_reply_is_at_least_300_bytes():
    """The BOOTP message is padded to the 300-byte minimum."""
    reply = _reply(_discover(), _view(hostname=None, fqdn=None, search=()))
    assert len(bytes(reply[UDP].payload)) >= 300


# --- domain search, FQDN, classless routes -------------------------------------------------

def test_search_list_decodes_to_configured_names():
    """Option 119 decodes, following pointers, to the configured search list."""
    data = _concat(_raw_options(_reply(_discover())))[119]
    assert _decode_names(data) == ["example.com", "lab.example.com", "example.org"]


def test_search_list_is_compressed():
    """Repeated suffixes are replaced by pointers (RFC 3397 uses RFC 1035 compression)."""
    data = _concat(_raw_options(_reply(_discover())))[119]
    assert data == (b"\x07example\x03com\x00" + b"\x03lab\xc0\x00"
                    + b"\x07example\x03org\x00")


def test_fqdn_option_says_no_updates_in_wire_format():
    """Option 81: N and E set, RCODEs 255, name in canonical wire format."""
    data = _concat(_raw_options(_reply(_discover())))[81]
    assert data[0] == dhcp.FQDN_N | dhcp.FQDN_E
    assert data[1] == 255
    assert data[2] == 255
    assert data[3:] == b"\x05guest\x07example\x03com\x00"


def test_fqdn_override_flag_when_client_wanted_updates():
    """A client asking us to update DNS (S) is told we overrode it (O)."""
    reply = _reply(_discover(("client_FQDN", b"\x05\x00\x00\x05guest\x00")))
    data = _concat(_raw_options(reply))[81]
    assert data[0] == dhcp.FQDN_N | dhcp.FQDN_E | dhcp.FQDN_O


def test_fqdn_ascii_when_client_used_ascii():
    """A client that sent the deprecated ASCII encoding (E clear) gets ASCII back."""
    reply = _reply(_discover(("client_FQDN", b"\x00\x00\x00guest")))
    data = _concat(_raw_options(reply))[81]
    assert data[0] == dhcp.FQDN_N
    assert data[3:] == b"guest.example.com"


def test_no_classless_routes_when_gateway_on_subnet():
    """Option 121 is only needed when the gateway is outside the guest's subnet."""
    codes = [c for c, _ in _raw_options(_reply(_discover()))]
    assert 121 not in codes


def test_classless_routes_when_gateway_off_subnet():
    """An off-subnet gateway gets a /32 on-link route and the default route via it."""
    view = _view(ip4=_ip4(gateway=V4("203.0.113.1")))
    reply = _reply(_discover(), view)
    assert list(_opts(reply)["classless_static_routes"]) == ["203.0.113.1/32:0.0.0.0",
                                                             "0.0.0.0/0:203.0.113.1"]
    raw = _concat(_raw_options(reply))[121]
    assert raw == bytes([32, 203, 0, 113, 1, 0, 0, 0, 0, 0, 203, 0, 113, 1])


def test_router_still_sent_when_gateway_off_subnet():
    """Clients without RFC 3442 support still get option 3."""
    view = _view(ip4=_ip4(gateway=V4("203.0.113.1")))
    assert _opts(_reply(_discover(), view))["router"] == "203.0.113.1"


# --- long options and overload -------------------------------------------------------------

def test_long_option_is_split_in_order():
    """An option over 255 bytes becomes several instances that concatenate back (RFC 3396)."""
    servers = tuple(V4(f"10.1.{i // 200}.{i % 200 + 1}") for i in range(80))
    view = _view(ip4=_ip4(dns=servers))
    reply = _reply(_discover(("max_dhcp_size", 1500)), view)
    raw = _raw_options(reply)
    parts = [data for code, data in raw if code == 6]
    assert [len(p) for p in parts] == [255, 65]
    assert b"".join(parts) == b"".join(s.packed for s in servers)


def test_overload_uses_file_and_sname_beyond_576():
    """Options that do not fit in 576 bytes spill into file, then sname, with option 52."""
    search = tuple(f"host{i}.sub{i}.example{i}.test{i}" for i in range(12))
    view = _view(search=search)
    raw = _handle(_discover(), view)
    assert raw is not None
    reply = Ether(raw)
    assert len(reply[IP]) <= 576
    options = _raw_options(reply)
    overload = _concat(options)[52]
    assert overload[0] & dhcp.OVERLOAD_FILE
    areas = options + _walk(bytes(reply[BOOTP].file))
    if overload[0] & dhcp.OVERLOAD_SNAME:
        areas += _walk(bytes(reply[BOOTP].sname))
    merged = _concat(areas)
    assert _decode_names(merged[119]) == list(search)
    assert merged[1] == bytes([255, 255, 255, 0])
    assert merged[6] == bytes([192, 0, 2, 53, 198, 51, 100, 53])


def test_max_size_option_avoids_overload():
    """A client accepting larger messages (option 57) gets everything in the options field."""
    search = tuple(f"host{i}.sub{i}.example{i}.test{i}" for i in range(12))
    reply = _reply(_discover(("max_dhcp_size", 1500)), _view(search=search))
    assert 52 not in _concat(_raw_options(reply))
    assert reply[BOOTP].file == bytes(128)


def test_options_that_cannot_fit_are_left_out():
    """Configuration too big for any 576-byte layout loses what does not fit, not the reply."""
    search = tuple(f"host{i}.sub{i}.example{i}.test{i}" for i in range(40))
    reply = _reply(_discover(), _view(search=search))
    assert len(reply[IP]) <= 576
    options = _raw_options(reply)
    areas = options + _walk(bytes(reply[BOOTP].file)) + _walk(bytes(reply[BOOTP].sname))
    merged = _concat(areas)
    assert 119 not in merged
    for code in (53, 54, 1, 3, 6, 12, 26, 51, 81):
        assert code in merged


def test_requested_option_wins_the_room():
    """When room runs out, what the client asked for goes in before what it did not."""
    servers = tuple(V4(f"10.1.{i // 200}.{i % 200 + 1}") for i in range(100))
    search = tuple(f"host{i}.sub{i}.example{i}.test{i}" for i in range(12))
    view = _view(ip4=_ip4(dns=servers), search=search)
    for wanted, dropped in ((119, 6), (6, 119)):
        reply = _reply(_discover(("param_req_list", [wanted])), view)
        options = _raw_options(reply)
        areas = options + _walk(bytes(reply[BOOTP].file)) + _walk(bytes(reply[BOOTP].sname))
        merged = _concat(areas)
        assert wanted in merged
        assert dropped not in merged
        assert len(reply[IP]) <= 576


def test_bootp_reply_fits_in_576():
    """BOOTP (no overload) leaves out what does not fit in the options field."""
    search = tuple(f"host{i}.sub{i}.example{i}.test{i}" for i in range(40))
    reply = _reply(_request(None), _view(search=search))
    assert len(reply[IP]) <= 576
    assert 1 in _concat(_raw_options(reply))


# --- rapid commit, REQUEST, INFORM, others --------------------------------------------------

def test_rapid_commit_discover_gets_ack():
    """DISCOVER with option 80 is answered with an ACK carrying option 80 (RFC 4039)."""
    reply = _reply(_discover(("rapid_commit", b"")))
    opts = _opts(reply)
    assert opts["message-type"] == dhcp.ACK
    assert opts["rapid_commit"] == b""
    assert reply[BOOTP].yiaddr == "192.0.2.10"


def test_request_selecting_gets_ack():
    """A REQUEST naming us and our address is acknowledged."""
    reply = _reply(_request([("message-type", "request"), ("server_id", "192.0.2.1"),
                             ("requested_addr", "192.0.2.10"), "end"]))
    assert _opts(reply)["message-type"] == dhcp.ACK
    assert _opts(reply)["lease_time"] == 0xFFFFFFFF
    assert reply[BOOTP].yiaddr == "192.0.2.10"
    assert reply[BOOTP].ciaddr == "0.0.0.0"


def test_request_for_another_server_is_ignored():
    """A REQUEST with someone else's server identifier is not for us."""
    frame = _request([("message-type", "request"), ("server_id", "192.0.2.99"),
                      ("requested_addr", "192.0.2.10"), "end"])
    assert _handle(frame) is None


def test_request_for_another_address_gets_nak():
    """INIT-REBOOT with an address that is not ours is refused."""
    reply = _reply(_request([("message-type", "request"),
                             ("requested_addr", "192.0.2.77"), "end"]))
    assert _opts(reply)["message-type"] == dhcp.NAK
    assert reply[BOOTP].yiaddr == "0.0.0.0"
    assert reply[BOOTP].ciaddr == "0.0.0.0"


def test_nak_is_broadcast_and_minimal():
    """A NAK goes to broadcast and carries only type, server id and a message."""
    reply = _reply(_request([("message-type", "request"),
                             ("requested_addr", "192.0.2.77"), "end"]))
    assert reply[Ether].dst == "ff:ff:ff:ff:ff:ff"
    assert reply[IP].dst == "255.255.255.255"
    assert [c for c, _ in _raw_options(reply)] == [53, 54, 56]


def test_renewing_request_gets_unicast_ack():
    """A REQUEST from ciaddr (renewing) is acknowledged to that address, ciaddr copied."""
    reply = _reply(_request([("message-type", "request"), "end"], src="192.0.2.10",
                            ciaddr="192.0.2.10"))
    assert _opts(reply)["message-type"] == dhcp.ACK
    assert reply[BOOTP].ciaddr == "192.0.2.10"
    assert reply[IP].dst == "192.0.2.10"
    assert reply[Ether].dst == GUEST_MAC


def test_renewing_another_address_gets_nak():
    """A REQUEST from an old ciaddr that is not ours is refused."""
    reply = _reply(_request([("message-type", "request"), "end"], src="192.0.2.77",
                            ciaddr="192.0.2.77"))
    assert _opts(reply)["message-type"] == dhcp.NAK


def test_inform_gets_ack_without_lease():
    """INFORM gets the configuration, no lease time and no yiaddr, at ciaddr."""
    reply = _reply(_request([("message-type", "inform"), "end"], src="192.0.2.10",
                            ciaddr="192.0.2.10"))
    opts = _opts(reply)
    assert opts["message-type"] == dhcp.ACK
    assert "lease_time" not in opts
    assert opts["router"] == "192.0.2.1"
    assert reply[BOOTP].yiaddr == "0.0.0.0"
    assert reply[BOOTP].ciaddr == "192.0.2.10"
    assert reply[IP].dst == "192.0.2.10"


def test_decline_and_release_get_no_answer():
    """DECLINE and RELEASE change nothing and are not answered."""
    for mtype in ("decline", "release"):
        assert _handle(_request([("message-type", mtype), "end"])) is None


def test_server_message_types_are_ignored():
    """A client sending OFFER, ACK or NAK gets nothing."""
    for mtype in (dhcp.OFFER, dhcp.ACK, dhcp.NAK, 9, 200):
        assert _handle(_request([("message-type", mtype), "end"])) is None


def test_bootp_request_gets_bootreply():
    """No option 53 means BOOTP: a BOOTREPLY with the address and vendor extensions."""
    reply = _reply(_request(None))
    assert reply[BOOTP].op == 2
    assert reply[BOOTP].yiaddr == "192.0.2.10"
    codes = [c for c, _ in _raw_options(reply)]
    assert 1 in codes
    assert 3 in codes
    assert 6 in codes


def test_bootp_reply_has_no_dhcp_options():
    """Message type, server id, lease time and FQDN are DHCP-only (RFC 1534)."""
    codes = [c for c, _ in _raw_options(_reply(_request(None)))]
    for code in (51, 53, 54, 81):
        assert code not in codes


def test_bootp_reply_is_padded_to_300():
    """BOOTP clients get at least 300 bytes."""
    reply = _reply(_request(None), _view(hostname=None, fqdn=None, search=()))
    assert len(bytes(reply[UDP].payload)) == 300


def test_overloaded_request_is_read():
    """Options a client put in the file field (option 52) are honoured."""
    file = bytes([53, 1, 1, 80, 0, 255]).ljust(128, b"\x00")
    reply = _reply(_request([("dhcp-option-overload", 1), "end"], file=file))
    assert _opts(reply)["message-type"] == dhcp.ACK


# --- disabled, malformed ------------------------------------------------------------------

def test_disabled_dhcp_is_silent():
    """--no-dhcp: nothing is answered."""
    assert _handle(_discover(), _view(dhcp=False)) is None


def test_no_ipv4_is_silent():
    """Without IPv4 there is nothing to lease."""
    assert _handle(_discover(), _view(ip4=None)) is None


def test_bootreply_from_guest_is_dropped():
    """op 2 is not a request."""
    assert _handle(_discover(op=2)) is None


def test_non_ethernet_hardware_is_dropped():
    """htype and hlen must be Ethernet's."""
    assert _handle(_discover(htype=6)) is None
    assert _handle(_discover(hlen=16)) is None


def test_missing_magic_cookie_is_dropped():
    """Without the cookie there are no options to read."""
    frame = _discover()
    payload = bytearray(Ether(frame)[UDP].payload.original)
    payload[236:240] = b"\x00\x00\x00\x00"
    assert _handle(_payload_frame(bytes(payload))) is None


def test_raw_request_builder_gives_a_valid_discover():
    """Control for the malformed cases below: well-formed raw options are answered."""
    reply = _reply(_raw_request(bytes([53, 1, 1, 50, 4, 192, 0, 2, 10, 255])))
    assert _opts(reply)["message-type"] == dhcp.OFFER


def test_bad_message_type_length_is_dropped():
    """Option 53 must be one byte."""
    assert _handle(_raw_request(bytes([53, 2, 1, 1, 255]))) is None


def test_bad_address_option_lengths_are_dropped():
    """Options 50 and 54 must be four bytes."""
    assert _handle(_raw_request(bytes([53, 1, 3, 50, 3, 192, 0, 2, 255]))) is None
    assert _handle(_raw_request(bytes([53, 1, 3, 54, 3, 192, 0, 2, 255]))) is None


def test_option_running_off_the_end_is_dropped():
    """An option whose length passes the end of the datagram drops the message."""
    payload = bytes(Ether(_discover())[UDP].payload.original).rstrip(b"\x00")[:-1]
    assert _handle(_payload_frame(payload + bytes([12, 40]) + b"abc")) is None


def test_payload_truncated_at_every_length():
    """Every prefix of a request is handled without an exception; short ones are dropped."""
    payload = bytes(Ether(_discover(("param_req_list", [1, 3, 6])))[UDP].payload.original)
    for cut in range(len(payload)):
        result = _handle(_payload_frame(payload[:cut]))
        if cut < 240:
            assert result is None


def test_frame_truncated_at_every_length():
    """Every prefix of a whole request frame is handled without an exception."""
    frame = _discover()
    for cut in range(len(frame)):
        assert _handle(frame[:cut]) is None


@hypothesis_budget(3)
@given(index=st.integers(min_value=0, max_value=40), length=st.integers(0, 255))
def test_corrupt_option_length_never_raises(index: int, length: int):
    """Rewriting any option length byte gives a reply or None, never an exception."""
    payload = bytearray(Ether(_discover(("param_req_list", [1, 3, 6, 119]),
                                        ("client_id", b"\x01abcdef")))[UDP].payload.original)
    options = _walk(bytes(payload[240:]))
    positions, pos = [], 240
    for _code, data in options:
        positions.append(pos + 1)
        pos += 2 + len(data)
    where = positions[index % len(positions)]
    payload[where] = length
    result = _handle(_payload_frame(bytes(payload)))
    if where + 1 + length > len(payload):
        assert result is None


@hypothesis_budget(3)
@given(st.binary(min_size=0, max_size=600))
def test_random_payload_never_raises(tail: bytes):
    """Arbitrary bytes after a valid header and cookie never raise."""
    head = bytes(Ether(_discover())[UDP].payload.original)[:240]
    _handle(_payload_frame(head + tail))


@hypothesis_budget(2)
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes_never_raise(payload: bytes):
    """Arbitrary UDP payloads never raise."""
    _handle(_payload_frame(payload))
