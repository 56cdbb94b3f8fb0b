# SPDX-License-Identifier: MIT
"""NDP towards the guest: neighbour advertisements and router advertisements.

Theory of operation. The back-end plays every node on the guest's link except the guest, so a
Neighbor Solicitation (RFC 4861 7.2.3) for any address but the guest's own gets a Neighbor
Advertisement carrying our MAC, flagged Router, Solicited and Override: whatever the guest wants
to reach on the link, it reaches through us. Duplicate Address Detection probes (source ::) are
different: the guest is asking whether an address it wants for itself is free. Any address it
probes (link-local, SLAAC, stable-privacy (RFC 7217) or temporary (RFC 8981)) is one the
back-end cannot know in advance, and answering would make the guest give it up, so a probe is
answered only when it targets an address the back-end itself uses on the link (our link-local,
the gateway, the mapped host addresses): those are real conflicts (RFC 4862 5.4.3).

A Router Solicitation (RFC 4861 6.2.6) gets a Router Advertisement naming us as default router,
with the guest's /64 for SLAAC (RFC 4862), the MTU, DNS servers (RDNSS) and the search list
(DNSSL, RFC 8106), and the M and O flags when DHCPv6 runs, so the guest also asks DHCPv6 for the
host's own address. In local mode (no host interface, view.ip6.addr unspecified) there is no
global address to give: the RA carries no prefix and no M flag, and the guest talks to us over
link-local addresses only, through the router fe80::1. Unsolicited RAs go out on a randomised timer (RFC 4861 6.2.4); the caller
owns the timer and asks here for the next delay.

Every message is validated as RFC 4861 6.1 and 7.1 require (hop limit 255, code 0, checksum,
minimum length, option lengths non-zero and within the message) and anything else is dropped
without an answer. NA, RA and Redirect from the guest are not acted on here: what the guest
teaches (its MAC and addresses) the demux records in GuestState. Sans-IO: frames in, frames out.
"""
from __future__ import annotations

import ipaddress
import random
import struct
from typing import cast

from passt_py.link import dnsname
from passt_py.link.ethernet import ETH_ALEN, ETH_HLEN
from passt_py.link.ip import IPPROTO_ICMPV6, IpPacket, ip_frame, l4_checksum
from passt_py.link.netview import GuestState, Ip6View, NetView

IPv6 = ipaddress.IPv6Address

ICMPV6_RS = 133
ICMPV6_RA = 134
ICMPV6_NS = 135
ICMPV6_NA = 136
ICMPV6_REDIRECT = 137

OPT_SOURCE_LL = 1          # source link-layer address (RFC 4861 4.6.1)
OPT_TARGET_LL = 2          # target link-layer address
OPT_PREFIX_INFO = 3        # RFC 4861 4.6.2
OPT_MTU = 5                # RFC 4861 4.6.4
OPT_RDNSS = 25             # RFC 8106 5.1
OPT_DNSSL = 31             # RFC 8106 5.2

NDP_HOP_LIMIT = 255        # sent and required on receipt: proves the sender is on-link
RS_LEN = 8                 # ICMPv6 header + reserved
NS_LEN = 24                # ICMPv6 header + reserved + target

NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20
RA_MANAGED = 0x80          # M: addresses from DHCPv6
RA_OTHER = 0x40            # O: other configuration from DHCPv6
PREFIX_ON_LINK = 0x80      # L
PREFIX_AUTONOMOUS = 0x40   # A: SLAAC may form addresses from it

# Values in the RAs, chosen as follows:
# - Cur Hop Limit 64: RFC 4861 6.2.1 defaults AdvCurHopLimit to the IANA value, which is 64.
# - Router Lifetime 65535 s: the maximum RFC 8319 allows (it lifted RFC 4861's 9000 s cap), so
#   the guest keeps its default route across long pauses (suspend, migration) between RAs.
# - Reachable Time and Retrans Timer 0: unspecified, the guest keeps its own defaults.
# - Prefix lifetimes infinite: the prefix is the host's and does not change while we run.
# - Default router preference medium (RFC 4191 2.2): the Prf bits are left at 00.
CUR_HOP_LIMIT = 64
ROUTER_LIFETIME = 65535
INFINITE_LIFETIME = 0xFFFFFFFF
ADV_PREFIX_LEN = 64        # SLAAC needs a /64 (RFC 4862 5.5.3, RFC 4291 2.5.1)

