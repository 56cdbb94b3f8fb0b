# SPDX-License-Identifier: MIT
"""The C core's Internet checksum against known vectors, scapy-built packets and the reference."""
from __future__ import annotations

import mmap
import os
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from passt_py import core
from passt_py.ref import checksum as ref
from tests.conftest import hypothesis_budget

SRC4, DST4 = bytes([10, 0, 2, 15]), bytes([93, 184, 216, 34])
SRC6 = bytes.fromhex("fe800000000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000042")

IMPLS = core.csum_impls()


def _folded(total: int) -> int:
    """A sum folded to 16 bits with end-around carries (not complemented), through the
    reference's public csum_fold (which complements)."""
    return ~ref.csum_fold(total) & 0xFFFF


def _rand(n: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(n)


def _field(seg: bytes, off: int) -> int:
    """Checksum field at off, as the host int the C core returns."""
    return struct.unpack_from("!H", seg, off)[0]


# ---- known vectors ----

def test_rfc1071_example_sum():
    """RFC 1071's numerical example (00 01 f2 03 f4 f5 f6 f7) sums to 0xddf2."""
    assert core.csum_partial(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2


def test_rfc1071_example_checksum():
    """The checksum of RFC 1071's example is the complement of its sum, 0x220d."""
    assert core.csum_fold(core.csum_partial(bytes.fromhex("0001f203f4f5f6f7"))) == 0x220D


def test_real_ipv4_header():
    """A captured IPv4 header (192.168.0.1 -> 192.168.0.199, UDP) checksums to 0xb861."""
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert core.csum_ipv4_header(hdr) == 0xB861


def test_ipv4_header_ignores_current_field():
    """The header checksum is the same whatever the field held before."""
    hdr = bytearray.fromhex("450000730000400040110000c0a80001c0a800c7")
    hdr[10:12] = b"\xde\xad"
    assert core.csum_ipv4_header(hdr) == 0xB861


def test_ipv4_header_verifies_to_zero():
    """Summing a header that carries its correct checksum folds to zero."""
    hdr = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")
    assert core.csum_fold(core.csum_partial(hdr)) == 0


def test_ipv4_header_with_options_matches_scapy():
    """A 24-byte header with an option gets the checksum scapy computes."""
    pkt = bytes(IP(src="10.0.2.15", dst="10.0.2.2", options=b"\x94\x04\x00\x00") / UDP())
    ihl = (pkt[0] & 0xF) * 4
    assert ihl == 24
    assert core.csum_ipv4_header(pkt[:ihl]) == _field(pkt, 10)


@pytest.mark.parametrize("length", [0, 19, 22, 64])
def test_ipv4_header_bad_length_rejected(length):
    """A length that no IHL can express is an error, not a checksum."""
    with pytest.raises(core.CoreError):
        core.csum_ipv4_header(bytes(length))


# ---- real packets built by scapy ----

@pytest.mark.parametrize("payload_len", [0, 1, 2, 513, 1460])
def test_tcp_ipv4_matches_scapy(payload_len):
    """TCP over IPv4 gets scapy's checksum, odd payloads included."""
    pkt = IP(src="10.0.2.15", dst="93.184.216.34") / TCP(sport=40000, dport=80, flags="PA",
                                                          seq=123456) / Raw(_rand(payload_len))
    seg = bytes(pkt)[20:]
    assert core.csum_l4_ipv4(SRC4, DST4, 6, seg) == _field(seg, 16)


@pytest.mark.parametrize("payload_len", [0, 1, 7, 1472])
def test_udp_ipv4_matches_scapy(payload_len):
    """UDP over IPv4 gets scapy's checksum."""
    pkt = IP(src="10.0.2.15", dst="93.184.216.34") / UDP(sport=5353, dport=53) / Raw(
        _rand(payload_len, 2))
    seg = bytes(pkt)[20:]
    assert core.csum_l4_ipv4(SRC4, DST4, 17, seg) == _field(seg, 6)


@pytest.mark.parametrize("payload_len", [0, 3, 1440])
def test_tcp_ipv6_matches_scapy(payload_len):
    """TCP over IPv6 gets scapy's checksum."""
    pkt = IPv6(src="fe80::1", dst="2001:db8::42") / TCP(sport=22, dport=50000, flags="A") / Raw(
        _rand(payload_len, 3))
    seg = bytes(pkt)[40:]
    assert core.csum_l4_ipv6(SRC6, DST6, 6, seg) == _field(seg, 16)


@pytest.mark.parametrize("payload_len", [0, 5, 1452])
def test_udp_ipv6_matches_scapy(payload_len):
    """UDP over IPv6 gets scapy's checksum."""
    pkt = IPv6(src="fe80::1", dst="2001:db8::42") / UDP(sport=546, dport=547) / Raw(
        _rand(payload_len, 4))
    seg = bytes(pkt)[40:]
    assert core.csum_l4_ipv6(SRC6, DST6, 17, seg) == _field(seg, 6)


@pytest.mark.parametrize("data_len", [0, 1, 56, 1001])
def test_icmpv6_matches_scapy(data_len):
    """ICMPv6 echo request gets scapy's checksum (with the IPv6 pseudo-header)."""
    pkt = IPv6(src="fe80::1", dst="2001:db8::42") / ICMPv6EchoRequest(id=7, seq=1,
                                                                       data=_rand(data_len, 5))
    seg = bytes(pkt)[40:]
    assert core.csum_l4_ipv6(SRC6, DST6, 58, seg) == _field(seg, 2)


@pytest.mark.parametrize("data_len", [0, 1, 56, 1471])
def test_icmp4_matches_scapy(data_len):
    """ICMP echo request over IPv4 gets scapy's checksum (no pseudo-header)."""
    pkt = IP(src="10.0.2.15", dst="93.184.216.34") / ICMP(id=7, seq=1) / Raw(_rand(data_len, 6))
    seg = bytes(pkt)[20:]
    assert core.csum_icmp4(seg) == _field(seg, 2)


def test_l4_verifies_against_stored_field():
    """A received segment with a corrupted payload no longer matches its stored checksum."""
    seg = bytearray(bytes(IP(src="10.0.2.15", dst="93.184.216.34") / TCP() / Raw(b"hello"))[20:])
    stored = _field(seg, 16)
    seg[-1] ^= 0x01
    assert core.csum_l4_ipv4(SRC4, DST4, 6, seg) != stored


def _zero_sum_segment(proto: int, field: int) -> bytes:
    """A segment whose computed checksum is 0: its last word cancels everything else."""
    seg = bytearray(_rand(40, 7))
    seg[field:field + 2] = b"\x00\x00"
    seg[-2:] = b"\x00\x00"
    seg[-2:] = ref.csum_fold(ref.csum_partial(seg, ref.pseudo_ipv4(SRC4, DST4, proto,
                                                                    len(seg)))).to_bytes(2, "big")
    return bytes(seg)


def test_udp_zero_checksum_sent_as_ffff():
    """UDP never emits 0 (it means 'no checksum'): a computed 0 is sent as 0xffff."""
    assert core.csum_l4_ipv4(SRC4, DST4, 17, _zero_sum_segment(17, 6)) == 0xFFFF


def test_tcp_zero_checksum_kept():
    """TCP has no 'no checksum' value, so a computed 0 stays 0."""
    assert core.csum_l4_ipv4(SRC4, DST4, 6, _zero_sum_segment(6, 16)) == 0


def test_l4_unknown_protocol_rejected():
    """A protocol without a known checksum field is an error."""
    with pytest.raises(core.CoreError):
        core.csum_l4_ipv4(SRC4, DST4, 47, bytes(20))


@pytest.mark.parametrize("proto", [1, 58])
def test_icmp_protocols_over_ipv4_rejected(proto):
    """ICMP over IPv4 takes no pseudo-header and ICMPv6 does not ride IPv4: both refused."""
    with pytest.raises(core.CoreError):
        core.csum_l4_ipv4(SRC4, DST4, proto, bytes(20))


def test_l4_segment_shorter_than_field_rejected():
    """A TCP segment too short to hold its checksum field is an error."""
    with pytest.raises(core.CoreError):
        core.csum_l4_ipv6(SRC6, DST6, 6, bytes(17))


def test_l4_ipv4_over_65535_rejected():
    """IPv4's pseudo-header cannot express a length above 65535."""
    with pytest.raises(core.CoreError):
        core.csum_l4_ipv4(SRC4, DST4, 17, bytes(65536))


def test_l4_ipv6_jumbo_matches_reference():
    """IPv6 allows (jumbogram) lengths above 65535, carried in 32 bits of the pseudo-header."""
    seg = _rand(70000, 8)
    assert core.csum_l4_ipv6(SRC6, DST6, 17, seg) == ref.csum_l4_ipv6(SRC6, DST6, 17, seg)


def test_address_length_checked():
    """A 4-byte address where 16 are needed is refused before reaching C."""
    with pytest.raises(ValueError):
        core.csum_l4_ipv6(SRC4, DST4, 6, bytes(20))


def test_pseudo_headers_match_reference():
    """Pseudo-header partial sums match the reference for v4 and v6."""
    assert core.pseudo_ipv4(SRC4, DST4, 6, 1480) == ref.pseudo_ipv4(SRC4, DST4, 6, 1480)
    assert core.pseudo_ipv6(SRC6, DST6, 58, 70000) == ref.pseudo_ipv6(SRC6, DST6, 58, 70000)


def test_pseudo_plus_iov_equals_l4():
    """Pseudo-header sum + header/payload iovec + fold gives the one-shot L4 checksum."""
    seg = bytearray(bytes(IP(src="10.0.2.15", dst="93.184.216.34") / UDP() / Raw(_rand(333)))[20:])
    want = _field(seg, 6)
    seg[6:8] = b"\x00\x00"
    init = core.pseudo_ipv4(SRC4, DST4, 17, len(seg))
    assert core.csum_fold(core.csum_iov([seg[:8], seg[8:9], seg[9:]], init)) == want


# ---- lengths, offsets and alignment ----

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("start", range(8))
@pytest.mark.parametrize("length", [0, 1, 2, 3, 7, 31, 32, 33, 127, 128, 129, 255, 1500])
def test_offsets_and_lengths_match_reference(impl, start, length):
    """Every implementation matches the reference at start offsets 0..7 and tricky lengths."""
    buf = memoryview(_rand(length + 8, length))
    view = buf[start:start + length]
    assert core.csum_partial_impl(impl, view) == ref.csum_partial(view)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("length", [65535, 65536, 65537, 1 << 20, (1 << 20) + 1])
def test_large_lengths_match_reference(impl, length):
    """Lengths at and past 64 KiB, up to 1 MiB + 1, match the reference."""
    data = _rand(length, 9)
    assert core.csum_partial_impl(impl, data) == ref.csum_partial(data)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("start", range(33))
@pytest.mark.parametrize("length", [255, 256, 257, 287, 288, 289, 319, 383, 384, 415, 1023, 4097])
def test_vector_thresholds_and_heads_match_reference(impl, start, length):
    """Around the vector-path threshold and its 0..31-byte alignment head, results still match."""
    buf = memoryview(_rand(length + 64, length + 1))
    view = buf[start:start + length]
    assert core.csum_partial_impl(impl, view) == ref.csum_partial(view)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("byte", [0x00, 0x7F, 0x80, 0xFF])
@pytest.mark.parametrize("start", [0, 1, 17])
def test_extreme_words_over_several_mib(impl, byte, start):
    """Constant data at the signed/unsigned word extremes sums exactly over 3 MiB + 5 bytes."""
    length = (3 << 20) + 5
    view = memoryview(bytes([byte]) * (length + start))[start:]
    want = _folded((length // 2) * byte * 0x101 + (byte << 8))
    assert core.csum_partial_impl(impl, view) == want


def test_auto_matches_each_implementation():
    """The default dispatch gives the same answer as every implementation."""
    data = memoryview(_rand(4099, 10))[3:]
    assert {core.csum_partial_impl(i, data) for i in IMPLS} == {core.csum_partial(data)}


def test_all_ones_data_sums_to_ffff():
    """All-0xff data sums to 0xffff (negative zero), never folds to 0."""
    assert core.csum_partial(b"\xff" * 1000) == 0xFFFF


def test_empty_buffer_returns_init():
    """An empty buffer adds nothing: the result is init."""
    assert core.csum_partial(b"", 0x1234) == 0x1234


def test_unknown_implementation_rejected():
    """Asking for an implementation that does not exist is an error."""
    with pytest.raises(core.CoreError):
        core.csum_partial_impl(99, b"abc")


def test_beyond_4gib_sparse():
    """A 4 GiB + 3 buffer (sparse mapping) sums data past the 1 GiB chunk and 4 GiB marks."""
    size = (4 << 30) + 3
    map_noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000)
    try:
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | map_noreserve)
    except (OSError, OverflowError) as exc:
        pytest.skip(f"cannot map 4 GiB: {exc}")
    try:
        marks = {0: 0x12, (1 << 30) + 1: 0x34, (1 << 32) + 1: 0x56, size - 1: 0x78}
        for pos, val in marks.items():
            m[pos] = val
        want = sum(val << (0 if pos % 2 else 8) for pos, val in marks.items())
        for impl in IMPLS:
            assert core.csum_partial_impl(impl, m) == _folded(want)
    finally:
        m.close()


# ---- iovec chaining ----

def test_iov_odd_segment_shifts_next_lane():
    """After an odd-length segment the next segment's bytes sit in the other byte lane."""
    assert core.csum_iov([b"\x01", b"\x02\x03"]) == 0x0102 + 0x0300


def test_iov_empty_list_returns_init():
    """An empty iovec array sums to init."""
    assert core.csum_iov([], 0xBEEF) == 0xBEEF


@hypothesis_budget(3)
@given(data=st.binary(max_size=3000), init=st.integers(0, 0xFFFF), start=st.integers(0, 63))
def test_partial_property(data, init, start):
    """csum_partial matches the reference for random data, init and start offset."""
    view = memoryview(bytes(start) + data)[start:]
    for impl in IMPLS:
        assert core.csum_partial_impl(impl, view, init) == ref.csum_partial(data, init)


@hypothesis_budget(3)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=12),
       init=st.integers(0, 0xFFFFFFFF))
