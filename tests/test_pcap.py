# SPDX-License-Identifier: MIT
"""pcap capture: a classic pcap file every tool can read, frames intact and timestamped."""
import os

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from passt_py.pcap import PcapWriter


def test_frames_round_trip_through_scapy(tmp_path):
    """Frames written in batches read back byte for byte, in order."""
    path = str(tmp_path / "cap.pcap")
    frames = [bytes(Ether() / IP(dst="127.0.0.1") / UDP(dport=9) / (bytes([i]) * (i * 100 + 1)))
              for i in range(5)]
    writer = PcapWriter(path)
    writer.write(frames[:2])
    writer.write(frames[2:])
    writer.close()
    packets = rdpcap(path)
    assert [bytes(p) for p in packets] == frames


def test_large_batches_are_written_whole(tmp_path):
    """A batch larger than IOV_MAX chunks is written completely."""
    path = str(tmp_path / "cap.pcap")
    frames = [bytes(Ether() / IP() / UDP() / (b"x" * (i % 50))) for i in range(1500)]
    writer = PcapWriter(path)
    writer.write(frames)
    writer.close()
    assert [bytes(p) for p in rdpcap(path)] == frames


def test_capture_file_is_private(tmp_path):
    """The capture holds the guest's traffic: only its owner may read it."""
    path = str(tmp_path / "cap.pcap")
    PcapWriter(path).close()
    assert os.stat(path).st_mode & 0o077 == 0


def test_partial_checksum_from_guest_is_completed_for_capture():
    """A guest frame with NEEDS_CSUM (pseudo-header sum only) is captured with a valid checksum."""
    import struct

    from scapy.layers.inet import IP as IP4

    from passt_py import core
    from passt_py.pcap import complete_checksum
    good = bytes(Ether() / IP4(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=5, dport=9) / b"hello!!")
    partial = bytearray(good)
    udp_off = 14 + 20
    pseudo = core.pseudo_ipv4(bytes(partial[26:30]), bytes(partial[30:34]), 17, 8 + 7)
    struct.pack_into("!H", partial, udp_off + 6, pseudo)
    vnet = struct.pack("<BBHHHH", 1, 0, 0, 0, udp_off, 6) + b"\0\0"
    assert complete_checksum(bytes(partial), vnet) == good
    no_offload = struct.pack("<BBHHHH", 0, 0, 0, 0, 0, 0) + b"\0\0"
    assert complete_checksum(bytes(partial), no_offload) == bytes(partial)
