# SPDX-License-Identifier: MIT
"""Asks a back-end in an empty namespace what it gives the guest: for passt-py and real passt.

tests/test_local_mode_peer.py runs ``unshare -rn python -m tests.local_mode_peer_driver --
BACKEND-ARGV...`` once per back-end. Inside the fresh namespace (nothing but loopback, brought
up here) the back-end starts with ``--vhost-user -s SOCK -f`` and no addressing options, so it
must be in local mode. The test front-end (tests/frontend.py) plays QEMU and the guest, and asks:

- DHCP: a DISCOVER, and what the OFFER holds;
- NDP: a Router Solicitation from the guest's link-local address, and the RA's fields;
- DHCPv6: a SOLICIT with an IA_NA, and whether anything answers;
- TCP: a SYN from 169.254.2.1 to 169.254.2.2 on the port of a listener on 127.0.0.1, a few
  bytes each way once it is accepted.

The driver asserts nothing: it prints one JSON report on its last stdout line. The back-end is
stopped by PID in ``finally``; every wait is bounded.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scapy.layers.dhcp import BOOTP, DHCP  # noqa: E402
from scapy.layers.dhcp6 import (DUID_LL, DHCP6_Solicit, DHCP6OptClientId,  # noqa: E402
                                DHCP6OptElapsedTime, DHCP6OptIA_NA)
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import (ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptPrefixInfo,  # noqa: E402
                                ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import Ether  # noqa: E402

from passt_py.tcp.seg import ACK, FrameTemplate  # noqa: E402
from tests.frontend import Frontend  # noqa: E402
from tests.service_rig import Guest  # noqa: E402

GUEST_MAC = "52:54:00:ab:cd:ef"     # what tests.service_rig.Guest sends from
GUEST_LL = "fe80::5054:ff:feab:cdef"
LOCAL_GUEST = ipaddress.IPv4Address("169.254.2.1")
LOCAL_GW = ipaddress.IPv4Address("169.254.2.2")
SOCKET_TIMEOUT = 10.0
REPLY_TIMEOUT = 2.0


def frames_of(fe: Frontend, want: type, timeout: float = REPLY_TIMEOUT) -> list[Ether]:
    """Frames from the back-end holding a ``want`` layer, until ``timeout`` passes."""
    out: list[Ether] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not out:
        try:
            frames = fe.recv_frames(16, timeout=max(0.05, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - a timeout here only means "nothing more came"
            frames = []
        out += [Ether(f) for f in frames if want in Ether(f)]
    return out


def ask_dhcp(fe: Frontend) -> dict:
    """The OFFER to a DISCOVER: address, server source, and options by name."""
    fe.send_frame(bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
                        / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                        / BOOTP(chaddr=bytes.fromhex(GUEST_MAC.replace(":", "")), xid=0x5151)
                        / DHCP(options=[("message-type", "discover"), "end"])))
    offers = frames_of(fe, BOOTP)
    if not offers:
        return {"answered": False}
    offer = offers[0]
    opts = {o[0]: [str(v) for v in o[1:]] for o in offer[DHCP].options if isinstance(o, tuple)}
    return {"answered": True, "yiaddr": offer[BOOTP].yiaddr, "src": offer[IP].src,
            "options": opts}


def ask_ra(fe: Frontend) -> dict:
    """The RA answering an RS from the guest's link-local address."""
    fe.send_frame(bytes(Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
                        / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
                        / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)))
    ras = frames_of(fe, ICMPv6ND_RA)
    if not ras:
        return {"answered": False}
    ra = ras[0]
    prefixes = []
    layer = ra.getlayer(ICMPv6NDOptPrefixInfo)
    while layer is not None:
        prefixes.append({"prefix": layer.prefix, "len": layer.prefixlen, "A": layer.A})
        layer = layer.payload.getlayer(ICMPv6NDOptPrefixInfo)
    return {"answered": True, "src": ra[IPv6].src, "lifetime": ra[ICMPv6ND_RA].routerlifetime,
            "M": ra[ICMPv6ND_RA].M, "prefixes": prefixes}


def ask_dhcpv6(fe: Frontend) -> dict:
    """Whether a SOLICIT with an IA_NA gets any answer."""
    fe.send_frame(bytes(Ether(src=GUEST_MAC, dst="33:33:00:01:00:02")
                        / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547)
                        / DHCP6_Solicit(trid=0x77) / DHCP6OptElapsedTime()
                        / DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC))
                        / DHCP6OptIA_NA(iaid=1)))
    return {"answered": bool(frames_of(fe, UDP))}


def ask_tcp(fe: Frontend) -> dict:
    """A connection from 169.254.2.1 to 169.254.2.2:port, where 127.0.0.1:port listens."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(REPLY_TIMEOUT * 2)
    port = lst.getsockname()[1]
    guest = Guest(fe, port)
    guest.tpl = FrameTemplate(LOCAL_GUEST, LOCAL_GW, guest.tpl.sport, port)
    out: dict = {"connected": False}
    try:
        guest.connect()
        out["connected"] = True
        conn, peer = lst.accept()
        with conn:
            out["peer"] = peer[0]
            guest.send(ACK, b"from the guest")
            conn.settimeout(REPLY_TIMEOUT)
            out["host_got"] = conn.recv(100).decode(errors="replace")
            conn.sendall(b"from the host")
            deadline = time.monotonic() + REPLY_TIMEOUT
            while len(guest.data) < len(b"from the host") and time.monotonic() < deadline:
                guest.segments(0.2)
            out["guest_got"] = bytes(guest.data).decode(errors="replace")
    except (AssertionError, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        lst.close()
    return out


def run(argv: list[str], report: dict) -> None:
    """Start the back-end, connect the front-end, ask every question."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    work = Path(tempfile.mkdtemp(prefix="lm-", dir="/tmp"))
    sock, log_path = work / "sock", work / "backend.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*argv, "--vhost-user", "-s", str(sock), "-f"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"back-end did not create {sock} (exit {proc.poll()})")
            time.sleep(0.05)
        time.sleep(0.2)                     # bind() comes before listen()
        with Frontend(str(sock)) as fe:
            fe.connect_all()
            fe.provide_rx(128)
            report["dhcp"] = ask_dhcp(fe)
            report["ra"] = ask_ra(fe)
            report["dhcpv6"] = ask_dhcpv6(fe)
            report["tcp"] = ask_tcp(fe)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        report["log"] = log_path.read_text(errors="replace")[-6000:]
        for path in (sock, log_path, Path(f"{sock}.repair")):
            path.unlink(missing_ok=True)
        os.rmdir(work)


def main() -> int:
    """The back-end's argv follows ``--``; prints the JSON report last."""
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    report: dict = {"error": None}
    try:
        if not argv:
            raise RuntimeError("usage: local_mode_peer_driver -- BACKEND-ARGV...")
        run(argv, report)
    except Exception:  # noqa: BLE001 - the report carries any failure to the test
        report["error"] = traceback.format_exc()[-4000:]
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
