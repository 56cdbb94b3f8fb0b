# SPDX-License-Identifier: MIT
"""Drive the Linux IPv6 stack with NdpResponder through a tap device, inside a private netns.

Run as ``unshare -n python tests/ndp_tap_driver.py SCENARIO`` (root): the tap ``tapg`` plays
the guest's NIC, the kernel is the guest's stack, and this process is the back-end answering
its NDP. Prints one JSON object with what the kernel ended up with (``ip -j`` output), so the
test asserts on the kernel's own view of our RAs and NAs. Scenarios:

- ``slaac``: the kernel autoconfigures from our RA, then resolves an on-link global and a
  link-local neighbour through our NAs.
- ``dad``: static addresses are probed by DAD; ours must be defended, the guest's must not.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

from passt_py.link.ethernet import ETH_P_IPV6, parse_header
from passt_py.link.ip import IPPROTO_ICMPV6, parse_ip
from passt_py.link.ndp import NdpResponder
from passt_py.link.netview import GuestState, Ip6View, NetView

A = ipaddress.IPv6Address
TAP = "tapg"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

VIEW = NetView(
    our_mac=bytes.fromhex("9a559a559a55"), mtu=4000, ip4=None,
    ip6=Ip6View(addr=A("2001:db8:1::2"), prefix_len=64, gateway=A("fe80::1"),
                our_ll=A("fe80::1"), dns=(A("2001:db8::53"),)),
    search=("example.com",))


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout


def _ip_json(*args: str) -> object:
    return json.loads(_sh("ip", "-j", *args) or "[]")


def _open_tap() -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def _pump(fd: int, resp: NdpResponder, guest: GuestState, seconds: float,
          done: object = None) -> None:
    """Answer the kernel's NDP for ``seconds``, or until ``done()`` holds."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if callable(done) and done():
            return
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        frame = os.read(fd, 65536)
        eth = parse_header(frame)
        if eth is None or eth.ethertype != ETH_P_IPV6:
            continue
        pkt = parse_ip(frame, ETH_P_IPV6)
        if pkt is None or pkt.proto != IPPROTO_ICMPV6 or not pkt.l4:
            continue
        if pkt.l4[0] not in range(133, 138):
            continue
        if not pkt.src.is_unspecified:      # what the demux would learn
            if pkt.src.is_link_local:
                guest.addr6_ll = pkt.src      # type: ignore[assignment]
            else:
                guest.addr6 = pkt.src         # type: ignore[assignment]
        for out in resp.handle(frame, pkt, guest):
            os.write(fd, out)


def _state() -> dict[str, object]:
    return {
        "addr": _ip_json("-6", "addr", "show", "dev", TAP),
        "route": _ip_json("-6", "route", "show", "dev", TAP),
        "neigh": _ip_json("-6", "neigh", "show", "dev", TAP),
        "mtu6": int(open(f"/proc/sys/net/ipv6/conf/{TAP}/mtu").read()),
        "hop_limit": int(open(f"/proc/sys/net/ipv6/conf/{TAP}/hop_limit").read()),
    }


def _has_default_route() -> bool:
    return any(r.get("dst") == "default" for r in _ip_json("-6", "route", "show", "dev", TAP))


def slaac() -> dict[str, object]:
    fd = _open_tap()
    _sh("ip", "link", "set", TAP, "address", "52:54:00:12:34:56", "mtu", "9000", "up")
    resp, guest = NdpResponder(VIEW), GuestState()
    _pump(fd, resp, guest, 15, _has_default_route)
    _pump(fd, resp, guest, 2.5)             # let DAD of the SLAAC address finish
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.sendto(b"x", ("2001:db8:1::99", 9))
    udp.sendto(b"x", ("fe80::77", 9, 0, socket.if_nametoindex(TAP)))
    _pump(fd, resp, guest, 3)
    return _state()


def dad() -> dict[str, object]:
    fd = _open_tap()
    _sh("sysctl", "-qw", f"net.ipv6.conf.{TAP}.accept_ra=0")
    _sh("ip", "link", "set", TAP, "address", "52:54:00:12:34:56", "up")
    _sh("ip", "-6", "addr", "add", "fe80::1/64", "dev", TAP)            # our link-local
    _sh("ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", TAP)      # the guest's address
    _sh("ip", "-6", "addr", "add", "2001:db8:1::1234/64", "dev", TAP)   # any other
    _pump(fd, NdpResponder(VIEW), GuestState(), 4)
    return _state()


if __name__ == "__main__":
    print(json.dumps({"slaac": slaac, "dad": dad}[sys.argv[1]]()))
