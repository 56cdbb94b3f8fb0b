# SPDX-License-Identifier: MIT
"""DHCP server for the guest: a single, infinite lease of the configured IPv4 address.

Theory of operation: the back-end is the guest's only DHCP server and it has exactly one
address to give, the one the host uses (view.ip4.addr), so there is no lease table and no
state: every message is answered from the configuration alone (RFC 2131 semantics reduced to
that case). DISCOVER gets an OFFER, or an ACK straight away when the client asks for rapid
commit (RFC 4039); REQUEST gets an ACK, or a NAK when the client insists on an address that is
not ours (option 50 or ciaddr), so a guest moved from another network starts over at once;
a REQUEST naming another server is meant for someone else and is ignored; INFORM gets an ACK
with the configuration but no lease; a message without option 53 is BOOTP and gets a
BOOTREPLY; DECLINE and RELEASE change nothing here and get no answer.

The server identifier, and the source of every reply, is the guest's gateway: the back-end
answers for that address on the link anyway.

Options come in the order the client's parameter request list (55) gives, after the message
type and server identifier, then the rest; an option longer than 255 bytes is split into
several instances (RFC 3396). If the options do not fit in the size the client accepts
(576 bytes unless it said more in option 57) the file and sname fields are overloaded
(option 52); if even that is not enough, options that no longer fit are left out, and
since the requested ones are placed first they are the last to go: a client drops a larger
datagram whole (busybox udhcpc does), which would lose everything.

Reply addressing follows RFC 2131 4.1 for a client with no relay, in this order: a NAK goes
to 255.255.255.255 at the broadcast MAC; a client that already has an address (ciaddr) gets
the reply unicast there; a client that set the broadcast flag gets it broadcast; otherwise
it goes to the offered address at the client's hardware address (chaddr), which needs no
ARP because the client cannot answer ARP before it has the address. giaddr is copied but not
used: the guest is alone on its link, so there is never a relay.

Sans-IO: a parsed frame in, a complete reply frame (or None) out.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from passt_py.link import dnsname
from passt_py.link.ethernet import BROADCAST
from passt_py.link.ip import IpPacket, UdpDatagram, udp_frame
from passt_py.link.netview import GuestState, Ip4View, NetView

SERVER_PORT = 67
CLIENT_PORT = 68

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHER = 1
FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_MIN_LEN = 300           # RFC 1542 2.1: BOOTP relays and clients expect at least this
DEFAULT_MAX_DATAGRAM = 576    # RFC 2131 2: every client accepts an IP datagram this large
INFINITE_LEASE = 0xFFFFFFFF

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_MTU = 26
OPT_REQUESTED_ADDR = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MSG_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQUEST = 55
OPT_MESSAGE = 56
OPT_MAX_SIZE = 57
OPT_CLIENT_ID = 61
OPT_RAPID_COMMIT = 80
OPT_FQDN = 81
OPT_DOMAIN_SEARCH = 119
OPT_CLASSLESS_ROUTES = 121
OPT_END = 255

OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2

FQDN_S = 0x01   # client: server should update the A RR
FQDN_O = 0x02   # server: it overrode the client's S bit
FQDN_E = 0x04   # name in canonical wire format (else deprecated ASCII)
FQDN_N = 0x08   # server performs no DNS updates
FQDN_RCODE = 255  # RFC 4702 3.3: servers set the deprecated RCODE fields to 255

# Options that only make sense in DHCP, left out of BOOTP replies (RFC 1534).
_DHCP_ONLY = frozenset({OPT_LEASE_TIME, OPT_OVERLOAD, OPT_MSG_TYPE, OPT_SERVER_ID,
                        OPT_RAPID_COMMIT, OPT_FQDN, OPT_CLIENT_ID})

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_LEN = _HEADER.size     # 236
_SNAME_OFF = 44
_FILE_OFF = 108
_SNAME_LEN = 64
_FILE_LEN = 128
_ZERO4 = ipaddress.IPv4Address(0)
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_IP_UDP_OVERHEAD = 28


class DhcpMessage(NamedTuple):
    """A parsed BOOTREQUEST: the fixed fields a reply copies and the options, concatenated."""

    xid: int
    flags: int
    ciaddr: ipaddress.IPv4Address
    giaddr: bytes
    chaddr: bytes                 # all 16 bytes, copied into the reply as they were
    options: dict[int, bytes]

    @property
    def mac(self) -> bytes:
        """The client's Ethernet address."""
        return self.chaddr[:6]


