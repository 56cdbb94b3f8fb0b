# SPDX-License-Identifier: MIT
"""A real Linux guest under the real QEMU, networked by passt-py alone.

Frames cross the real virtqueues both ways; the guest configures itself from our ARP, DHCP and
router advertisements; ICMP and UDP reach the host's loopback through the gateway address, and
the host reaches the guest through -u forwards. Payloads are checked by hash, and the pcap of
the session is read back with every checksum verified.
"""
from __future__ import annotations

import hashlib
import socket
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.dhcp import DHCP
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from tests.netns import in_netns
from tests.guest.boot import BackendFactory

pytestmark = pytest.mark.qemu

GUEST_MAC = "52:54:00:12:34:56"


def passt_py(*extra: str, pcap: Path | None = None) -> BackendFactory:
    """Back-end argv for passt-py in the foreground (debug log kept for diagnostics)."""
    def factory(sock: Path) -> list[str]:
        argv = [sys.executable, "-m", "passt_py", "-f", "-d", "--vhost-user", "-s", str(sock)]
        if pcap is not None:
            argv += ["-p", str(pcap)]
        return argv + list(extra)
    return factory


def test_frames_flow_both_ways_through_real_rings(guest_boot, guest_netns, tmp_path):
    """The guest's DHCP DISCOVER reaches us, and our ARP request for the guest is answered."""
    pcap = tmp_path / "link.pcap"
    guest = guest_boot(passt_py(pcap=pcap), guest_netns, dhcp=False)
    guest.check("ip link set eth0 up")
    guest.run("udhcpc -n -q -t 1 -T 1 -i eth0 -s /bin/true", timeout=15)
    guest.check("ip addr add 10.200.0.2/24 dev eth0")
    # The back-end probes for the guest's MAC every second until it has seen the guest.
    deadline_ok = False
    for _ in range(10):
        guest.run("sleep 1", timeout=5)
        frames = rdpcap(str(pcap))
        replies = [p for p in frames if ARP in p and p[ARP].op == 2
                   and p[ARP].psrc == "10.200.0.2"]
        if replies:
            deadline_ok = True
            break
    frames = rdpcap(str(pcap))
    discovers = [p for p in frames if DHCP in p and ("message-type", 1) in p[DHCP].options]
    assert discovers and discovers[0][Ether].src == GUEST_MAC
    requests = [p for p in frames if ARP in p and p[ARP].op == 1 and p[ARP].pdst == "10.200.0.2"]
    assert requests and requests[0][Ether].src == "9a:55:9a:55:9a:55"
    assert deadline_ok, "the guest never answered the ARP probe"
    assert replies[0][ARP].hwsrc == GUEST_MAC and replies[0][ARP].pdst == "10.200.0.1"


def test_guest_gets_address_router_mtu_by_dhcp_and_pings(guest_boot, guest_netns):
    """DHCP gives the host's address, its gateway and MTU 65520; ping v4 and v6 work."""
    guest = guest_boot(passt_py(), guest_netns, dhcp=True)
    lease = guest.wait_dhcp(timeout=30)
    assert lease["ip"] == "10.200.0.2"
    assert lease["router"].split() == ["10.200.0.1"]
    assert lease["mtu"] == "65520"
    assert guest.check("cat /sys/class/net/eth0/mtu").strip() == "65520"
    assert "default via 10.200.0.1 dev eth0" in guest.check("ip -4 route")
    rc, out = guest.run("ping -c2 -W5 10.200.0.1", timeout=20)
    assert rc == 0 and "2 packets received" in out, out
    addr = guest.wait_ipv6("fd00:200:", timeout=30)
    assert addr.endswith("/64")
    assert "default via fe80::" in guest.check("ip -6 route") or \
        "default via" in guest.check("ip -6 route")
    rc, out = guest.run("ping -6 -c2 -W5 fd00:200::1", timeout=20)
    assert rc == 0 and "2 packets received" in out, out