def test_iov_property(data, cuts, init):
    """csum_iov over any split of the data equals the sum of the unsplit data."""
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    segs = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    assert core.csum_iov(segs, init) == ref.csum_partial(data, init)


@hypothesis_budget(2)
@given(seg=st.binary(min_size=20, max_size=2000), proto=st.sampled_from([6, 17, 58]),
       src=st.binary(min_size=16, max_size=16), dst=st.binary(min_size=16, max_size=16))
def test_l4_ipv6_property(seg, proto, src, dst):
    """L4 checksums over IPv6 match the reference for random segments and addresses."""
    assert core.csum_l4_ipv6(src, dst, proto, seg) == ref.csum_l4_ipv6(src, dst, proto, seg)


@hypothesis_budget(2)
@given(seg=st.binary(min_size=20, max_size=2000), proto=st.sampled_from([6, 17]),
       src=st.binary(min_size=4, max_size=4), dst=st.binary(min_size=4, max_size=4))
def test_l4_ipv4_property(seg, proto, src, dst):
    """L4 checksums over IPv4 match the reference for random segments and addresses."""
    assert core.csum_l4_ipv4(src, dst, proto, seg) == ref.csum_l4_ipv4(src, dst, proto, seg)


@hypothesis_budget(2)
@given(words=st.lists(st.integers(0, 0xFF), min_size=20, max_size=60))
def test_ipv4_header_property(words):
    """IPv4 header checksums match the reference for every valid header length."""
    hdr = bytes(words[:len(words) // 4 * 4])
    assert core.csum_ipv4_header(hdr) == ref.csum_ipv4_header(hdr)


@hypothesis_budget()
@given(msg=st.binary(min_size=4, max_size=1500))
def test_icmp4_property(msg):
    """ICMP checksums match the reference."""
    assert core.csum_icmp4(msg) == ref.csum_icmp4(msg)


@hypothesis_budget()
@given(total=st.integers(0, 0xFFFFFFFF))
def test_fold_property(total):
    """Folding any 32-bit partial sum matches the reference."""
    assert core.csum_fold(total) == ref.csum_fold(total)


def test_writable_and_readonly_buffers_accepted():
    """bytes, bytearray and memoryview inputs give the same result."""
    data = os.urandom(101)
    assert core.csum_partial(data) == core.csum_partial(bytearray(data)) == core.csum_partial(
        memoryview(data))