def _parse_options(buf: bytes, start: int, end: int, into: dict[int, bytes]) -> bool:
    """Add the options in ``buf[start:end]`` to ``into``; False if one runs off the end.

    Repeated options are concatenated in order (RFC 3396). Parsing stops at the end option;
    an area that just runs out without one is accepted, since pad bytes may be missing.
    """
    pos = start
    while pos < end:
        code = buf[pos]
        if code == OPT_PAD:
            pos += 1
            continue
        if code == OPT_END:
            return True
        if pos + 2 > end:
            return False
        length = buf[pos + 1]
        if pos + 2 + length > end:
            return False
        into[code] = into.get(code, b"") + buf[pos + 2:pos + 2 + length]
        pos += 2 + length
    return True


def parse_message(payload: bytes) -> DhcpMessage | None:
    """The BOOTREQUEST in a UDP payload, or None if it is not a well-formed Ethernet one."""
    if len(payload) < HEADER_LEN + len(MAGIC_COOKIE):
        return None
    (op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yiaddr, _siaddr, giaddr, chaddr,
     _sname, _file) = _HEADER.unpack_from(payload)
    if op != BOOTREQUEST or htype != HTYPE_ETHER or hlen != 6:
        return None
    if payload[HEADER_LEN:HEADER_LEN + 4] != MAGIC_COOKIE:
        return None
    options: dict[int, bytes] = {}
    if not _parse_options(payload, HEADER_LEN + 4, len(payload), options):
        return None
    overload = options.pop(OPT_OVERLOAD, b"")
    if overload:
        if len(overload) != 1 or not 1 <= overload[0] <= 3:
            return None
        # RFC 2132 9.3: the file field is read before sname; option 52 is only valid in
        # the options field, so a copy of it in the overloaded fields is dropped.
        if overload[0] & OVERLOAD_FILE and not _parse_options(
                payload, _FILE_OFF, _FILE_OFF + _FILE_LEN, options):
            return None
        if overload[0] & OVERLOAD_SNAME and not _parse_options(
                payload, _SNAME_OFF, _SNAME_OFF + _SNAME_LEN, options):
            return None
        options.pop(OPT_OVERLOAD, None)
    return DhcpMessage(xid, flags, ipaddress.IPv4Address(ciaddr), giaddr, chaddr, options)


def _instances(code: int, data: bytes) -> list[bytes]:
    """``data`` as one option, or as several of at most 255 bytes each (RFC 3396)."""
    if not data:
        return [bytes([code, 0])]
    return [bytes([code, len(chunk)]) + chunk
            for chunk in (data[i:i + 255] for i in range(0, len(data), 255))]


def _place(code: int, data: bytes, areas: list[bytearray], rooms: list[int],
           idx: int) -> tuple[list[tuple[int, bytes]], int] | None:
    """Where option ``code`` would go from area ``idx`` on: (area, instance) pairs and the
    area reached, or None if it does not fit in the room left.

    An option that fits in one instance is never split; a longer one is cut to fill each
    area in turn (RFC 3396 allows any split points).
    """
    used = [len(area) for area in areas]
    pieces: list[tuple[int, bytes]] = []
    if len(data) <= 255:
        inst = bytes([code, len(data)]) + data
        while idx < len(rooms) and used[idx] + len(inst) > rooms[idx]:
            idx += 1
        if idx == len(rooms):
            return None
        return [(idx, inst)], idx
    rest = data
    while rest:
        if idx == len(rooms):
            return None
        space = rooms[idx] - used[idx] - 2
        if space < 1:
            idx += 1
            continue
        n = min(255, space, len(rest))
        inst = bytes([code, n]) + rest[:n]
        pieces.append((idx, inst))
        used[idx] += len(inst)
        rest = rest[n:]
    return pieces, idx


