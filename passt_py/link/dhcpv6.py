# SPDX-License-Identifier: MIT
"""DHCPv6 server for the guest (RFC 8415): one address, forever, and the DNS configuration.

Theory of operation: like the DHCPv4 server, this one is stateless because it has a single
binding to hand out, the configured global address (view.ip6.addr); the prefix itself comes
from router advertisements. SOLICIT gets an ADVERTISE, or a REPLY when the client asks for
rapid commit (option 14); REQUEST, RENEW and REBIND get a REPLY with the address in the
client's first IA_NA, with infinite T1/T2 and lifetimes. INFORMATION-REQUEST gets only the
DNS servers (RFC 3646 option 23) and the search list (option 24). In local mode (view.ip6.addr
unspecified) there is no address to lease: only INFORMATION-REQUEST is answered, as the RA
(O flag, no M flag) tells the guest.

An address the client brings that is not ours is wrong for this link, and each message type
says so the way RFC 8415 18.3 asks: REQUEST gets that IA_NA back with status NotOnLink (the
client goes back to SOLICIT); RENEW and REBIND get our address plus the stale one with
lifetimes 0, so the client swaps in place; CONFIRM gets a top-level NotOnLink, or Success
when every address it lists is ours, and no answer when it lists none. RELEASE and DECLINE
change nothing here and are answered with Success, as RFC 8415 18.3.7/18.3.8 require.
Further IA_NAs in one message get NoAddrsAvail (or NoBinding when renewing): there is only
one address. IA_TA and IA_PD are not served and are not answered for.

Messages are dropped, as RFC 8415 16 says, when a client identifier is missing (except in
INFORMATION-REQUEST), when one that must carry our server identifier carries none or
another, or when one that must not carry one does. The server identifier is a DUID-LLT built
from our MAC and a time the caller gives (seconds since 2000-01-01 UTC), so it stays stable
as long as the caller keeps that value.

Replies go from our link-local address, port 547, to the address the client sent from,
port 546, at the Ethernet source address of its frame. Sans-IO: frames in, frames out.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from passt_py.link import dnsname
from passt_py.link.ethernet import parse_header
from passt_py.link.ip import IpPacket, UdpDatagram, udp_frame
from passt_py.link.netview import GuestState, NetView

SERVER_PORT = 547
CLIENT_PORT = 546

SOLICIT = 1
ADVERTISE = 2
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
DECLINE = 9
INFORMATION_REQUEST = 11

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_IAADDR = 5
OPT_ORO = 6
OPT_STATUS_CODE = 13
OPT_RAPID_COMMIT = 14
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24
OPT_IA_PD = 25
OPT_CLIENT_FQDN = 39

STATUS_SUCCESS = 0
STATUS_NO_ADDRS_AVAIL = 2
STATUS_NO_BINDING = 3
STATUS_NOT_ON_LINK = 4

DUID_LLT = 1
HWTYPE_ETHERNET = 1
INFINITY = 0xFFFFFFFF

FQDN_S = 0x01   # client: server should update the AAAA RR
FQDN_O = 0x02   # server: it overrode the client's S bit
FQDN_N = 0x04   # server performs no DNS updates

_OPT = struct.Struct("!HH")
_IA_NA = struct.Struct("!III")
_IAADDR = struct.Struct("!16sII")
_MSG_HLEN = 4

Option = tuple[int, bytes]


class Dhcpv6Message(NamedTuple):
    """A parsed client message: type, transaction id and the top-level options in order."""

    msg_type: int
    xid: bytes
    options: list[Option]

    def first(self, code: int) -> bytes | None:
        """The data of the first option ``code``, or None if absent."""
        for c, data in self.options:
            if c == code:
                return data
        return None

    def all(self, code: int) -> list[bytes]:
        """The data of every option ``code``, in order."""
        return [data for c, data in self.options if c == code]


class IaNa(NamedTuple):
    """An IA_NA from a client: its IAID and the addresses it holds."""

    iaid: int
    addrs: list[ipaddress.IPv6Address]


def parse_options(buf: bytes) -> list[Option] | None:
    """The options in ``buf``, or None if one runs off the end."""
    out: list[Option] = []
    pos = 0
    while pos < len(buf):
        if pos + _OPT.size > len(buf):
            return None
        code, length = _OPT.unpack_from(buf, pos)
        pos += _OPT.size
        if pos + length > len(buf):
            return None
        out.append((code, buf[pos:pos + length]))
        pos += length
    return out


def parse_message(payload: bytes) -> Dhcpv6Message | None:
    """The client message in a UDP payload, or None if it is malformed."""
    if len(payload) < _MSG_HLEN:
        return None
    options = parse_options(payload[_MSG_HLEN:])
    if options is None:
        return None
    return Dhcpv6Message(payload[0], payload[1:_MSG_HLEN], options)


def parse_ia_na(data: bytes) -> IaNa | None:
    """The IAID and addresses of an IA_NA option's data, or None if malformed."""
    if len(data) < _IA_NA.size:
        return None
    iaid, _t1, _t2 = _IA_NA.unpack_from(data)
    sub = parse_options(data[_IA_NA.size:])
    if sub is None:
        return None
    addrs = []
    for code, opt in sub:
        if code == OPT_IAADDR:
            if len(opt) < _IAADDR.size:
                return None
            addrs.append(ipaddress.IPv6Address(opt[:16]))
    return IaNa(iaid, addrs)


