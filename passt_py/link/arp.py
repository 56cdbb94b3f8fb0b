# SPDX-License-Identifier: MIT
"""ARP towards the guest: answer its requests, and ask for its MAC address.

The back-end plays every host on the guest's link except the guest itself, so it answers a
request for any IPv4 address but the guest's own with its own MAC. Gratuitous ARP (sender
address equal to target address) announces rather than asks, and is ignored. When a front-end
connects, the back-end asks who has the guest's address, so it learns the guest's MAC before
it has to deliver anything. Sans-IO: frames in, frames out.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from passt_py.link.ethernet import BROADCAST, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ZERO_MAC, build_header

ARP_HRD_ETHER = 1
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
ARP_LEN = 28

_ARP = struct.Struct("!HHBBH6s4s6s4s")


class ArpPacket(NamedTuple):
    """The fields of an Ethernet/IPv4 ARP packet that matter here."""

    op: int
    sha: bytes
    spa: ipaddress.IPv4Address
    tha: bytes
    tpa: ipaddress.IPv4Address


def parse(frame: bytes) -> ArpPacket | None:
    """The ARP packet in an Ethernet frame, or None if it is not Ethernet/IPv4 ARP."""
    if len(frame) < ETH_HLEN + ARP_LEN:
        return None
    hrd, pro, hln, pln, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, ETH_HLEN)
    if hrd != ARP_HRD_ETHER or pro != ETH_P_IP or hln != 6 or pln != 4:
        return None
    return ArpPacket(op, sha, ipaddress.IPv4Address(spa), tha, ipaddress.IPv4Address(tpa))


def build(op: int, eth_dst: bytes, sha: bytes, spa: ipaddress.IPv4Address, tha: bytes,
          tpa: ipaddress.IPv4Address) -> bytes:
    """An Ethernet frame carrying one ARP packet (source MAC = sender hardware address)."""
    return build_header(eth_dst, sha, ETH_P_ARP) + _ARP.pack(
        ARP_HRD_ETHER, ETH_P_IP, 6, 4, op, sha, spa.packed, tha, tpa.packed)


def reply_to(frame: bytes, our_mac: bytes,
             guest_addr: ipaddress.IPv4Address | None) -> bytes | None:
    """The reply to a guest's ARP request, or None when there is nothing to answer."""
    pkt = parse(frame)
    if pkt is None or pkt.op != ARP_OP_REQUEST:
        return None
    if pkt.spa == pkt.tpa or pkt.tpa == guest_addr or pkt.tpa.is_unspecified:
        return None
    return build(ARP_OP_REPLY, pkt.sha, our_mac, pkt.tpa, pkt.sha, pkt.spa)


def probe(our_mac: bytes, our_addr: ipaddress.IPv4Address,
          guest_addr: ipaddress.IPv4Address) -> bytes:
    """A broadcast request asking the guest for the MAC of ``guest_addr``."""
    return build(ARP_OP_REQUEST, BROADCAST, our_mac, our_addr, ZERO_MAC, guest_addr)
