# SPDX-License-Identifier: MIT
"""Ethernet framing: addresses, EtherTypes, and building/parsing the 14-byte header.

Only untagged Ethernet II frames exist on the link between a guest and the back-end; a frame
shorter than a header or with another framing is dropped by the demux, not here.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

ETH_HLEN = 14
ETH_ALEN = 6
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_RARP = 0x8035

BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

_HEADER = struct.Struct("!6s6sH")


class EthHeader(NamedTuple):
    """The parsed 14-byte Ethernet II header."""

    dst: bytes
    src: bytes
    ethertype: int


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` into 6 bytes; ValueError if malformed."""
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"malformed MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    """Format 6 bytes as ``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_header(frame: bytes) -> EthHeader | None:
    """The Ethernet header of ``frame``, or None if the frame is too short."""
    if len(frame) < ETH_HLEN:
        return None
    return EthHeader(*_HEADER.unpack_from(frame))


def build_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """A 14-byte Ethernet II header."""
    return _HEADER.pack(dst, src, ethertype)
