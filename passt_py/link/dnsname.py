# SPDX-License-Identifier: MIT
"""Domain names in DNS wire format (RFC 1035 3.1), as DHCP and DHCPv6 options carry them.

DHCPv4 domain search (option 119, RFC 3397) compresses names with RFC 1035 pointers whose
offsets count from the start of the option data; DHCPv6 (RFC 8415 10, RFC 3646) and the
client FQDN options (RFC 4702, RFC 4704) use plain uncompressed names. Names come from the
configuration, so one that cannot be encoded (empty or over-long label, non-ASCII) is left
out rather than sent mangled.
"""
from __future__ import annotations

MAX_LABEL = 63
MAX_NAME = 255
_MAX_POINTER = 0x3FFF


def labels(name: str) -> tuple[bytes, ...] | None:
    """The labels of ``name`` (trailing dot ignored), or None if it cannot be encoded."""
    text = name[:-1] if name.endswith(".") else name
    if not text:
        return ()
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    parts = tuple(raw.split(b"."))
    if any(not 0 < len(p) <= MAX_LABEL for p in parts):
        return None
    if sum(len(p) + 1 for p in parts) + 1 > MAX_NAME:
        return None
    return parts


def encode_name(name: str, absolute: bool = True) -> bytes | None:
    """``name`` in wire format, ending with the root label unless ``absolute`` is false."""
    parts = labels(name)
    if parts is None:
        return None
    out = b"".join(bytes([len(p)]) + p for p in parts)
    return out + b"\x00" if absolute else out


def encode_list(names: tuple[str, ...] | list[str]) -> bytes:
    """Uncompressed, root-terminated names back to back (DHCPv6 domain list, RFC 3646)."""
    out = bytearray()
    for name in names:
        wire = encode_name(name)
        if wire is not None and wire != b"\x00":
            out += wire
    return bytes(out)


def encode_list_compressed(names: tuple[str, ...] | list[str]) -> bytes:
    """Names with RFC 1035 compression, offsets from the start of the result (RFC 3397)."""
    out = bytearray()
    seen: dict[tuple[bytes, ...], int] = {}     # lower-cased suffix -> offset where it starts
    for name in names:
        parts = labels(name)
        if not parts:
            continue
        for i in range(len(parts)):
            key = tuple(p.lower() for p in parts[i:])
            if key in seen:
                out += (0xC000 | seen[key]).to_bytes(2, "big")
                break
            if len(out) <= _MAX_POINTER:
                seen[key] = len(out)
            out += bytes([len(parts[i])]) + parts[i]
        else:
            out += b"\x00"
    return bytes(out)