def _wait_guest_file(guest, path: str, size: int, timeout: float = 20.0) -> bytes:
    """Poll the guest until ``path`` holds ``size`` bytes; return its contents."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, out = guest.run(f"stat -c %s {path}", timeout=5)
        if rc == 0 and out.strip() == str(size):
            return guest.agent.read_file(path)
        time.sleep(0.3)
    raise AssertionError(f"{path} never reached {size} bytes in the guest")


FAMILIES = [
    pytest.param(socket.AF_INET, "127.0.0.1", "10.200.0.1", "4", id="ipv4"),
    pytest.param(socket.AF_INET6, "::1", "fd00:200::1", "6", id="ipv6"),
]


def _udp_target(gw: str, port: int, v: str) -> str:
    return f"UDP{v}:{gw}:{port}" if v == "4" else f"UDP6:[{gw}]:{port}"


@pytest.mark.parametrize("family,loop_addr,gw,v", FAMILIES)
def test_udp_guest_to_host_loopback_via_gateway(guest_boot, guest_netns, family, loop_addr,
                                                gw, v):
    """A 60000-byte datagram from the guest to the gateway reaches the host's loopback intact,
    from the guest's own source port, and the 60000-byte reply reaches the guest intact."""
    guest = guest_boot(passt_py(), guest_netns, dhcp=True)
    guest.wait_dhcp(timeout=30)
    if v == "6":
        guest.wait_ipv6("fd00:200:", timeout=30)
    payload = bytes((i * 7 + 3) & 0xFF for i in range(60000))
    guest.agent.write_file("/tmp/payload", payload)
    with in_netns(guest_netns):
        server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((loop_addr, 0))
    server.settimeout(20)
    port = server.getsockname()[1]
    guest.check(f"(socat -b 65536 -t 10 -T 10 OPEN:/tmp/payload!!OPEN:/tmp/reply,creat,trunc "
                f"{_udp_target(gw, port, v)},sourceport=40000 >/tmp/socat.log 2>&1 &)")
    data, peer = server.recvfrom(65536)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert peer[1] == 40000, "the guest's source port is kept on the host side"
    reply = payload[::-1]
    server.sendto(reply, peer)
    server.close()
    got = _wait_guest_file(guest, "/tmp/reply", len(reply))
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(reply).hexdigest()


@pytest.mark.parametrize("family,loop_addr,gw,v", FAMILIES)
def test_udp_host_to_guest_through_forward(guest_boot, guest_netns, family, loop_addr, gw, v):
    """A 60000-byte datagram to a -u forwarded port on the host's loopback reaches the guest."""
    guest = guest_boot(passt_py("-u", "5555"), guest_netns, dhcp=True)
    guest.wait_dhcp(timeout=30)
    if v == "6":
        guest.wait_ipv6("fd00:200:", timeout=30)
        # As with passt, inbound IPv6 goes to the address the guest was last seen using.
        guest.check("ping -6 -c1 -W5 fd00:200::1", timeout=15)
    guest.check(f"(socat -u -b 65536 UDP{v}-RECV:5555 OPEN:/tmp/in,creat,trunc "
                f">/tmp/socat.log 2>&1 &) ; sleep 0.3")
    payload = bytes((i * 13 + 1) & 0xFF for i in range(60000))
    with in_netns(guest_netns):
        client = socket.socket(family, socket.SOCK_DGRAM)
    client.sendto(payload, (loop_addr, 5555))
    client.close()
    got = _wait_guest_file(guest, "/tmp/in", len(payload))
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_session_pcap_parses_and_checksums_verify(guest_boot, guest_netns, tmp_path):
    """Every frame of a DHCP + ping + UDP session is in the pcap with valid checksums."""
    pcap = tmp_path / "session.pcap"
    guest = guest_boot(passt_py(pcap=pcap), guest_netns, dhcp=True)
    guest.wait_dhcp(timeout=30)
    guest.check("ping -c1 -W5 10.200.0.1", timeout=15)
    guest.run("echo hi | socat -u - UDP4:10.200.0.1:9", timeout=10)
    frames = rdpcap(str(pcap))
    kinds = {"dhcp": 0, "icmp": 0, "udp": 0}
    for pkt in frames:
        if IP in pkt:
            assert _ipv4_ok(pkt), pkt.summary()
            if DHCP in pkt:
                kinds["dhcp"] += 1
            elif ICMP in pkt:
                kinds["icmp"] += 1
            elif UDP in pkt:
                kinds["udp"] += 1
        if IPv6 in pkt:
            assert _ipv6_l4_ok(pkt), pkt.summary()
    assert kinds["dhcp"] >= 2 and kinds["icmp"] >= 2 and kinds["udp"] >= 1, kinds


