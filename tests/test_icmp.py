# SPDX-License-Identifier: MIT
"""ICMP/ICMPv6 echo through ping sockets, and ICMP errors built for the guest.

Ping sockets need net.ipv4.ping_group_range to admit our group. The tests that use them run a
small script inside a throw-away network namespace (tests/netns.py), where the script sets that
sysctl for the namespace only after checking it is not in the initial namespace: the host's
setting is never touched.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import struct
import sys
import textwrap

import netns
import pytest
from hypothesis import given
from hypothesis import strategies as st
# echo_frame, parsed: also imported from here by tests/test_migrate.py and tests/compat (which
# should import them from l4_helpers).
from l4_helpers import (GUEST4, GUEST6, GW4, GW6, Sink, checksums_ok, echo_frame, guest_udp,
                        make_guest, make_view, parsed, pump)
from scapy.layers.inet import ICMP, IP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, IPerror6, IPv6
from scapy.layers.l2 import Ether

from passt_py import core
from passt_py.flow import FlowTable
from passt_py.link.ip import IPPROTO_UDP
from passt_py.loop import EventLoop
from passt_py.udp import icmp
from tests.conftest import hypothesis_budget

A = ipaddress.ip_address
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ALLOW_ALL = "0 2147483647"
DENY_ALL = "1 0"

needs_netns = pytest.mark.skipif(not netns.available(), reason="needs root and iproute2")

# Runs inside the namespace: argv = ping_group_range, requests (JSON), flow timeout, and the
# test process's own netns inode, so the script refuses to touch the sysctl outside a new one.
SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests_dir!r})
    if os.stat("/proc/self/ns/net").st_ino == int(sys.argv[4]):
        sys.exit("refusing to change ping_group_range in the caller's network namespace")
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write(sys.argv[1])
    import test_icmp as t
    print(json.dumps(t.ping_scenario(json.loads(sys.argv[2]), float(sys.argv[3]))))
""")


def ping_scenario(requests: list[list], timeout: float) -> dict:
    """Run the handler on ``requests`` ([version, id, seq, payload hex, dst]); report results."""
    records: list[str] = []
    collect = logging.Handler()
    collect.emit = lambda r: records.append(f"{r.levelname}:{r.getMessage()}")  # type: ignore[method-assign]
    logging.getLogger("passt_py").addHandler(collect)
    logging.getLogger("passt_py").setLevel(logging.DEBUG)
    loop = EventLoop()
    flows = FlowTable(loop, sweep_interval=0.05)
    sink = Sink()
    ping = icmp.IcmpHandler(loop, make_view(), make_guest(), flows, sink, timeout=timeout)
    flow_ids = []
    host_ids = []
    for version, ident, seq, payload, dst in requests:
        ping.from_guest(parsed(echo_frame(version, ident, seq, bytes.fromhex(payload),
                                              A(dst) if dst else None)))
        flow_ids.append(sorted(f.id for f in flows))
        host_ids.append(sorted(f.sides[1].eport for f in flows))
    expected = sum(1 for r in requests if not r[4])
    pump(loop, lambda: len(sink.frames) >= expected, timeout=3.0)
    frames = [f.hex() for f in sink.frames]
    flows_before = len(flows)
    pump(loop, lambda: len(flows) == 0, timeout=timeout + 1.0)
    return {"frames": frames, "log": records, "flow_ids": flow_ids, "host_ids": host_ids,
            "flows_before": flows_before, "flows_after": len(flows),
            "dropped": ping.dropped}