# Unsolicited RA timing (RFC 4861 6.2.1, 6.2.4), in seconds: after the first few, a uniform
# random interval in [MinRtrAdvInterval, MaxRtrAdvInterval] with the RFC's defaults (600 s and
# 0.33 * 600 s). The first MAX_INITIAL_RTR_ADVERTISEMENTS after a front-end connects come
# sooner, uniform in [INITIAL_RTR_ADV_MIN, MAX_INITIAL_RTR_ADVERT_INTERVAL]: the RFC caps them
# at 16 s, and 3 s is the RFC's floor for any MinRtrAdvInterval.
MAX_RTR_ADV_INTERVAL = 600.0
MIN_RTR_ADV_INTERVAL = 0.33 * MAX_RTR_ADV_INTERVAL
MAX_INITIAL_RTR_ADVERTISEMENTS = 3
MAX_INITIAL_RTR_ADVERT_INTERVAL = 16.0
INITIAL_RTR_ADV_MIN = 3.0

# RDNSS/DNSSL lifetime: RFC 8106 5.1 recommends at least 3 * MaxRtrAdvInterval by default.
DNS_LIFETIME = int(3 * MAX_RTR_ADV_INTERVAL)

# An RA must reach the guest unfragmented on any IPv6 link: keep it within the minimum MTU
# (RFC 8200 5). DNS servers and search domains that do not fit are left out.
RA_MAX_LEN = 1280 - 40

ALL_NODES = IPv6("ff02::1")
ALL_NODES_MAC = bytes.fromhex("333300000001")    # RFC 2464 7: 33:33 + low 32 bits of ff02::1
_SOLICITED_NODE = ipaddress.IPv6Network("ff02::1:ff00:0/104")

_NA = struct.Struct("!BBHB3x16s")
_RA = struct.Struct("!BBHBBHII")
_LL_OPT = struct.Struct("!BB6s")
_PREFIX_OPT = struct.Struct("!BBBBII4x16s")
_MTU_OPT = struct.Struct("!BBxxI")
_DNS_OPT_HDR = struct.Struct("!BBxxI")          # RDNSS and DNSSL share this header


def parse_options(data: bytes | memoryview) -> list[tuple[int, bytes]] | None:
    """The (type, body) NDP options in ``data``, or None if any is malformed (RFC 4861 4.6)."""
    options = []
    off = 0
    while off < len(data):
        if off + 2 > len(data):
            return None
        units = data[off + 1]
        end = off + units * 8
        if units == 0 or end > len(data):
            return None
        options.append((data[off], bytes(data[off + 2:end])))
        off = end
    return options


def _valid_icmpv6(pkt: IpPacket, min_len: int) -> bool:
    """Whether ``pkt`` passes the checks RFC 4861 6.1 and 7.1 share: hop limit, code, checksum."""
    l4 = pkt.l4
    if pkt.version != 6 or pkt.proto != IPPROTO_ICMPV6 or pkt.ttl != NDP_HOP_LIMIT:
        return False
    if len(l4) < min_len or l4[1] != 0:
        return False
    stored = (l4[2] << 8) | l4[3]
    computed = l4_checksum(pkt.src, pkt.dst, IPPROTO_ICMPV6, l4)
    return stored == computed or (computed == 0 and stored == 0xFFFF)   # both mean zero


def _checksummed(src: IPv6, dst: IPv6, msg: bytearray) -> bytes:
    """``msg`` with its ICMPv6 checksum filled in."""
    struct.pack_into("!H", msg, 2, l4_checksum(src, dst, IPPROTO_ICMPV6, msg))
    return bytes(msg)


def _pad8(data: bytes) -> bytes:
    """``data`` zero-padded to a multiple of 8 bytes, the unit of option lengths."""
    return data + b"\x00" * (-len(data) % 8)