def _ipv4_ok(pkt) -> bool:
    """IPv4 header and UDP/ICMP checksums of ``pkt`` are what scapy recomputes."""
    raw = bytes(pkt[IP])
    ip = IP(raw)
    fresh = ip.copy()
    fresh.chksum = None
    for layer in (UDP, ICMP):
        if layer in fresh:
            if layer is UDP and ip[UDP].chksum == 0:
                continue          # no checksum is allowed for UDP over IPv4
            fresh[layer].chksum = None
    rebuilt = IP(bytes(fresh))
    if rebuilt.chksum != ip.chksum:
        return False
    for layer in (UDP, ICMP):
        if layer in ip and layer in rebuilt and ip[layer].chksum != rebuilt[layer].chksum:
            if layer is UDP and ip[UDP].chksum == 0:
                continue
            return False
    return True


def _ipv6_l4_ok(pkt) -> bool:
    """The L4 checksum of an IPv6 packet verifies (sum over pseudo-header and data is 0)."""
    ip6 = IPv6(bytes(pkt[IPv6]))
    payload = bytes(ip6.payload)
    nh = ip6.nh
    if nh not in (17, 58, 6):
        return True
    pseudo = (ip6.src and socket.inet_pton(socket.AF_INET6, ip6.src)) + \
        socket.inet_pton(socket.AF_INET6, ip6.dst) + len(payload).to_bytes(4, "big") + \
        b"\0\0\0" + bytes([nh])
    data = pseudo + payload + (b"\0" if len(payload) % 2 else b"")
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_dhcpv6_solicit_from_guest_gets_our_address(guest_boot, guest_netns):
    """A DHCPv6 SOLICIT sent by the guest (no client in busybox: socat sends it) is answered
    with an ADVERTISE leasing the configured address, through the real rings."""
    from scapy.layers.dhcp6 import (DHCP6_Advertise, DHCP6_Solicit, DHCP6OptClientId,
                                    DHCP6OptIA_NA, DHCP6OptIAAddress, DUID_LL)
    guest = guest_boot(passt_py(), guest_netns, dhcp=True)
    guest.wait_ipv6("fd00:200:", timeout=30)
    solicit = bytes(DHCP6_Solicit(trid=0x123456)
                    / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC))
                    / DHCP6OptIA_NA(iaid=7))
    guest.agent.write_file("/tmp/solicit", solicit)
    guest.check("(socat -t 5 OPEN:/tmp/solicit!!OPEN:/tmp/advertise,creat,trunc "
                "UDP6-DATAGRAM:[ff02::1:2%eth0]:547,bind=[::]:546 >/tmp/socat6.log 2>&1 &)")
    deadline = time.monotonic() + 15
    data = b""
    while time.monotonic() < deadline and not data:
        time.sleep(0.3)
        rc, out = guest.run("stat -c %s /tmp/advertise", timeout=5)
        if rc == 0 and out.strip() not in ("", "0"):
            data = guest.agent.read_file("/tmp/advertise")
    assert data, "no DHCPv6 reply reached the guest"
    adv = DHCP6_Advertise(data)
    assert adv.msgtype == 2 and adv.trid == 0x123456
    assert adv[DHCP6OptIA_NA].iaid == 7
    assert adv[DHCP6OptIAAddress].addr == "fd00:200::2"


def _addressing(guest) -> dict[str, str]:
    """What a guest ends up with: DHCP lease, IPv4 routes, SLAAC prefix, IPv6 default route."""
    lease = guest.wait_dhcp(timeout=30)
    v6 = guest.wait_ipv6("fd00:200:", timeout=30)
    route6 = [line.split(" proto")[0] for line in guest.check("ip -6 route").splitlines()
              if line.startswith("default")]
    return {"ip": lease["ip"], "router": lease["router"], "mtu": lease["mtu"],
            "subnet": lease["subnet"], "dns": lease.get("dns", ""),
            "route4": guest.check("ip -4 route").strip(), "slaac": v6,
            "default6": " ".join(r.split(" metric")[0] for r in route6)}


def test_same_addressing_as_real_passt(guest_boot, guest_netns, real_passt):
    """The same guest, booted on the real passt and on passt-py, configures the same addresses,
    routes and MTU."""
    theirs = _addressing(guest_boot(
        lambda sock: [*real_passt, "-f", "--vhost-user", "-s", str(sock)], guest_netns))
    ours = _addressing(guest_boot(passt_py(), guest_netns, name="ours"))
    assert ours == theirs
