# SPDX-License-Identifier: MIT
"""Write the seed corpora under tests/fuzz/corpus/ (run again after changing the seeds).

    python -m tests.fuzz.make_corpus [--pcap FILE ...]

Frame seeds are built with scapy: every protocol the guest link handles, well-formed (so the
mutations start deep inside each parser) plus a few classic malformations. ``--pcap`` adds the
frames of captures taken with ``passt-py -p FILE`` during a real guest session (see README.md).
The other targets get small structured seeds: their inputs are read as fields by
tests/fuzz/targets.Reader, so any bytes are valid and a few lengths are enough.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CORPUS = Path(__file__).resolve().parent / "corpus"


def frame_seeds() -> list[bytes]:
    """Well-formed and classic broken guest frames of every handled protocol."""
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.dhcp6 import (DUID_LL, DHCP6_Request, DHCP6_Solicit, DHCP6OptClientId,
                                    DHCP6OptElapsedTime, DHCP6OptIA_NA, DHCP6OptOptReq,
                                    DHCP6OptServerId)
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RS,
                                    ICMPv6NDOptSrcLLAddr, IPv6)
    from scapy.layers.l2 import ARP, Ether

    from tests.fuzz.targets import DNS4, GUEST4, GUEST6, GUEST_MAC, GW4, GW6, OUR_MAC
    mac = ":".join(f"{b:02x}" for b in GUEST_MAC)
    our = ":".join(f"{b:02x}" for b in OUR_MAC)
    ll = "fe80::5054:ff:fe12:3456"
    e = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
    eu = Ether(src=mac, dst=our)
    e6 = Ether(src=mac, dst="33:33:00:01:00:02")
    chaddr = GUEST_MAC + bytes(10)
    duid = DUID_LL(lladdr=mac)
    seeds = [
        e / ARP(op=1, hwsrc=mac, psrc=str(GUEST4), pdst=str(GW4)),
        e / ARP(op=1, hwsrc=mac, psrc="0.0.0.0", pdst=str(GUEST4)),
        eu / ARP(op=2, hwsrc=mac, psrc=str(GUEST4), hwdst=our, pdst=str(GW4)),
        e / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
        BOOTP(chaddr=chaddr, xid=0x1234) /
        DHCP(options=[("message-type", "discover"), ("param_req_list", [1, 3, 6, 15, 26, 119]),
                      ("hostname", b"guest"), ("max_dhcp_size", 1500), "end"]),
        e / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
        BOOTP(chaddr=chaddr, xid=0x1234) /
        DHCP(options=[("message-type", "request"), ("requested_addr", str(GUEST4)),
                      ("server_id", str(GW4)), ("client_id", b"\x01" + GUEST_MAC),
                      (81, b"\x00\x00\x00guest"), "end"]),
        e / IP(src=str(GUEST4), dst=str(GW4)) / UDP(sport=68, dport=67) /
        BOOTP(ciaddr=str(GUEST4), chaddr=chaddr) /
        DHCP(options=[("message-type", "inform"), "end"]),
        e / IP(src=str(GUEST4), dst=str(GW4)) / UDP(sport=68, dport=67) /
        BOOTP(chaddr=chaddr) / DHCP(options=[("message-type", "release"), "end"]),
        e6 / IPv6(src=ll, dst="ff02::1:2") / UDP(sport=546, dport=547) /
        DHCP6_Solicit(trid=0x1234) / DHCP6OptClientId(duid=duid) / DHCP6OptIA_NA(iaid=1) /
        DHCP6OptElapsedTime() / DHCP6OptOptReq(reqopts=[23, 24, 39]),
        e6 / IPv6(src=ll, dst="ff02::1:2") / UDP(sport=546, dport=547) /
        DHCP6_Request(trid=0x1235) / DHCP6OptClientId(duid=duid) /
        DHCP6OptServerId(duid=DUID_LL(lladdr=our)) / DHCP6OptIA_NA(iaid=1),
        Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src=ll, dst="ff02::2", hlim=255) /
        ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=mac),
        Ether(src=mac, dst="33:33:ff:00:00:01") / IPv6(src=ll, dst="ff02::1:ff00:1", hlim=255) /
        ICMPv6ND_NS(tgt=str(GW6)) / ICMPv6NDOptSrcLLAddr(lladdr=mac),
        Ether(src=mac, dst="33:33:ff:00:00:15") / IPv6(src="::", dst="ff02::1:ff00:15",
                                                       hlim=255) / ICMPv6ND_NS(tgt=str(GUEST6)),
        Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src=ll, dst="ff02::1", hlim=255) /
        ICMPv6ND_NA(tgt=ll, R=0, S=0, O=1),
        eu / IP(src=str(GUEST4), dst=str(GW4)) / ICMP(id=7, seq=1) / (b"ping" * 8),
        eu / IPv6(src=str(GUEST6), dst=str(GW6)) / ICMPv6EchoRequest(id=7, seq=1) / b"ping6",
        eu / IP(src=str(GUEST4), dst=str(GW4)) / UDP(sport=40000, dport=9) / b"hello",
        eu / IP(src=str(GUEST4), dst=str(DNS4)) / UDP(sport=40001, dport=53) / (b"\x12\x34" +
                                                                                bytes(10)),
        eu / IPv6(src=str(GUEST6), dst=str(GW6)) / UDP(sport=40002, dport=9) / b"hello6",
        eu / IP(src=str(GUEST4), dst="203.0.113.9") / UDP(sport=40003, dport=7) / b"away",
        eu / IP(src=str(GUEST4), dst=str(GW4)) / TCP(sport=41000, dport=9, flags="S", seq=1000,
                                                   options=[("MSS", 1460), ("WScale", 7),
                                                            ("SAckOK", b""),
                                                            ("Timestamp", (1, 0))]),
        eu / IP(src=str(GUEST4), dst=str(GW4)) / TCP(sport=41000, dport=9, flags="A", seq=1001,
                                                   ack=5000),
        eu / IP(src=str(GUEST4), dst=str(GW4)) / TCP(sport=41000, dport=9, flags="PA",
                                                   seq=1001, ack=5000) / b"data",
        eu / IP(src=str(GUEST4), dst=str(GW4)) / TCP(sport=41000, dport=9, flags="FA",
                                                   seq=1005, ack=5000),
        eu / IP(src=str(GUEST4), dst=str(GW4)) / TCP(sport=41001, dport=9, flags="R", seq=1),
        eu / IPv6(src=str(GUEST6), dst=str(GW6)) / TCP(sport=41002, dport=9, flags="S",
                                                     options=[("MSS", 1440)]),
        eu / IP(src=str(GUEST4), dst=str(GW4), flags="MF", frag=0) / UDP(sport=1, dport=9) /
        b"frag",
        eu / IP(src=str(GUEST4), dst=str(GW4), ihl=15, options=[]) / (b"x" * 40),
        eu / IP(src=str(GUEST4), dst=str(GW4)) / UDP(sport=40004, dport=9, len=4000) / b"short",
        eu / IPv6(src=str(GUEST6), dst=str(GW6), nh=0) / (b"\x11\x00" + bytes(6) +
                                                          struct.pack("!HHHH", 1, 9, 12, 0) +
                                                          b"abcd"),
    ]
    return [bytes(p) for p in seeds]


def migrate_seeds() -> list[bytes]:
    """Real migration streams (without their end marker) of a back-end holding ping, UDP and
    TCP flows, written by passt_py.migrate.source.Source in a private network namespace."""
    import socket

    from passt_py.migrate.codec import DIGEST_LEN, SECTION
    from passt_py.migrate.source import Source
    from tests.frames import tcp4_frame, udp4_frame
    from tests.fuzz import netns_guard, targets
    seeds = []
    with netns_guard.private_netns():
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind(("127.0.0.1", 9))
        rig = targets.FrameRig()
        rig.serve_tcp_echo(9)
        try:
            for flows in (0, 1, 3):
                frames = [udp4_frame(40000 + i, 9, b"load") for i in range(flows)]
                frames += [frame for frame in frame_seeds() if frame[12:14] == b"\x08\x00"
                           and frame[23] == 1][:1]
                rig.feed(frames, 3)
                synacks = {}
                for i in range(flows):
                    for f in rig.feed([tcp4_frame(41000 + i, 9, 0x02, 1000)], 3):
                        if f[47] & 0x12 == 0x12:
                            synacks[41000 + i] = struct.unpack_from("!I", f, 38)[0]
                for port, isn in synacks.items():
                    rig.feed([tcp4_frame(port, 9, 0x10, 1001, isn + 1)], 2)
                    rig.feed([tcp4_frame(port, 9, 0x18, 1001, isn + 1, b"hello")], 3)
                src = Source(targets.migrate_context(rig))
                src.pre()
                data = b"".join(src.sections())
                src.rollback()
                seeds.append(data[:-(SECTION.size + DIGEST_LEN)])
                for handler in (rig.icmp, rig.udp, rig.tcp):
                    if handler is not None:
                        handler.close_all()
        finally:
            rig.close()
            echo.close()
    return seeds


def pcap_frames(path: Path) -> list[bytes]:
    """Frames of a classic pcap file (as passt-py -p writes it)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data)[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(end + "I", data, off + 8)[0]
        out.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return out


def write(target: str, seeds: list[bytes]) -> int:
    """Store seeds as files named by their hash; returns how many are new."""
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    new = 0
    for seed in seeds:
        p = folder / hashlib.sha1(seed).hexdigest()[:16]
        if not p.exists():
            p.write_bytes(seed)
            new += 1
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pcap", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    rng = random.Random(8)
    frames = frame_seeds()
    for pcap in args.pcap:
        frames += pcap_frames(pcap)
    counts = {
        "frames": write("frames", frames),
        "virtq": write("virtq", [rng.randbytes(n) for n in (16, 64, 160, 300, 600)]),
        "checksum": write("checksum", [bytes(1), rng.randbytes(33), rng.randbytes(100),
                                       rng.randbytes(1500)] + frames[:3]),
        "iov": write("iov", [rng.randbytes(n) for n in (0, 7, 300, 5000)]),
        "vhost": write("vhost", [rng.randbytes(n) for n in (8, 40, 120, 400)]),
        "migrate": write("migrate", migrate_seeds()),
    }
    for target, n in counts.items():
        print(f"{target}: {n} new seed(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