def run_in_netns(ping_range: str, requests: list[list], timeout: float = 0.3) -> dict:
    """Run ping_scenario inside a fresh namespace with ``ping_range`` set there."""
    with netns.netns() as ns:
        proc = netns.run_in(ns, [sys.executable, "-c", SCRIPT.format(tests_dir=TESTS_DIR),
                                 ping_range, json.dumps(requests), str(timeout),
                                 str(os.stat("/proc/self/ns/net").st_ino)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_netns
@pytest.mark.parametrize("version", [4, 6])
def test_ping_gateway_reaches_loopback(version: int) -> None:
    """Echo to the gateway is answered (by the host's loopback) with the guest's id and seq."""
    payload = os.urandom(56).hex()
    out = run_in_netns(ALLOW_ALL, [[version, 0x1234, 7, payload, None],
                                   [version, 0x1234, 8, payload, None]])
    assert len(out["frames"]) == 2, out
    for seq, hexframe in zip((7, 8), out["frames"]):
        frame = bytes.fromhex(hexframe)
        assert checksums_ok(frame)
        eth = Ether(frame)
        assert eth.dst == "52:54:00:12:34:56"
        if version == 4:
            l3 = eth[IP]
            assert (A(l3.src), A(l3.dst)) == (GW4, GUEST4)
            reply = l3[ICMP]
            assert reply.type == 0 and reply.id == 0x1234 and reply.seq == seq
        else:
            l3 = eth[IPv6]
            assert (A(l3.src), A(l3.dst)) == (GW6, GUEST6)
            reply = l3[ICMPv6EchoReply]
            assert reply.id == 0x1234 and reply.seq == seq
        assert bytes(reply.payload if version == 4 else reply.data).hex() == payload
    # One flow for both requests, and it expired after the (shortened) timeout.
    assert out["flow_ids"] == [[0], [0]]
    # The kernel chose the id on the host (an ephemeral port number): mapped back above.
    assert out["host_ids"][0][0] != 0x1234
    assert out["flows_before"] == 1 and out["flows_after"] == 0


@needs_netns
def test_distinct_ids_distinct_flows() -> None:
    """Each (guest address, echo id, destination) gets its own flow and host id."""
    out = run_in_netns(ALLOW_ALL, [[4, 1, 1, "aa", None], [4, 2, 1, "bb", None],
                                   [6, 1, 1, "cc", None]])
    assert out["flow_ids"][-1] == [0, 1, 2]
    assert len(out["frames"]) == 3
    got = set()
    for hexframe in out["frames"]:
        eth = Ether(bytes.fromhex(hexframe))
        got.add((4, eth[ICMP].id) if IP in eth else (6, eth[ICMPv6EchoReply].id))
    assert got == {(4, 1), (4, 2), (6, 1)}


@needs_netns
def test_ping_sockets_forbidden_warns_once() -> None:
    """With ping sockets denied, one warning names the sysctl and requests are dropped."""
    out = run_in_netns(DENY_ALL, [[4, 1, 1, "aa", None], [4, 1, 2, "aa", None],
                                  [6, 3, 1, "aa", None]])
    warnings = [line for line in out["log"] if line.startswith("WARNING")]
    assert len(warnings) == 1 and "ping_group_range" in warnings[0]
    assert out["frames"] == [] and out["flows_before"] == 0 and out["dropped"] == 3


# ---- without ping sockets ----

@pytest.fixture()
def handler():
    loop = EventLoop()
    flows = FlowTable(loop)
    sink = Sink()
    h = icmp.IcmpHandler(loop, make_view(), make_guest(), flows, sink)
    yield h, flows, sink
    h.close_all()
    loop.close()


def test_malformed_and_non_echo_ignored(handler) -> None:
    """Truncated messages, other ICMP types and unroutable destinations open nothing."""
    h, flows, sink = handler
    pkt = parsed(echo_frame(4, 1, 1, b""))
    h.from_guest(pkt._replace(l4=pkt.l4[:4]))
    h.from_guest(pkt._replace(l4=memoryview(b"\x00" * 8)))           # an echo reply
    h.from_guest(parsed(echo_frame(4, 1, 1, b"", dst=A("224.0.0.1"))))
    h.from_guest(parsed(echo_frame(6, 1, 1, b"", dst=A("ff02::1"))))
    h.from_guest(None)  # type: ignore[arg-type]
    assert len(flows) == 0 and sink.frames == []


def test_icmp_disabled() -> None:
    """With ICMP disabled in the view, echo requests are ignored."""
    loop = EventLoop()
    flows = FlowTable(loop)
    sink = Sink()
    h = icmp.IcmpHandler(loop, make_view(icmp=False), make_guest(), flows, sink)
    try:
        h.from_guest(parsed(echo_frame(4, 1, 1, b"x")))
        h.from_guest(parsed(echo_frame(6, 1, 1, b"x")))
        assert len(flows) == 0 and sink.frames == []
    finally:
        h.close_all()
        loop.close()


@pytest.mark.parametrize("version", [4, 6])
def test_refused_frame_quotes_packet(version: int) -> None:
    """The admin-prohibited error quotes the guest's packet and has valid checksums."""
    src, dst = (GUEST4, A("192.0.2.1")) if version == 4 else (GUEST6, A("2001:db8::1"))
    pkt, _ = guest_udp(src, dst, 1000, 2000, b"x" * 2000)
    frame = icmp.refused_frame(make_view(), make_guest(), pkt)
    assert checksums_ok(frame)
    eth = Ether(frame)
    if version == 4:
        assert eth[ICMP].type == 3 and eth[ICMP].code == 13
        assert eth[IPerror].src == str(src) and eth[UDPerror].dport == 2000
        assert len(eth[IP]) <= icmp.ICMP4_ERROR_MAX
        assert A(eth[IP].src) == dst
    else:
        assert eth[ICMPv6DestUnreach].code == 1
        assert eth[IPerror6].src == str(src) and eth[UDPerror].dport == 2000
        assert len(eth[IPv6]) <= icmp.ICMP6_ERROR_MAX


def test_frag_needed_carries_mtu() -> None:
    """Fragmentation-needed errors carry the next-hop MTU in the second word."""
    quoted = icmp.quote_packet(GUEST4, GW4, IPPROTO_UDP, b"\0" * 8)
    msg = icmp.error_message(4, GW4, GUEST4, 3, 4, 1400, quoted)
    assert struct.unpack_from("!HH", msg, 4) == (0, 1400)
    assert core.csum_icmp4(msg) == struct.unpack_from("!H", msg, 2)[0]
    frame = icmp.error_frame(make_view(), make_guest(), GW4, GUEST4, 3, 4, 1400, quoted)
    assert checksums_ok(frame) and UDPerror in Ether(frame)


@hypothesis_budget()
@given(l4=st.binary(max_size=64), dst=st.sampled_from([GW4, A("224.0.0.1"), A("10.0.2.255")]))
def test_arbitrary_icmp_never_raises(l4: bytes, dst: ipaddress.IPv4Address) -> None:
    """Any ICMP bytes towards the gateway or unroutable addresses are handled without raising."""
    loop = EventLoop()
    flows = FlowTable(loop)
    h = icmp.IcmpHandler(loop, make_view(), make_guest(), flows, Sink())
    try:
        pkt = parsed(echo_frame(4, 1, 1, b"", dst=dst))
        h.from_guest(pkt._replace(l4=memoryview(l4)))
    finally:
        h.close_all()
        loop.close()