def option(code: int, data: bytes) -> bytes:
    """One option on the wire."""
    return _OPT.pack(code, len(data)) + data


def status(code: int, message: str) -> bytes:
    """A status code option (RFC 8415 21.13)."""
    return option(OPT_STATUS_CODE, code.to_bytes(2, "big") + message.encode("utf-8"))


def duid_llt(mac: bytes, time: int) -> bytes:
    """A DUID-LLT for an Ethernet address (RFC 8415 11.2)."""
    return struct.pack("!HHI", DUID_LLT, HWTYPE_ETHERNET, time & 0xFFFFFFFF) + mac


class Dhcpv6Server:
    """Answers the guest's DHCPv6 messages from the configuration alone."""

    def __init__(self, view: NetView, duid_time: int) -> None:
        """Keep the view and build our server DUID from our MAC and ``duid_time``."""
        self.view = view
        self.duid = duid_llt(view.our_mac, duid_time)

    def handle(self, frame: bytes, pkt: IpPacket, udp: UdpDatagram,
               guest: GuestState) -> bytes | None:
        """The reply frame to a guest's UDP datagram for port 547, or None to stay silent.

        ``guest`` is part of the common handler signature; replies are addressed from the
        frame and packet themselves.
        """
        view = self.view
        if not view.dhcpv6 or view.ip6 is None or pkt.version != 6 \
                or udp.dport != SERVER_PORT or pkt.src.is_unspecified:
            return None
        eth = parse_header(frame)
        if eth is None:
            return None
        msg = parse_message(bytes(udp.payload))
        if msg is None:
            return None
        body = self._answer(msg, view.ip6.addr)
        if body is None:
            return None
        return udp_frame(eth.src, view.our_mac, view.ip6.our_ll, pkt.src, SERVER_PORT,
                         CLIENT_PORT, body)

    def _answer(self, msg: Dhcpv6Message, ours: ipaddress.IPv6Address) -> bytes | None:
        """The reply message (type, xid, options) for ``msg``, or None to drop it."""
        client_id = msg.first(OPT_CLIENTID)
        server_id = msg.first(OPT_SERVERID)
        if ours.is_unspecified and msg.msg_type != INFORMATION_REQUEST:
            return None            # local mode: no address to lease, only DNS to tell
        if msg.msg_type == INFORMATION_REQUEST:
            if server_id is not None and server_id != self.duid:
                return None
            if any(msg.all(c) for c in (OPT_IA_NA, OPT_IA_TA, OPT_IA_PD)):
                return None
            opts = self._ids(client_id or None) + self._dns_options()
            return self._message(REPLY, msg, opts)
        if not client_id:
            return None
        if msg.msg_type in (REQUEST, RENEW, RELEASE, DECLINE):
            if server_id != self.duid:
                return None
        elif msg.msg_type in (SOLICIT, REBIND, CONFIRM):
            if server_id is not None:
                return None
        else:
            return None            # server messages, relay messages, unknown types
        ias = []
        for data in msg.all(OPT_IA_NA):
            ia = parse_ia_na(data)
            if ia is None:
                return None
            ias.append(ia)
        ids = self._ids(client_id)
        if msg.msg_type == CONFIRM:
            return self._confirm(msg, ias, ids, ours)
        if msg.msg_type in (RELEASE, DECLINE):
            return self._message(REPLY, msg, ids + status(STATUS_SUCCESS, "nothing to do"))
        if msg.msg_type == SOLICIT and not ias:
            return self._message(ADVERTISE, msg,
                                 ids + status(STATUS_NO_ADDRS_AVAIL, "only IA_NA is served"))
        opts = ids
        reply_type = REPLY
        if msg.msg_type == SOLICIT:
            if msg.first(OPT_RAPID_COMMIT) is not None:
                opts += option(OPT_RAPID_COMMIT, b"")
            else:
                reply_type = ADVERTISE
        for i, ia in enumerate(ias):
            opts += self._ia_reply(msg.msg_type, ia, i == 0, ours)
        opts += self._dns_options() + self._fqdn_option(msg)
        return self._message(reply_type, msg, opts)

    def _ids(self, client_id: bytes | None) -> bytes:
        """Our server identifier, and the client's echoed when it sent one."""
        out = option(OPT_SERVERID, self.duid)
        if client_id is not None:
            out += option(OPT_CLIENTID, client_id)
        return out

    def _ia_reply(self, msg_type: int, ia: IaNa, first: bool,
                  ours: ipaddress.IPv6Address) -> bytes:
        """The IA_NA answering the client's ``ia``; only the first one gets our address."""
        if not first:
            code = STATUS_NO_BINDING if msg_type in (RENEW, REBIND) else STATUS_NO_ADDRS_AVAIL
            return option(OPT_IA_NA, _IA_NA.pack(ia.iaid, 0, 0)
                          + status(code, "one address per client"))
        stale = [a for a in ia.addrs if a != ours]
        if msg_type == REQUEST and stale:
            return option(OPT_IA_NA, _IA_NA.pack(ia.iaid, 0, 0)
                          + status(STATUS_NOT_ON_LINK, "address not valid on this link"))
        inner = option(OPT_IAADDR, _IAADDR.pack(ours.packed, INFINITY, INFINITY))
        if msg_type in (RENEW, REBIND):
            for addr in dict.fromkeys(stale):
                inner += option(OPT_IAADDR, _IAADDR.pack(addr.packed, 0, 0))
        return option(OPT_IA_NA, _IA_NA.pack(ia.iaid, INFINITY, INFINITY) + inner)

    def _confirm(self, msg: Dhcpv6Message, ias: list[IaNa], ids: bytes,
                 ours: ipaddress.IPv6Address) -> bytes | None:
        """Success if every address is ours, NotOnLink otherwise, silence if none listed."""
        addrs = [a for ia in ias for a in ia.addrs]
        if not addrs:
            return None
        if all(a == ours for a in addrs):
            return self._message(REPLY, msg, ids + status(STATUS_SUCCESS, "all on link"))
        return self._message(REPLY, msg,
                             ids + status(STATUS_NOT_ON_LINK, "address not valid on this link"))

    def _dns_options(self) -> bytes:
        """DNS servers (23) and search list (24), as configured and enabled."""
        view = self.view
        out = b""
        if view.dhcp_dns and view.ip6 is not None and view.ip6.dns:
            out += option(OPT_DNS_SERVERS, b"".join(a.packed for a in view.ip6.dns))
        if view.dhcp_search and view.search:
            names = dnsname.encode_list(view.search)
            if names:
                out += option(OPT_DOMAIN_LIST, names)
        return out

    def _fqdn_option(self, msg: Dhcpv6Message) -> bytes:
        """Client FQDN (39, RFC 4704) when configured: our name, and no DNS updates by us."""
        if not self.view.fqdn:
            return b""
        wire = dnsname.encode_name(self.view.fqdn)
        if wire is None:
            return b""
        client = msg.first(OPT_CLIENT_FQDN)
        flags = FQDN_N
        if client and client[0] & FQDN_S:
            flags |= FQDN_O
        return option(OPT_CLIENT_FQDN, bytes([flags]) + wire)

    @staticmethod
    def _message(msg_type: int, msg: Dhcpv6Message, options: bytes) -> bytes:
        """A server message answering ``msg`` (same transaction id)."""
        return bytes([msg_type]) + msg.xid + options