def _pack_areas(items: list[tuple[int, bytes]], limit: int,
                allow_overload: bool) -> tuple[bytes, bytes, bytes]:
    """The options field, and the file and sname fields (empty unless overloaded).

    ``limit`` is the room for options after the magic cookie. Overflow goes into file, then
    sname, in order, so the concatenation a client does (RFC 3396) restores every option.
    An option that fits nowhere any more is left out and the next ones are still tried:
    ``items`` comes most wanted first, and a client drops a datagram larger than it said it
    accepts (busybox udhcpc does), which would lose everything.
    """
    plain = b"".join(b"".join(_instances(code, data)) for code, data in items)
    if len(plain) + 1 <= limit:
        return plain + bytes([OPT_END]), b"", b""
    if allow_overload:        # keep room for option 52 and each area's end option
        rooms = [limit - 3 - 1, _FILE_LEN - 1, _SNAME_LEN - 1]
    else:
        rooms = [limit - 1]
    areas = [bytearray() for _ in rooms]
    idx = 0
    for code, data in items:
        placed = _place(code, data, areas, rooms, idx)
        if placed is None:
            continue
        pieces, idx = placed
        for area, inst in pieces:
            areas[area] += inst
    file = bytes(areas[1]) + bytes([OPT_END]) if len(areas) > 1 and areas[1] else b""
    sname = bytes(areas[2]) + bytes([OPT_END]) if len(areas) > 2 and areas[2] else b""
    overload = (OVERLOAD_FILE if file else 0) | (OVERLOAD_SNAME if sname else 0)
    opts = bytes(areas[0])
    if overload:
        opts += bytes([OPT_OVERLOAD, 1, overload])
    return opts + bytes([OPT_END]), file, sname


