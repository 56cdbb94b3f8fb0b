# SPDX-License-Identifier: MIT
"""What a migration source held, or what a target rebuilt, as JSON (the sidecar schema).

Used with the v0.1.0 release (make_streams.py, old_load.py) and with the current code
(test_stream_compat.py), so it imports nothing of passt_py: it only reads attributes that both
have (flow types by name, handler ``export``, dataclass fields, ``TcpSockState``).

Sidecar (``streams/NAME.json``)::

    schema, written_by {release, commit, impl_version}, stream {file, bytes, sha256},
    format {magic, version, compat_version, sections [[id, flags], ...]},
    setup {view (what rebuilds the same NetView: the fingerprint), udp_forwards},
    guest {mac, addr4, addr6, addr6_ll, arp_answered}, counts {ping, udp, tcp},
    ping/udp/tcp: [{record: the handler's export, sides: [[pif, eaddr, eport, oaddr, oport]
                    x2], socket (TCP): tcp_repair.save() of the socket, queues as
                    {len, sha256}, without ts_val}]   (each list sorted by record)
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import json
import struct
from typing import Any, Callable

A = ipaddress.ip_address


def jsonable(value: Any) -> Any:
    """A record value as JSON: enums as their number, addresses as text, bytes as hex."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if dataclasses.is_dataclass(value):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    raise TypeError(f"cannot describe {type(value)}")


_IP4 = ("addr", "prefix_len", "gateway", "map_host_loopback")
_IP6 = ("addr", "prefix_len", "gateway", "our_ll", "map_host_loopback")


def describe_view(view: Any) -> dict:
    """What a target needs to build the same NetView (the stream's fingerprint must match)."""
    out: dict[str, Any] = {"our_mac": view.our_mac.hex(), "mtu": view.mtu}
    for name, keys in (("ip4", _IP4), ("ip6", _IP6)):
        fam = getattr(view, name)
        out[name] = None if fam is None else {k: jsonable(getattr(fam, k)) for k in keys}
    return out


def build_view(desc: dict, net_view: type, ip4_view: type, ip6_view: type) -> Any:
    """The NetView ``desc`` describes, from the given classes (old or current)."""
    fams = []
    for name, cls, keys in (("ip4", ip4_view, _IP4), ("ip6", ip6_view, _IP6)):
        d = desc[name]
        fams.append(None if d is None else cls(**{
            k: (d[k] if k == "prefix_len" else None if d[k] is None else A(d[k])) for k in keys}))
    return net_view(our_mac=bytes.fromhex(desc["our_mac"]), mtu=desc["mtu"], ip4=fams[0],
                    ip6=fams[1])


def describe_guest(g: Any) -> dict:
    return {"mac": g.mac.hex(), "addr4": jsonable(g.addr4), "addr6": jsonable(g.addr6),
            "addr6_ll": jsonable(g.addr6_ll), "arp_answered": g.arp_answered}


def describe_sides(flow: Any) -> list:
    return [[s.pif.name, str(s.eaddr), s.eport, str(s.oaddr), s.oport] for s in flow.sides]


def describe_socket(ks: Any) -> dict:
    """A TcpSockState; queues as length and SHA-256; not the timestamp clock (it moves on)."""
    d = jsonable(ks)
    d.pop("ts_val")
    for q in ("snd_queue", "rcv_queue"):
        raw = getattr(ks, q)
        d[q] = {"len": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    return d


def _sorted(entries: list[dict]) -> list[dict]:
    return sorted(entries, key=lambda e: json.dumps(e["record"], sort_keys=True))


def describe_flows(flows: Any, icmp: Any, udp: Any, tcp: Any,
                   sock_state: Callable[[Any], Any] | None = None) -> dict:
    """Every flow of the table through its handler's export, sorted; for TCP flows also
    ``sock_state(flow)`` (a TcpSockState, taken after the export) when given."""
    out: dict[str, list] = {"ping": [], "udp": [], "tcp": []}
    for flow in list(flows):
        kind = flow.type.name
        if kind in ("PING4", "PING6"):
            out["ping"].append({"record": jsonable(icmp.export(flow)),
                                "sides": describe_sides(flow)})
        elif kind == "UDP":
            out["udp"].append({"record": jsonable(udp.export(flow)),
                               "sides": describe_sides(flow)})
        elif kind == "TCP":
            entry = {"record": jsonable(tcp.export(flow)), "sides": describe_sides(flow)}
            if sock_state is not None:
                entry["socket"] = describe_socket(sock_state(flow))
            out["tcp"].append(entry)
        else:
            raise AssertionError(f"unexpected flow type {kind}")
    return {k: _sorted(v) for k, v in out.items()}


def header_of(data: bytes) -> dict:
    """Header fields and the section list (id, flags), walked by hand."""
    magic, version, compat = struct.unpack_from("!QII", data)
    off, sections = 16, []
    while off + 8 <= len(data):
        sid, flags, length = struct.unpack_from("!HHI", data, off)
        sections.append([sid, flags])
        off += 8 + length
    return {"magic": f"0x{magic:016x}", "version": version, "compat_version": compat,
            "sections": sections}