class NdpResponder:
    """Answers the guest's NS and RS, and builds unsolicited RAs and NAs, for one NetView."""

    def __init__(self, view: NetView) -> None:
        self.view = view
        self._initial_ras = 0

    # ---- input ----

    def handle(self, frame: bytes | memoryview, pkt: IpPacket,
               guest: GuestState) -> list[bytes]:
        """Frames answering one ICMPv6 NDP message (types 133-137) from the guest; may be empty."""
        ip6 = self.view.ip6
        if not self.view.ndp or ip6 is None or len(frame) < ETH_HLEN or not pkt.l4:
            return []
        if pkt.src.is_multicast:                # never a valid source (RFC 4291 2.7)
            return []
        eth_src = bytes(frame[ETH_ALEN:2 * ETH_ALEN])
        if pkt.l4[0] == ICMPV6_NS and _valid_icmpv6(pkt, NS_LEN):
            return self._on_ns(ip6, eth_src, pkt, guest)
        if pkt.l4[0] == ICMPV6_RS and self.view.ra and _valid_icmpv6(pkt, RS_LEN):
            return self._on_rs(ip6, eth_src, pkt)
        return []

    def _on_ns(self, ip6: Ip6View, eth_src: bytes, pkt: IpPacket,
               guest: GuestState) -> list[bytes]:
        """The NA for a valid NS (RFC 4861 7.1.1, 7.2.4), if the target is ours to answer for."""
        src = cast(IPv6, pkt.src)
        options = parse_options(pkt.l4[NS_LEN:])
        if options is None:
            return []
        target = IPv6(bytes(pkt.l4[8:24]))
        if target.is_multicast or target.is_unspecified or target.is_loopback:
            return []
        if src.is_unspecified:
            # DAD probe: must go to the target's solicited-node group and carry no SLLA.
            if pkt.dst not in _SOLICITED_NODE or any(t == OPT_SOURCE_LL for t, _ in options):
                return []
            if target not in _own_addresses(ip6):
                return []
            return [self._na(ip6, target, ALL_NODES, ALL_NODES_MAC, NA_ROUTER | NA_OVERRIDE)]
        if target in (guest.addr6, guest.addr6_ll, ip6.addr):
            return []
        return [self._na(ip6, target, src, eth_src, NA_ROUTER | NA_SOLICITED | NA_OVERRIDE)]

    def _on_rs(self, ip6: Ip6View, eth_src: bytes, pkt: IpPacket) -> list[bytes]:
        """The RA for a valid RS (RFC 4861 6.1.1, 6.2.6): unicast to a link-local asker."""
        src = cast(IPv6, pkt.src)
        options = parse_options(pkt.l4[RS_LEN:])
        if options is None:
            return []
        if src.is_unspecified and any(t == OPT_SOURCE_LL for t, _ in options):
            return []
        if src.is_link_local:
            return [self._ra(ip6, src, eth_src)]
        return [self._ra(ip6, ALL_NODES, ALL_NODES_MAC)]

    # ---- output ----

    def unsolicited_ra(self) -> bytes | None:
        """A multicast RA for the timer, or None when RAs are off or there is no IPv6."""
        if not self.view.ndp or not self.view.ra or self.view.ip6 is None:
            return None
        return self._ra(self.view.ip6, ALL_NODES, ALL_NODES_MAC)

    def unsolicited_nas(self) -> list[bytes]:
        """Multicast NAs (RFC 4861 7.2.6) for our addresses, so a guest that moved with a live
        migration, or met a new back-end, replaces any old MAC in its neighbour cache."""
        ip6 = self.view.ip6
        if not self.view.ndp or ip6 is None:
            return []
        return [self._na(ip6, addr, ALL_NODES, ALL_NODES_MAC, NA_ROUTER | NA_OVERRIDE)
                for addr in _own_addresses(ip6)]

    # ---- timer policy ----

    def reset(self) -> None:
        """Start over with quick initial RAs: a new front-end (or guest) has connected."""
        self._initial_ras = 0

    def next_ra_delay(self, rng: random.Random) -> float:
        """Seconds until the next unsolicited RA (RFC 4861 6.2.4); see the interval constants."""
        if self._initial_ras < MAX_INITIAL_RTR_ADVERTISEMENTS:
            self._initial_ras += 1
            return rng.uniform(INITIAL_RTR_ADV_MIN, MAX_INITIAL_RTR_ADVERT_INTERVAL)
        return rng.uniform(MIN_RTR_ADV_INTERVAL, MAX_RTR_ADV_INTERVAL)

    # ---- builders ----

    def _na(self, ip6: Ip6View, target: IPv6, dst: IPv6, eth_dst: bytes, flags: int) -> bytes:
        """An NA frame from our link-local for ``target`` with our MAC as target link-layer."""
        msg = bytearray(_NA.pack(ICMPV6_NA, 0, 0, flags, target.packed)
                        + _LL_OPT.pack(OPT_TARGET_LL, 1, self.view.our_mac))
        return ip_frame(eth_dst, self.view.our_mac, ip6.our_ll, dst, IPPROTO_ICMPV6,
                        _checksummed(ip6.our_ll, dst, msg), NDP_HOP_LIMIT)

    def _ra(self, ip6: Ip6View, dst: IPv6, eth_dst: bytes) -> bytes:
        """An RA frame from our link-local to ``dst`` with every option the view calls for."""
        # No global address (local mode): no prefix to form one from and no lease to fetch;
        # the RA still makes us the guest's default router, over link-local addresses.
        has_addr = not ip6.addr.is_unspecified
        flags = 0
        if self.view.dhcpv6:
            flags = RA_MANAGED | RA_OTHER if has_addr else RA_OTHER
        msg = bytearray(_RA.pack(ICMPV6_RA, 0, 0, CUR_HOP_LIMIT, flags, ROUTER_LIFETIME, 0, 0))
        if has_addr:
            prefix = ipaddress.IPv6Network(f"{ip6.addr}/{ADV_PREFIX_LEN}", strict=False)
            msg += _PREFIX_OPT.pack(OPT_PREFIX_INFO, 4, ADV_PREFIX_LEN,
                                    PREFIX_ON_LINK | PREFIX_AUTONOMOUS, INFINITE_LIFETIME,
                                    INFINITE_LIFETIME, prefix.network_address.packed)
        if self.view.mtu >= 1280:
            msg += _MTU_OPT.pack(OPT_MTU, 1, min(self.view.mtu, 0xFFFFFFFF))
        msg += _LL_OPT.pack(OPT_SOURCE_LL, 1, self.view.our_mac)
        if self.view.dhcp_dns:
            msg += _rdnss(ip6.dns, RA_MAX_LEN - len(msg))
        if self.view.dhcp_search:
            msg += _dnssl(self.view.search, RA_MAX_LEN - len(msg))
        return ip_frame(eth_dst, self.view.our_mac, ip6.our_ll, dst, IPPROTO_ICMPV6,
                        _checksummed(ip6.our_ll, dst, msg), NDP_HOP_LIMIT)