def classless_routes(routes: list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]]
                     ) -> bytes:
    """Option 121 data (RFC 3442): width, significant destination octets, router."""
    out = bytearray()
    for net, router in routes:
        width = net.prefixlen
        out += bytes([width]) + net.network_address.packed[:(width + 7) // 8] + router.packed
    return bytes(out)


class DhcpServer:
    """Answers the guest's DHCP and BOOTP requests from the configuration alone."""

    def __init__(self, view: NetView) -> None:
        """Keep the view; there is no other state."""
        self.view = view

    def handle(self, frame: bytes, pkt: IpPacket, udp: UdpDatagram,
               guest: GuestState) -> bytes | None:
        """The reply frame to a guest's UDP datagram for port 67, or None to stay silent.

        ``frame`` and ``guest`` are part of the common handler signature; DHCP addresses
        its replies from the message itself (chaddr), so it needs neither.
        """
        view = self.view
        ip4 = view.ip4
        if not view.dhcp or ip4 is None or pkt.version != 4 or udp.dport != SERVER_PORT:
            return None
        if ip4.gateway.is_unspecified:
            return None            # nothing to identify ourselves with, nor to route through
        msg = parse_message(bytes(udp.payload))
        if msg is None:
            return None
        raw_type = msg.options.get(OPT_MSG_TYPE)
        if raw_type is None:
            return self._bootp_reply(ip4, msg)
        if len(raw_type) != 1:
            return None
        return self._dhcp_reply(ip4, msg, raw_type[0])

    def _dhcp_reply(self, ip4: Ip4View, msg: DhcpMessage, mtype: int) -> bytes | None:
        """Decide the answer to a DHCP message by type (RFC 2131 4.3)."""
        ours, server_id = ip4.addr, ip4.gateway
        requested = msg.options.get(OPT_REQUESTED_ADDR)
        if requested is not None and len(requested) != 4:
            return None
        sid = msg.options.get(OPT_SERVER_ID)
        if sid is not None and len(sid) != 4:
            return None
        if mtype == DISCOVER:
            if OPT_RAPID_COMMIT in msg.options:
                return self._config_reply(ip4, msg, ACK, ours, _ZERO4, rapid=True)
            return self._config_reply(ip4, msg, OFFER, ours, _ZERO4)
        if mtype == REQUEST:
            if sid is not None and sid != server_id.packed:
                return None        # the client chose another server
            wrong_request = requested is not None and requested != ours.packed
            wrong_ciaddr = requested is None and not msg.ciaddr.is_unspecified \
                and msg.ciaddr != ours
            if wrong_request or wrong_ciaddr:
                return self._nak(ip4, msg)
            return self._config_reply(ip4, msg, ACK, ours, msg.ciaddr)
        if mtype == INFORM:
            return self._config_reply(ip4, msg, ACK, _ZERO4, msg.ciaddr, lease=False)
        return None                # DECLINE, RELEASE, and server-to-client types

    def _config_options(self, ip4: Ip4View, msg: DhcpMessage,
                        lease: bool) -> list[tuple[int, bytes]]:
        """Every configuration option we send, in our default order."""
        view = self.view
        opts: list[tuple[int, bytes]] = [
            (OPT_SUBNET_MASK, ip4.network.netmask.packed),
            (OPT_ROUTER, ip4.gateway.packed),
        ]
        if view.dhcp_dns and ip4.dns:
            opts.append((OPT_DNS, b"".join(a.packed for a in ip4.dns)))
        hostname = (view.hostname or "").encode("ascii", "ignore")
        if hostname:
            opts.append((OPT_HOSTNAME, hostname))
        if 68 <= view.mtu <= 0xFFFF:
            opts.append((OPT_MTU, view.mtu.to_bytes(2, "big")))
        if lease:
            opts.append((OPT_LEASE_TIME, INFINITE_LEASE.to_bytes(4, "big")))
        if view.fqdn:
            fqdn = self._fqdn_option(msg)
            if fqdn is not None:
                opts.append((OPT_FQDN, fqdn))
        if view.dhcp_search and view.search:
            search = dnsname.encode_list_compressed(view.search)
            if search:
                opts.append((OPT_DOMAIN_SEARCH, search))
        if ip4.gateway not in ip4.network:
            # RFC 3442: a client using 121 ignores option 3, so the default route is in it.
            opts.append((OPT_CLASSLESS_ROUTES, classless_routes([
                (ipaddress.IPv4Network(f"{ip4.gateway}/32"), _ZERO4),
                (ipaddress.IPv4Network("0.0.0.0/0"), ip4.gateway)])))
        if OPT_CLIENT_ID in msg.options:
            opts.append((OPT_CLIENT_ID, msg.options[OPT_CLIENT_ID]))   # RFC 6842
        return opts

    def _fqdn_option(self, msg: DhcpMessage) -> bytes | None:
        """Option 81 data (RFC 4702): no DNS updates by us, in the client's encoding."""
        fqdn = self.view.fqdn or ""
        client = msg.options.get(OPT_FQDN, b"")
        flags = FQDN_N
        if client and client[0] & FQDN_S:
            flags |= FQDN_O
        if client and not client[0] & FQDN_E:
            name = fqdn.rstrip(".").encode("ascii", "ignore")
        else:
            flags |= FQDN_E
            wire = dnsname.encode_name(fqdn)
            if wire is None:
                return None
            name = wire
        return bytes([flags, FQDN_RCODE, FQDN_RCODE]) + name

    @staticmethod
    def _ordered(first: list[tuple[int, bytes]], rest: list[tuple[int, bytes]],
                 msg: DhcpMessage) -> list[tuple[int, bytes]]:
        """``first`` as given, then ``rest`` in parameter request list order, then the others."""
        wanted = msg.options.get(OPT_PARAM_REQUEST, b"")
        by_code = dict(rest)
        out = list(first)
        for code in dict.fromkeys(wanted):
            if code in by_code:
                out.append((code, by_code.pop(code)))
        out.extend(by_code.items())
        return out

    def _max_options(self, msg: DhcpMessage) -> int:
        """Room for options after the cookie in a datagram the client accepts."""
        size = DEFAULT_MAX_DATAGRAM
        raw = msg.options.get(OPT_MAX_SIZE)
        if raw is not None and len(raw) == 2:
            size = max(size, int.from_bytes(raw, "big"))
        if self.view.mtu >= DEFAULT_MAX_DATAGRAM:
            size = min(size, self.view.mtu)
        return size - _IP_UDP_OVERHEAD - HEADER_LEN - len(MAGIC_COOKIE)

    def _config_reply(self, ip4: Ip4View, msg: DhcpMessage, mtype: int,
                      yiaddr: ipaddress.IPv4Address, ciaddr: ipaddress.IPv4Address,
                      rapid: bool = False, lease: bool = True) -> bytes:
        """An OFFER or ACK carrying the whole configuration."""
        rest = self._config_options(ip4, msg, lease)
        if rapid:
            rest.append((OPT_RAPID_COMMIT, b""))
        first = [(OPT_MSG_TYPE, bytes([mtype])), (OPT_SERVER_ID, ip4.gateway.packed)]
        items = self._ordered(first, rest, msg)
        return self._frame(ip4, msg, items, yiaddr, ciaddr, broadcast=False,
                           allow_overload=True)

    def _nak(self, ip4: Ip4View, msg: DhcpMessage) -> bytes:
        """A NAK: only type, server id and a message (RFC 2131 table 3), broadcast."""
        items = [(OPT_MSG_TYPE, bytes([NAK])), (OPT_SERVER_ID, ip4.gateway.packed),
                 (OPT_MESSAGE, b"requested address is not ours to give")]
        if OPT_CLIENT_ID in msg.options:
            items.append((OPT_CLIENT_ID, msg.options[OPT_CLIENT_ID]))
        return self._frame(ip4, msg, items, _ZERO4, _ZERO4, broadcast=True,
                           allow_overload=False)

    def _bootp_reply(self, ip4: Ip4View, msg: DhcpMessage) -> bytes:
        """A BOOTREPLY with the address and the vendor extensions BOOTP knows (RFC 1497)."""
        rest = [(code, data) for code, data in self._config_options(ip4, msg, False)
                if code not in _DHCP_ONLY]
        items = self._ordered([], rest, msg)
        return self._frame(ip4, msg, items, ip4.addr, msg.ciaddr, broadcast=False,
                           allow_overload=False)

    def _frame(self, ip4: Ip4View, msg: DhcpMessage, items: list[tuple[int, bytes]],
               yiaddr: ipaddress.IPv4Address, ciaddr: ipaddress.IPv4Address,
               broadcast: bool, allow_overload: bool) -> bytes:
        """The Ethernet frame carrying a BOOTREPLY, addressed as the module doc says."""
        opts, file, sname = _pack_areas(items, self._max_options(msg), allow_overload)
        body = _HEADER.pack(BOOTREPLY, HTYPE_ETHER, 6, 0, msg.xid, 0, msg.flags,
                            ciaddr.packed, yiaddr.packed, _ZERO4.packed, msg.giaddr,
                            msg.chaddr, sname, file) + MAGIC_COOKIE + opts
        if len(body) < BOOTP_MIN_LEN:
            body += bytes(BOOTP_MIN_LEN - len(body))
        if broadcast:
            dst_mac, dst = BROADCAST, _LIMITED_BROADCAST
        elif not msg.ciaddr.is_unspecified:
            dst_mac, dst = msg.mac, msg.ciaddr
        elif msg.flags & FLAG_BROADCAST:
            dst_mac, dst = BROADCAST, _LIMITED_BROADCAST
        elif not yiaddr.is_unspecified:
            dst_mac, dst = msg.mac, yiaddr
        else:
            dst_mac, dst = BROADCAST, _LIMITED_BROADCAST
        return udp_frame(dst_mac, self.view.our_mac, ip4.gateway, dst, SERVER_PORT,
                         CLIENT_PORT, body)
