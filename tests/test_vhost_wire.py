# SPDX-License-Identifier: MIT
"""vhost-user wire format: layouts round-trip, and bad payloads are refused by their decoders."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from passt_py.vhost_user import wire
from passt_py.vhost_user.wire import (
    DeviceStateParams, FrameReader, FramingError, Header, LogDescription, MemoryRegion,
    MemoryTable, Message, RarpPayload, Request, U64, VringAddr, VringFile, VringState, WireError)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def test_request_codes_match_the_specification():
    """Codes the session relies on have the numbers of QEMU's vhost-user.rst."""
    assert (Request.GET_FEATURES, Request.SET_MEM_TABLE, Request.GET_VRING_BASE,
            Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM, Request.SET_VRING_ENABLE,
            Request.SEND_RARP, Request.SET_DEVICE_STATE_FD,
            Request.CHECK_DEVICE_STATE) == (1, 5, 11, 15, 17, 18, 19, 42, 43)


def test_feature_bits_match_the_specification():
    """Feature bit numbers are the virtio/vhost ones."""
    assert (wire.VIRTIO_NET_F_MRG_RXBUF, wire.VHOST_F_LOG_ALL, wire.VIRTIO_RING_F_INDIRECT_DESC,
            wire.VIRTIO_RING_F_EVENT_IDX, wire.VHOST_USER_F_PROTOCOL_FEATURES,
            wire.VIRTIO_F_VERSION_1) == (15, 26, 28, 29, 30, 32)
    assert wire.ProtocolFeature.DEVICE_STATE == 19
    assert wire.ProtocolFeature.REPLY_ACK == 3


@given(u32, u32, st.integers(0, wire.MAX_PAYLOAD))
def test_header_round_trips(request, flags, size):
    """A header decodes to what was encoded."""
    h = Header(request, flags, size)
    assert len(h.encode()) == wire.HEADER_SIZE
    assert Header.decode(h.encode()) == h


def test_header_with_oversized_payload_is_a_framing_error():
    """A size field above MAX_PAYLOAD cannot be framed."""
    with pytest.raises(FramingError):
        Header.decode(struct.pack("=III", 1, 1, wire.MAX_PAYLOAD + 1))


@given(u64)
def test_u64_round_trips(value):
    """A u64 payload round-trips."""
    assert U64.decode(U64(value).encode()) == U64(value)


@pytest.mark.parametrize("size", [0, 4, 7, 9, 16])
def test_u64_of_wrong_size_is_refused(size):
    """A u64 payload must be exactly 8 bytes."""
    with pytest.raises(WireError):
        U64.decode(bytes(size))


@given(u32, u32)
def test_vring_state_round_trips(index, num):
    """A vring state round-trips."""
    assert VringState.decode(VringState(index, num).encode()) == VringState(index, num)


@given(u32, st.sampled_from([0, 1]), u64, u64, u64, u64)
def test_vring_addr_round_trips(index, flags, d, u, a, lg):
    """A vring address round-trips."""
    addr = VringAddr(index, flags, d, u, a, lg)
    assert len(addr.encode()) == 40
    assert VringAddr.decode(addr.encode()) == addr


def test_vring_addr_with_unknown_flags_is_refused():
    """Only the LOG flag is defined for ring addresses."""
    with pytest.raises(WireError):
        VringAddr.decode(VringAddr(0, 2, 0, 0, 0, 0).encode())


@given(st.integers(0, 255), st.booleans())
def test_vring_file_round_trips(index, nofd):
    """Ring index and the no-fd flag round-trip through the u64."""
    assert VringFile.decode(VringFile(index, nofd).encode()) == VringFile(index, nofd)


def test_vring_file_nofd_is_bit_8():
    """The no-descriptor flag is bit 8 and the index sits in the low byte."""
    assert VringFile.decode(U64(0x101).encode()) == VringFile(1, True)


def test_vring_file_with_unknown_bits_is_refused():
    """Bits above 8 are not defined."""
    with pytest.raises(WireError):
        VringFile.decode(U64(1 << 9).encode())


def region(gpa: int, size: int, uva: int, off: int = 0) -> MemoryRegion:
    return MemoryRegion(gpa, size, uva, off)


@given(st.lists(st.integers(1, 2**20), min_size=1, max_size=8))
def test_memory_table_round_trips(sizes):
    """A table of disjoint regions round-trips."""
    regions, base = [], 0
    for size in sizes:
        regions.append(region(base, size, 0x7F0000000000 + base, base))
        base += size + 4096
    table = MemoryTable(tuple(regions))
    assert MemoryTable.decode(table.encode()) == table


