# SPDX-License-Identifier: MIT
"""Guest frames built by hand with struct (no scapy): IPv4 TCP segments, UDP datagrams, ARP.

Shared by the tests that feed a back-end's TX path raw frames (tests/test_faults.py through a
passt-py process, tests/test_load.py and tests/test_hostile_migrate.py through the handlers,
tests/fuzz/make_corpus.py for the seeds). Addresses default to the handler rigs' guest
(tests/fuzz/targets.py, tests/l4_helpers.py: 10.0.2.15 talking to its gateway 10.0.2.2);
a test with another addressing binds its own with functools.partial.

The TCP and IPv4 header checksums come from the C core (passt_py.core), which its own tests
check against the pure-Python reference; the UDP checksum is left at 0 (none, valid for IPv4).
"""
from __future__ import annotations

import ipaddress
import struct

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("525400123456")
GUEST4 = ipaddress.IPv4Address("10.0.2.15")
GW4 = ipaddress.IPv4Address("10.0.2.2")

SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04

_IP4 = struct.Struct("!BBHHHBBH4s4s")


def _ipv4(proto: int, l4: bytes, src: ipaddress.IPv4Address,
          dst: ipaddress.IPv4Address) -> bytes:
    """An IPv4 header (DF, TTL 64, correct checksum) followed by ``l4``."""
    from passt_py import core
    ip = _IP4.pack(0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src.packed, dst.packed)
    return ip[:10] + struct.pack("!H", core.csum_ipv4_header(ip)) + ip[12:] + l4


def tcp4_frame(sport: int, dport: int, flags: int, seq: int, ack: int = 0,
               payload: bytes = b"", *, src: ipaddress.IPv4Address = GUEST4,
               dst: ipaddress.IPv4Address = GW4, src_mac: bytes = GUEST_MAC,
               dst_mac: bytes = OUR_MAC, window: int = 65535) -> bytes:
    """An Ethernet frame with one IPv4 TCP segment (no options) from the guest."""
    from passt_py import core
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                      flags, window, 0, 0) + payload
    csum = core.csum_l4_ipv4(src.packed, dst.packed, 6, tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    return dst_mac + src_mac + b"\x08\x00" + _ipv4(6, tcp, src, dst)


def udp4_frame(sport: int, dport: int, payload: bytes, *,
               src: ipaddress.IPv4Address = GUEST4, dst: ipaddress.IPv4Address = GW4,
               src_mac: bytes = GUEST_MAC, dst_mac: bytes = OUR_MAC) -> bytes:
    """An Ethernet frame with one IPv4 UDP datagram (UDP checksum 0) from the guest."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return dst_mac + src_mac + b"\x08\x00" + _ipv4(17, udp, src, dst)


def arp_request(*, sender: ipaddress.IPv4Address = GUEST4,
                target: ipaddress.IPv4Address = GW4, mac: bytes = GUEST_MAC) -> bytes:
    """A broadcast ARP request from the guest: who has ``target``?"""
    return (b"\xff" * 6 + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01"
            + mac + sender.packed + bytes(6) + target.packed)


def synack_isn(frames: list[bytes], sport: int | None = None) -> int | None:
    """The sequence number of the first IPv4 SYN-ACK among ``frames`` (to the guest's port
    ``sport`` if given), or None."""
    for f in frames:
        if (len(f) >= 54 and f[12:14] == b"\x08\x00" and f[23] == 6
                and f[47] & (SYN | ACK) == SYN | ACK
                and (sport is None or struct.unpack_from("!H", f, 36)[0] == sport)):
            return struct.unpack_from("!I", f, 38)[0]
    return None