def _own_addresses(ip6: Ip6View) -> list[IPv6]:
    """Addresses the back-end itself uses on the guest's link, our link-local first."""
    out: list[IPv6] = []
    for addr in (ip6.our_ll, ip6.gateway, ip6.map_host_loopback, ip6.map_guest_addr):
        if addr is not None and not addr.is_unspecified and addr not in out:
            out.append(addr)
    return out


def _rdnss(dns: tuple[IPv6, ...], room: int) -> bytes:
    """The RDNSS option with as many DNS servers as fit in ``room`` bytes; b"" if none."""
    servers = [a for a in dns if not a.is_unspecified]
    servers = servers[:max(0, (room - _DNS_OPT_HDR.size) // 16)]
    if not servers:
        return b""
    return (_DNS_OPT_HDR.pack(OPT_RDNSS, 1 + 2 * len(servers), DNS_LIFETIME)
            + b"".join(a.packed for a in servers))


def _dnssl(search: tuple[str, ...], room: int) -> bytes:
    """The DNSSL option with as many search domains as fit in ``room`` bytes; b"" if none.

    Names that cannot be encoded (empty or over-long labels, non-ASCII) are left out."""
    names = b""
    for name in search:
        encoded = dnsname.encode_name(name)
        if encoded is None or encoded == b"\x00":
            continue
        if _DNS_OPT_HDR.size + len(_pad8(names + encoded)) > room:
            break
        names += encoded
    if not names:
        return b""
    body = _pad8(names)
    return _DNS_OPT_HDR.pack(OPT_DNSSL, 1 + len(body) // 8, DNS_LIFETIME) + body