def test_memory_table_accepts_the_full_eight_slot_size():
    """Front-ends may send the fixed-size struct with unused slots zeroed."""
    data = MemoryTable((region(0, 4096, 0x1000),)).encode()
    data += bytes(8 * 32 + 8 - len(data))
    assert MemoryTable.decode(data).regions == (region(0, 4096, 0x1000),)


@pytest.mark.parametrize("count", [0, 9])
def test_memory_table_with_bad_region_count_is_refused(count):
    """0 or more than 8 regions are refused."""
    with pytest.raises(WireError):
        MemoryTable.decode(struct.pack("=II", count, 0) + bytes(32 * min(count, 8)))


def test_memory_table_with_size_mismatch_is_refused():
    """The payload must hold exactly the announced regions (or all 8 slots)."""
    data = MemoryTable((region(0, 4096, 0x1000),)).encode()
    with pytest.raises(WireError):
        MemoryTable.decode(data + bytes(32))


def test_memory_table_with_overlapping_guest_addresses_is_refused():
    """Regions may not overlap in guest-physical addresses."""
    table = MemoryTable((region(0, 8192, 0x10000), region(4096, 4096, 0x20000)))
    with pytest.raises(WireError):
        MemoryTable.decode(table.encode())


def test_memory_table_with_overlapping_user_addresses_is_refused():
    """Regions may not overlap in front-end addresses."""
    table = MemoryTable((region(0, 8192, 0x10000), region(0x100000, 4096, 0x11000)))
    with pytest.raises(WireError):
        MemoryTable.decode(table.encode())


def test_memory_region_of_size_zero_is_refused():
    """An empty region is refused."""
    with pytest.raises(WireError):
        MemoryTable.decode(MemoryTable((region(0, 0, 0),)).encode())


def test_memory_region_that_wraps_is_refused():
    """A region running past 2^64 is refused."""
    with pytest.raises(WireError):
        MemoryTable.decode(MemoryTable((region(2**64 - 4096, 8192, 0),)).encode())


@given(st.integers(1, 2**40), st.integers(0, 2**40))
def test_log_description_round_trips(size, offset):
    """A log description round-trips."""
    assert LogDescription.decode(LogDescription(size, offset).encode()) == \
        LogDescription(size, offset)


def test_log_description_of_size_zero_is_refused():
    """An empty dirty log is refused."""
    with pytest.raises(WireError):
        LogDescription.decode(LogDescription(0, 0).encode())


@pytest.mark.parametrize("direction", [0, 1])
def test_device_state_params_round_trip(direction):
    """Save and load in the stopped phase are accepted."""
    p = DeviceStateParams(direction, 0)
    assert DeviceStateParams.decode(p.encode()) == p


@pytest.mark.parametrize("direction,phase", [(2, 0), (0, 1), (2**32 - 1, 0)])
def test_device_state_params_out_of_range_are_refused(direction, phase):
    """Unknown directions and phases are refused."""
    with pytest.raises(WireError):
        DeviceStateParams.decode(DeviceStateParams(direction, phase).encode())


def test_rarp_payload_carries_the_mac_in_its_first_six_bytes():
    """SEND_RARP's MAC is the first 6 bytes of the u64."""
    mac = bytes.fromhex("525400123456")
    assert RarpPayload.decode(RarpPayload(mac).encode()).mac == mac


def test_reply_sets_the_reply_flag_and_version():
    """Replies carry version 1 and the reply flag."""
    msg = wire.reply(Request.GET_FEATURES, U64(5).encode())
    hdr = Header.decode(msg.encode()[:12])
    assert hdr.flags == wire.VERSION | wire.FLAG_REPLY
    assert hdr.size == 8


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=6), st.integers(1, 13))
def test_frame_reader_reassembles_messages_from_any_chunking(payloads, chunk):
    """Messages come out whole whatever the read sizes."""
    stream = b"".join(Message(i + 1, wire.VERSION, p).encode() for i, p in enumerate(payloads))
    reader, out, pos = FrameReader(), [], 0
    while pos < len(stream):
        n = min(chunk, reader.need(), len(stream) - pos)
        done = reader.feed(stream[pos:pos + n])
        pos += n
        if done:
            out.append(done[0])
    assert [m.payload for m in out] == payloads
    assert reader.idle


def test_frame_reader_never_asks_past_the_current_message():
    """need() stops at the message boundary, so the next message's fds are not read early."""
    reader = FrameReader()
    assert reader.need() == 12
    assert reader.feed(Header(1, 1, 8).encode()) is None
    assert reader.need() == 8


def test_frame_reader_attaches_descriptors_to_their_message():
    """Descriptors fed with a message's bytes come out with that message."""
    reader = FrameReader()
    reader.feed(Header(12, 1, 8).encode()[:5], [7])
    reader.feed(Header(12, 1, 8).encode()[5:])
    msg, fds = reader.feed(U64(0).encode())
    assert (msg.request, fds) == (12, [7])
