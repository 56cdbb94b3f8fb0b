# SPDX-License-Identifier: MIT
"""Split virtqueues (csrc/virtq.c via core.Virtqueue), driven by tests/virtq_driver.py.

Covers TX drain and release, RX placement with and without mergeable buffers, hostile rings
(each bad chain classified, returned with length 0, never fatal), notification suppression,
stop/start semantics, dirty logging, and property tests against passt_py.ref.virtq.
"""
from __future__ import annotations

import errno
import os
import struct

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import strategies as st

from passt_py import core
from passt_py.core import VRING_F_LOG, CoreError, GuestMemory, TxBatch, Virtqueue
from passt_py.ref import virtq as ref
from tests.conftest import hypothesis_budget
from tests.virtq_driver import (AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
                                PAGE, DriverRing, GuestRam)

BASE = 0x100000
SIZE = 1 << 20
HDR = 12


class Rig:
    """Guest RAM, a driver ring and a started device Virtqueue on it, with a call eventfd."""

    def __init__(self, num: int = 16, event_idx: bool = False, indirect: bool = False,
                 log: bool = False, layout=((BASE, SIZE),)) -> None:
        self.ram = GuestRam(layout)
        self.mem = GuestMemory()
        self.ram.map_into(self.mem)
        self.ring = DriverRing(self.ram, num)
        self.vq = Virtqueue(self.mem, 0)
        self.vq.set_num(num)
        self.vq.set_features(event_idx, indirect)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        self.vq.set_call_fd(os.dup(self.call))
        desc, used, avail, log_addr = self.ring.vring_addr()
        self.vq.set_addr(desc, used, avail, log_addr, VRING_F_LOG if log else 0)
        self.vq.start()

    def calls(self) -> int:
        """Signals written to the call eventfd since the last look."""
        try:
            return struct.unpack("<Q", os.read(self.call, 8))[0]
        except BlockingIOError:
            return 0

    def close(self) -> None:
        self.vq.close()
        self.mem.clear()
        os.close(self.call)
        self.ram.close()


@pytest.fixture
def rig():
    """Factory for Rigs, closed at teardown."""
    made: list[Rig] = []

    def make(**kw) -> Rig:
        made.append(Rig(**kw))
        return made[-1]
    yield make
    for r in made:
        r.close()


def kinds(batch: TxBatch) -> list[str]:
    """Error kind names of a batch's bad chains, in order."""
    return [k for _, k in batch.bad_chains()]


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("num", [0, 3, 100, 65536])
def test_set_num_rejects_non_power_of_two(num):
    """Ring sizes that are zero, not powers of two, or above 32768 are EINVAL."""
    vq = Virtqueue(GuestMemory(), 0)
    with pytest.raises(CoreError) as e:
        vq.set_num(num)
    assert e.value.errno == errno.EINVAL


def test_set_addr_outside_memory_faults(rig):
    """A ring area outside every region is EFAULT."""
    r = rig()
    desc, used, avail, log = r.ring.vring_addr()
    with pytest.raises(CoreError) as e:
        r.vq.set_addr(desc, used, r.ram.uva(BASE) + SIZE - 4, log, 0)
    assert e.value.errno == errno.EFAULT


def test_set_addr_failure_keeps_old_ring(rig):
    """After a refused SET_VRING_ADDR the ring keeps working on its previous addresses."""
    r = rig()
    desc, used, avail, log = r.ring.vring_addr()
    with pytest.raises(CoreError):
        r.vq.set_addr(1, used, avail, log, 0)
    r.ring.add_tx_buffer(b"still")
    assert r.vq.pop_tx().frame(0) == b"still"


def test_ring_straddling_two_regions_faults():
    """A used ring that starts in one region and ends in the next is refused."""
    ram = GuestRam(((BASE, PAGE), (BASE + PAGE, PAGE)))
    mem = GuestMemory()
    ram.map_into(mem)
    vq = Virtqueue(mem, 0)
    vq.set_num(64)
    with pytest.raises(CoreError) as e:
        vq.set_addr(ram.uva(BASE), ram.uva(BASE + PAGE - 100), ram.uva(BASE + 1024), 0, 0)
    assert e.value.errno == errno.EFAULT
    mem.clear()
    ram.close()


def test_set_base_while_started_is_busy(rig):
    """SET_VRING_BASE on a running ring is EBUSY."""
    r = rig()
    with pytest.raises(CoreError) as e:
        r.vq.set_base(3)
    assert e.value.errno == errno.EBUSY


# ---- TX --------------------------------------------------------------------------------------

def test_tx_single_frame(rig):
    """A one-descriptor frame comes out without its virtio-net header."""
    r = rig()
    head = r.ring.add_tx_buffer(b"hello frame")
    b = r.vq.pop_tx()
    assert (b.count, b.bad, b.head(0), b.frame(0), b.frame_len(0)) == (1, 0, head,
                                                                       b"hello frame", 11)


def test_tx_header_split_across_descriptors(rig):
    """A header spread over three descriptors is skipped exactly, payload slices follow."""
    r = rig()
    r.ring.add_tx_buffer(b"payload-bytes", hdr=b"H" * HDR, split=[5, 4, 6, 3])
    b = r.vq.pop_tx()
    assert b.frame(0) == b"payload-bytes"
    assert b.slices(0)[1] == 3      # 3 of the header's last desc + 3 + rest


def test_tx_batch_keeps_ring_order(rig):
    """Frames come out in avail order with their own heads."""
    r = rig()
    heads = [r.ring.add_tx_buffer(bytes([i]) * (i + 1)) for i in range(5)]
    b = r.vq.pop_tx()
    assert [b.head(i) for i in range(5)] == heads
    assert [b.frame(i) for i in range(5)] == [bytes([i]) * (i + 1) for i in range(5)]


def test_tx_max_frames_leaves_rest_pending(rig):
    """pop_tx takes at most max_frames chains; the rest stays available."""
    r = rig()
    for i in range(6):
        r.ring.add_tx_buffer(b"x")
    assert r.vq.pop_tx(max_frames=4).count == 4
    assert r.vq.avail_pending == 2


def test_tx_release_fills_used_ring_once(rig):
    """release returns every head with length 0, bumps used idx once and notifies once."""
    r = rig()
    heads = [r.ring.add_tx_buffer(b"abc") for _ in range(3)]
    b = r.vq.pop_tx()
    assert r.vq.release(b) is True
    assert r.ring.pop_used() == [(h, 0) for h in heads]
    assert r.calls() == 1


def test_tx_frame_over_adjacent_regions(rig):
    """A buffer running over two adjacent regions becomes two slices with the right bytes."""
    r = rig(layout=((BASE, SIZE), (BASE + SIZE, SIZE)))
    data = bytes(range(200))
    gpa = BASE + SIZE - 100
    r.ram.write(gpa, bytes(HDR) + data[:88])
    r.ram.write(BASE + SIZE, data[88:])
    r.ring.add_chain([(gpa, HDR + 200, False)])
    b = r.vq.pop_tx()
    assert b.frame(0) == data and b.slices(0)[1] == 2


def test_tx_indirect_chain(rig):
    """With INDIRECT_DESC an indirect table's buffers make up the frame."""
    r = rig(indirect=True)
    r.ring.add_tx_buffer(b"indirect payload", split=[HDR, 4], indirect=True)
    b = r.vq.pop_tx()
    assert (b.count, b.frame(0)) == (1, b"indirect payload")


def test_tx_chain_of_exactly_num_descriptors(rig):
    """A chain using every descriptor of the ring is legal."""
    r = rig(num=8)
    r.ring.add_tx_buffer(b"12345678", split=[HDR] + [1] * 6)
    b = r.vq.pop_tx()
    assert (b.count, b.frame(0)) == (1, b"12345678")


def test_tx_empty_payload(rig):
    """A chain holding only the header is a zero-length frame, not an error."""
    r = rig()
    r.ring.add_tx_buffer(b"")
    b = r.vq.pop_tx()
    assert (b.count, b.frame(0), b.frame_len(0)) == (1, b"", 0)


def test_tx_batch_reuse(rig):
    """A released batch can be passed back to pop_tx and is refilled."""
    r = rig()
    r.ring.add_tx_buffer(b"one")
    b = r.vq.pop_tx()
    r.vq.release(b)
    r.ring.add_tx_buffer(b"two")
    assert r.vq.pop_tx(batch=b) is b and b.frame(0) == b"two"


def test_tx_unreleased_batch_not_reused(rig):
    """Reusing a batch whose chains were not released is refused (they would leak)."""
    r = rig()
    r.ring.add_tx_buffer(b"one")
    b = r.vq.pop_tx()
    with pytest.raises(ValueError):
        r.vq.pop_tx(batch=b)


def test_tx_iov_full_leaves_chain_for_next_batch(rig):
    """A chain that does not fit the rest of the iov array waits for the next call."""
    r = rig()
    r.ring.add_tx_buffer(b"ab", split=[HDR, 1])
    r.ring.add_tx_buffer(b"abc", split=[HDR, 1, 1])
    b = r.vq.pop_tx(batch=TxBatch(8, max_iov=4))
    assert (b.count, b.bad, r.vq.avail_pending) == (1, 0, 1)


# ---- hostile TX chains -------------------------------------------------------------------------

def _hostile(r: Rig, descs, head=0):
    for i, d in enumerate(descs):
        r.ring.write_desc(i, *d)
    r.ring.put_avail(head)


def _good_buf(r: Rig, n: int = 40) -> int:
    gpa = r.ram.alloc(n)
    r.ram.write(gpa, bytes(n))
    return gpa


@pytest.mark.parametrize("name,descs,kind", [
    ("loop", lambda g: [(g, 20, DESC_F_NEXT, 1), (g, 20, DESC_F_NEXT, 0)], "loop"),
    ("self loop", lambda g: [(g, 20, DESC_F_NEXT, 0)], "loop"),
    ("outside memory", lambda g: [(BASE + 2 * SIZE, 20, 0, 0)], "addr"),
    ("runs past end", lambda g: [(BASE + SIZE - 10, 20, 0, 0)], "addr"),
    ("wraps 2^64", lambda g: [(2**64 - 8, 20, 0, 0)], "addr"),
    ("next out of ring", lambda g: [(g, 20, DESC_F_NEXT, 16)], "next"),
    ("write-only on TX", lambda g: [(g, 20, DESC_F_WRITE, 0)], "dir"),
    ("indirect not negotiated", lambda g: [(g, 32, DESC_F_INDIRECT, 0)], "indirect"),
    ("shorter than header", lambda g: [(g, HDR - 1, 0, 0)], "short"),
])
def test_tx_bad_chain_classified(rig, name, descs, kind):
    """Each hostile chain is consumed, classified, and returned with length 0."""
    r = rig()
    _hostile(r, descs(_good_buf(r)))
    b = r.vq.pop_tx()
    assert (b.count, kinds(b)) == (0, [kind]), name
    r.vq.release(b)
    assert r.ring.pop_used() == [(0, 0)]


def test_tx_head_out_of_ring(rig):
    """An avail entry naming a head >= num is a bad chain of kind 'head'."""
    r = rig()
    r.ring.put_avail(16)
    b = r.vq.pop_tx()
    assert b.bad_chains() == [(16, "head")]


@pytest.mark.parametrize("name,table,length,kind", [
    ("length not multiple of 16", "ok", 24, "indirect"),
    ("zero length", "ok", 0, "indirect"),
    ("table outside memory", "bad", 32, "indirect"),
    ("nested indirect", "nested", 32, "indirect"),
    ("next beyond table", "next", 32, "next"),
    ("loop in table", "loop", 32, "loop"),
])
def test_tx_bad_indirect(rig, name, table, length, kind):
    """Broken indirect tables are classified like direct chains, never followed out."""
    r = rig(indirect=True)
    g = _good_buf(r)
    t = r.ram.alloc(32)
    entries = {
        "ok": [(g, 20, DESC_F_NEXT, 1), (g, 20, 0, 0)],
        "bad": [],
        "nested": [(g, 20, DESC_F_NEXT, 1), (t, 32, DESC_F_INDIRECT, 0)],
        "next": [(g, 20, DESC_F_NEXT, 2), (g, 20, 0, 0)],
        "loop": [(g, 20, DESC_F_NEXT, 1), (g, 20, DESC_F_NEXT, 0)],
    }[table]
    for i, e in enumerate(entries):
        r.ram.write(t + 16 * i, struct.pack("<QIHH", *e))
    _hostile(r, [(BASE + 2 * SIZE if table == "bad" else t, length, DESC_F_INDIRECT, 0)])
    assert kinds(r.vq.pop_tx()) == [kind], name


def test_tx_indirect_with_next_flag_rejected(rig):
    """A descriptor with both INDIRECT and NEXT is refused (the spec forbids it)."""
    r = rig(indirect=True)
    t = r.ram.alloc(16)
    r.ram.write(t, struct.pack("<QIHH", _good_buf(r), 20, 0, 0))
    _hostile(r, [(t, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1), (t, 16, 0, 0)])
    assert kinds(r.vq.pop_tx()) == ["indirect"]


def test_tx_chain_over_4gib_rejected(rig):
    """A chain describing more than 4 GiB (same buffer listed again and again) is 'addr'."""
    r = rig(indirect=True)
    g = r.ram.alloc(1 << 19)
    n = 8193                                  # 8193 * 512 KiB > 4 GiB
    t = r.ram.alloc(16 * n)
    r.ram.write(t, b"".join(struct.pack("<QIHH", g, 1 << 19, DESC_F_NEXT, k + 1)
                            for k in range(n - 1)) + struct.pack("<QIHH", g, 1 << 19, 0, 0))
    _hostile(r, [(t, 16 * n, DESC_F_INDIRECT, 0)])
    assert kinds(r.vq.pop_tx(batch=TxBatch(1, max_iov=n))) == ["addr"]


def test_tx_bad_chain_does_not_stop_good_ones(rig):
    """Good frames before and after a bad chain are delivered in the same batch."""
    r = rig()
    r.ring.add_tx_buffer(b"first")
    bad = r.ring.free.pop()
    r.ring.write_desc(bad, BASE + 2 * SIZE, 64, 0, 0)
    r.ring.put_avail(bad)
    r.ring.add_tx_buffer(b"second")
    b = r.vq.pop_tx()
    assert [b.frame(i) for i in range(b.count)] == [b"first", b"second"]
    assert b.bad_chains() == [(bad, "addr")]


def test_tx_iov_overflow_alone_is_bad(rig):
    """A chain needing more slices than a whole batch holds is bad ('iov'), not a stall."""
    r = rig()
    r.ring.add_tx_buffer(b"abcdef", split=[HDR] + [1] * 5)
    b = r.vq.pop_tx(batch=TxBatch(4, max_iov=4))
    assert (b.count, kinds(b)) == (0, ["iov"])


def test_avail_idx_jump_is_broken_ring(rig):
    """An avail idx more than num ahead raises EIO and consumes nothing."""
    r = rig()
    r.ring.set_avail_idx(17)
    with pytest.raises(CoreError) as e:
        r.vq.pop_tx()
    assert e.value.errno == errno.EIO
    with pytest.raises(CoreError):
        r.vq.avail_pending  # noqa: B018 - the property raises
    assert r.vq.stop() == 0


# ---- RX --------------------------------------------------------------------------------------

def _rx_data(r: Rig, used: list[tuple[int, int]]) -> list[bytes]:
    """Bytes the device wrote into each used chain (following the driver's layout)."""
    out = []
    for head, length in used:
        data = b""
        for gpa, size in r.ring.chain_buffers(head):
            take = min(size, length - len(data))
            data += r.ram.read(gpa, take)
        out.append(data)
    return out


def test_rx_single_buffer(rig):
    """A frame lands after a zeroed header with num_buffers 1; used len covers both."""
    r = rig()
    r.ring.add_rx_buffers(1, 2048)
    assert r.vq.push_rx([b"frame!"]) == 1
    used = r.ring.pop_used()
    assert used[0][1] == HDR + 6
    assert _rx_data(r, used) == [bytes(10) + b"\x01\x00frame!"]


def test_rx_mergeable_spans_buffers(rig):
    """A frame larger than one buffer uses several chains; num_buffers counts them."""
    r = rig()
    r.ring.add_rx_buffers(4, 100)
    frame = bytes(range(250))
    assert r.vq.push_rx([frame]) == 1
    used = r.ring.pop_used()
    assert [n for _, n in used] == [100, 100, 62]
    blob = b"".join(_rx_data(r, used))
    assert struct.unpack_from("<H", blob, 10)[0] == 3 and blob[HDR:] == frame


def test_rx_multi_segment_chain(rig):
    """A chain of several writable descriptors is filled across them."""
    r = rig()
    r.ring.add_rx_buffers(1, 64, segments=4)
    r.vq.push_rx([b"z" * 40])
    used = r.ring.pop_used()
    assert used[0][1] == 52 and _rx_data(r, used)[0][HDR:] == b"z" * 40


def test_rx_vnet_hdr_written(rig):
    """A given virtio-net header is written, with num_buffers filled in by the device."""
    r = rig()
    r.ring.add_rx_buffers(1, 256)
    hdr = bytes([1, 0, 0x22, 0, 0x33, 0, 0x44, 0, 0x55, 0, 0xEE, 0xEE])
    r.vq.push_rx([b"d"], vnet_hdr=hdr)
    assert _rx_data(r, r.ring.pop_used())[0][:HDR] == hdr[:10] + b"\x01\x00"


def test_rx_out_of_buffers_no_partial_frame(rig):
    """When buffers run out mid-frame, that frame is not placed and its buffers stay."""
    r = rig()
    r.ring.add_rx_buffers(3, 100)
    assert r.vq.push_rx([b"a" * 50, b"b" * 300]) == 1
    assert r.ring.pop_used() == [(0, 62)]
    assert r.vq.avail_pending == 2


def test_rx_too_big_without_mergeable_is_dropped(rig):
    """Without mergeable buffers a frame bigger than its chain is dropped, chain len 0."""
    r = rig()
    r.ring.add_rx_buffers(2, 100)
    assert r.vq.push_rx([b"x" * 200, b"y" * 10], mergeable=False) == 2
    assert (r.vq.last_rx.placed, r.vq.last_rx.dropped) == (1, 1)
    assert r.ring.pop_used() == [(0, 0), (1, 22)]


def test_rx_read_only_buffer_is_bad(rig):
    """A device-readable buffer in an RX chain is returned with len 0 and skipped."""
    r = rig()
    r.ring.add_chain([(r.ram.alloc(100), 100, False)])
    r.ring.add_rx_buffers(1, 100)
    assert r.vq.push_rx([b"ok"]) == 1
    assert r.vq.last_rx.bad == 1
    assert r.ring.pop_used() == [(0, 0), (1, 14)]


def test_rx_frame_needing_too_many_chains_dropped(rig):
    """A frame that would need more than 256 chains is dropped; its chains come back empty."""
    r = rig(num=512)
    r.ring.add_rx_buffers(300, 1)
    assert r.vq.push_rx([b"x" * 300]) == 1
    assert (r.vq.last_rx.placed, r.vq.last_rx.dropped) == (0, 1)
    used = r.ring.pop_used()
    assert len(used) == 256 and {n for _, n in used} == {0}


def test_rx_vnet_hdr_length_checked(rig):
    """A vnet_hdr that is not hdr_len bytes is a caller error."""
    r = rig()
    with pytest.raises(ValueError):
        r.vq.push_rx([b"x"], vnet_hdr=bytes(10))


def test_rx_batch_notifies_once(rig):
    """Placing several frames signals the call eventfd once."""
    r = rig()
    r.ring.add_rx_buffers(8, 200)
    assert r.vq.push_rx([b"f"] * 5) == 5
    assert r.vq.last_rx.notified and r.calls() == 1


def test_rx_no_buffers_places_nothing(rig):
    """With no buffers, nothing is placed, written, or signalled."""
    r = rig()
    before = r.ram.snapshot()
    assert r.vq.push_rx([b"x"]) == 0
    assert r.ram.snapshot() == before and r.calls() == 0


# ---- notification suppression -------------------------------------------------------------------

def test_no_interrupt_flag_suppresses_notify(rig):
    """VRING_AVAIL_F_NO_INTERRUPT: used ring updated, no signal."""
    r = rig()
    r.ring.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    r.ring.add_tx_buffer(b"q")
    assert r.vq.release(r.vq.pop_tx()) is False
    assert r.ring.used_idx == 1 and r.calls() == 0


def test_event_idx_ignores_no_interrupt_flag(rig):
    """With EVENT_IDX only used_event counts, not the flag."""
    r = rig(event_idx=True)
    r.ring.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    r.ring.set_used_event(0)
    r.ring.add_tx_buffer(b"q")
    assert r.vq.release(r.vq.pop_tx()) is True and r.calls() == 1


def test_used_event_ahead_suppresses(rig):
    """used_event beyond the new used idx: no signal."""
    r = rig(event_idx=True)
    r.ring.set_used_event(5)
    for _ in range(3):
        r.ring.add_tx_buffer(b"q")
    assert r.vq.release(r.vq.pop_tx()) is False and r.calls() == 0


def test_used_event_crossed_notifies(rig):
    """A batch that moves used idx past used_event signals once."""
    r = rig(event_idx=True)
    r.ring.set_used_event(1)
    for _ in range(3):
        r.ring.add_tx_buffer(b"q")
    assert r.vq.release(r.vq.pop_tx()) is True and r.calls() == 1


def test_avail_event_published(rig):
    """With EVENT_IDX the device writes its next avail index into avail_event."""
    r = rig(event_idx=True)
    for _ in range(3):
        r.ring.add_tx_buffer(b"q")
    r.vq.pop_tx()
    assert r.ring.avail_event == 3


def test_kick_pending_reads_eventfd(rig):
    """kick_pending consumes the kick eventfd's counter."""
    r = rig()
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    r.vq.set_kick_fd(os.dup(kick))
    assert r.vq.kick_pending() is False
    os.eventfd_write(kick, 1)
    assert r.vq.kick_pending() is True and r.vq.kick_pending() is False
    os.close(kick)


def test_replacing_call_fd_closes_old(rig):
    """The Virtqueue owns its call fd: replacing it closes the previous one."""
    r = rig()
    old = r.vq.call_fd
    r.vq.set_call_fd(os.eventfd(0))
    with pytest.raises(OSError):
        os.fstat(old)


# ---- lifecycle ----------------------------------------------------------------------------------

def test_stop_returns_next_avail_index(rig):
    """GET_VRING_BASE reports how many chains were consumed."""
    r = rig()
    for _ in range(3):
        r.ring.add_tx_buffer(b"q")
    r.vq.release(r.vq.pop_tx(max_frames=2))
    assert r.vq.stop() == 2


def test_stopped_ring_touches_nothing(rig):
    """A stopped ring neither reads chains nor writes used entries nor signals."""
    r = rig()
    r.ring.add_tx_buffer(b"q")
    r.ring.add_rx_buffers(2, 100)
    b = r.vq.pop_tx()
    r.vq.stop()
    before = r.ram.snapshot()
    assert r.vq.release(b) is False
    assert r.vq.pop_tx().count == 0 and r.vq.push_rx([b"x"]) == 0
    assert r.vq.avail_pending == 0
    assert r.ram.snapshot() == before and r.calls() == 0


def test_set_base_resumes_there(rig):
    """After stop, SET_VRING_BASE and start, processing resumes at the given index."""
    r = rig()
    for i in range(3):
        r.ring.add_tx_buffer(bytes([i]))
    r.vq.stop()
    r.vq.set_base(2)
    r.vq.start()
    b = r.vq.pop_tx()
    assert (b.count, b.frame(0)) == (1, b"\x02")


def test_start_reads_used_idx_from_ring(rig):
    """On start the used idx shadow comes from the used ring (e.g. after migration)."""
    r = rig()
    r.vq.stop()
    r.ram.write(r.ring.used_gpa + 2, struct.pack("<H", 7))
    r.ring.avail_idx = 7
    r.ring.set_avail_idx(7)
    r.vq.set_base(7)
    r.vq.start()
    r.ring.last_used = 7
    head = r.ring.add_tx_buffer(b"q")
    r.vq.release(r.vq.pop_tx())
    assert r.ring.used_idx == 8 and r.ring.used_entry(7) == (head, 0)


def test_memory_table_change_is_followed(rig):
    """After the table is replaced, the ring re-translates; with its region gone it faults."""
    r = rig()
    r.mem.clear()
    with pytest.raises(CoreError) as e:
        r.vq.pop_tx()
    assert e.value.errno == errno.EFAULT
    r.ram.map_into(r.mem)
    r.ring.add_tx_buffer(b"back")
    assert r.vq.pop_tx().frame(0) == b"back"


# ---- dirty logging -------------------------------------------------------------------------------

def _with_log(r: Rig) -> int:
    fd = os.memfd_create("log")
    os.ftruncate(fd, PAGE)
    r.mem.set_log(fd, PAGE, 0)
    r.mem.logging = True
    return fd


def _bits(fd: int) -> set[int]:
    data = os.pread(fd, PAGE, 0)
    return {i * 8 + b for i, byte in enumerate(data) if byte for b in range(8) if byte >> b & 1}


def test_rx_logs_buffer_and_used_pages(rig):
    """RX dirties exactly the pages of bytes written and of the used ring entries and idx."""
    r = rig(log=True)
    heads = r.ring.add_rx_buffers(2, 3 * PAGE)
    fd = _with_log(r)
    r.vq.push_rx([b"x" * (PAGE + 10)])
    gpa = r.ring.chain_buffers(heads[0])[0][0]
    written = set(range(gpa >> 12, (gpa + HDR + PAGE + 10 - 1 >> 12) + 1))
    used = {r.ring.used_gpa >> 12, (r.ring.used_gpa + 4 + 8) >> 12}
    assert _bits(fd) == written | used
    os.close(fd)


def test_tx_release_logs_only_used_ring(rig):
    """TX writes nothing but the used ring, so only its pages are dirty."""
    r = rig(log=True)
    r.ring.add_tx_buffer(b"q" * 3000)
    fd = _with_log(r)
    r.vq.release(r.vq.pop_tx())
    assert _bits(fd) == {r.ring.used_gpa >> 12}
    os.close(fd)


def test_no_log_when_logging_off(rig):
    """With LOG_ALL not requested, no bit is set."""
    r = rig(log=True)
    r.ring.add_rx_buffers(1, 200)
    fd = _with_log(r)
    r.mem.logging = False
    r.vq.push_rx([b"x"])
    assert _bits(fd) == set()
    os.close(fd)


def test_used_ring_not_logged_without_vring_log_flag(rig):
    """Without VHOST_VRING_F_LOG in SET_VRING_ADDR the used ring is not logged (buffers are)."""
    r = rig(log=False)
    heads = r.ring.add_rx_buffers(1, 200)
    fd = _with_log(r)
    r.vq.push_rx([b"x"])
    assert _bits(fd) == {r.ring.chain_buffers(heads[0])[0][0] >> 12}
    os.close(fd)


# ---- reference agreement ---------------------------------------------------------------------------

def test_constants_match_reference():
    """The reference uses the same limits and error codes as the C core."""
    lib = core.lib
    assert (ref.MAX_REGIONS, ref.VQ_MAX_SIZE, ref.MAX_INDIRECT, ref.RX_MAX_IOV,
            ref.RX_MAX_CHAINS, ref.MAX_HDR) == (
        lib.PC_MEM_MAX_REGIONS, lib.PC_VQ_MAX_SIZE, lib.PC_VQ_MAX_INDIRECT,
        lib.PC_VQ_RX_MAX_IOV, lib.PC_VQ_RX_MAX_CHAINS, lib.PC_VQ_MAX_HDR)
    assert {ref.ERR_HEAD: "head", ref.ERR_NEXT: "next", ref.ERR_LOOP: "loop",
            ref.ERR_ADDR: "addr", ref.ERR_DIR: "dir", ref.ERR_INDIRECT: "indirect",
            ref.ERR_SHORT: "short", ref.ERR_IOV: "iov"} == core.VQ_ERRORS


PBASE = 0x10000
PSIZE = 0x10000
# Region 0 holds the ring and buffers, region 1 is adjacent, then a hole, then region 2.
PLAYOUT = ((PBASE, PSIZE), (PBASE + PSIZE, PSIZE), (PBASE + 4 * PSIZE, PSIZE))
ADDRS = [PBASE + 0x8000, PBASE + 0x8100, PBASE + 0x9000, PBASE + PSIZE - 24,
         PBASE + 2 * PSIZE - 24, PBASE + 3 * PSIZE, PBASE + 4 * PSIZE + 8, 2**64 - 16, 0]

PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(5 * PSIZE))


@st.composite
def hostile_rings(draw, write_bias: bool):
    """A ring of random, often broken, descriptors and indirect tables, plus features."""
    num = draw(st.sampled_from([1, 2, 4, 8, 8, 16, 16]))

    def desc(max_next: int):
        hostile = draw(st.integers(0, 5)) == 0      # about one field in six is broken
        addr = draw(st.sampled_from(ADDRS if hostile else ADDRS[:3])) + draw(st.integers(0, 32))
        writable = draw(st.integers(0, 7)) != 0     # mostly the right direction
        flags = (DESC_F_WRITE if writable == write_bias else 0)
        flags |= DESC_F_NEXT if draw(st.booleans()) else 0
        flags |= DESC_F_INDIRECT if draw(st.integers(0, 9)) == 0 else 0
        nxt = draw(st.integers(0, max_next if draw(st.integers(0, 5)) == 0 else max_next - 2))
        return addr % 2**64, draw(st.integers(0, 120)), flags, nxt
    table = [desc(num + 1) for _ in range(num)]
    indirect = [[desc(4) for _ in range(draw(st.integers(1, 4)))] for _ in range(2)]
    ind_refs = draw(st.lists(st.tuples(st.integers(0, num - 1), st.integers(0, 1),
                                       st.sampled_from([0, 8, 16, 24, 32, 48, 64])),
                             max_size=3))
    heads = draw(st.lists(st.sampled_from(list(range(num)) * 4 + [num, num + 1]),
                          min_size=1, max_size=num))
    return dict(num=num, table=table, indirect=indirect, ind_refs=ind_refs, heads=heads,
                event_idx=draw(st.booleans()), indirect_ok=draw(st.booleans()),
                avail_flags=draw(st.integers(0, 1)), used_event=draw(st.integers(0, 20)),
                base=draw(st.integers(0, 0xFFFF)))


def _build(spec) -> tuple[GuestRam, DriverRing]:
    ram = GuestRam(PLAYOUT)
    ram.mm[:] = PATTERN[:ram.file_size]
    ring = DriverRing(ram, spec["num"])
    ram.write(ring.avail_gpa, bytes(6 + 2 * spec["num"]))
    ram.write(ring.used_gpa, bytes(6 + 8 * spec["num"]))
    for i, d in enumerate(spec["table"]):
        ring.write_desc(i, *d)
    tables = []
    for t in spec["indirect"]:
        gpa = ram.alloc(16 * len(t))
        for k, d in enumerate(t):
            ram.write(gpa + 16 * k, struct.pack("<QIHH", *d))
        tables.append(gpa)
    for i, t, length in spec["ind_refs"]:
        ring.write_desc(i, tables[t], length, DESC_F_INDIRECT, 0)
    base = spec["base"]
    ring.avail_idx = base
    ring.ram.write(ring.used_gpa + 2, struct.pack("<H", base))
    for h in spec["heads"]:
        ring.put_avail(h)
    ring.set_avail_idx(ring.avail_idx)
    ring.set_avail_flags(spec["avail_flags"])
    ring.set_used_event(base + spec["used_event"])
    return ram, ring


def _device(spec, ram: GuestRam, ring: DriverRing):
    mem = GuestMemory()
    ram.map_into(mem)
    vq = Virtqueue(mem, 0)
    vq.set_num(spec["num"])
    vq.set_features(spec["event_idx"], spec["indirect_ok"])
    vq.set_addr(*ring.vring_addr(), 0)
    vq.set_base(spec["base"])
    vq.start()
    rmem = ref.RefMemory(bytearray(ram.snapshot()),
                         [ref.RefRegion(x.gpa, x.size, x.uva, x.offset) for x in ram.regions])
    d, u, a, log = ring.vring_addr()
    rvq = ref.RefVirtqueue(rmem, spec["num"], d, u, a, log, 0, spec["event_idx"],
                           spec["indirect_ok"], spec["base"])
    return mem, vq, rmem, rvq


@hypothesis_budget(3, suppress_health_check=[HealthCheck.too_slow])
@given(spec=hostile_rings(write_bias=False), max_frames=st.integers(1, 20),
       max_iov=st.integers(1, 12), hdr_len=st.sampled_from([0, 10, 12]))
def test_tx_agrees_with_reference(spec, max_frames, max_iov, hdr_len):
    """On random hostile rings C and the reference pop the same frames and errors, and write
    the same used ring; C never touches memory outside the regions (it would crash)."""
    ram, ring = _build(spec)
    try:
        mem, vq, rmem, rvq = _device(spec, ram, ring)
        b = vq.pop_tx(max_frames, hdr_len, TxBatch(max_frames, max_iov))
        got = [(b.head(i), b.frame(i)) for i in range(b.count)]
        got_bad = [(h, k) for h, k in b.bad_chains()]
        notified = vq.release(b)
        want, want_bad = rvq.pop_tx(max_frames, hdr_len, max_iov)
        want_notified = rvq.release([h for h, _ in want] + [h for h, _ in want_bad])
        for _, k in got_bad:
            event(f"bad chain: {k}")
        event(f"good frames: {min(len(got), 2)}+")
        assert got == want
        assert got_bad == [(h, core.VQ_ERRORS[k]) for h, k in want_bad]
        assert notified == want_notified
        assert vq.stop() == rvq.last_avail
        assert ram.snapshot() == bytes(rmem.buf)
        mem.clear()
    finally:
        ram.close()


@hypothesis_budget(3, suppress_health_check=[HealthCheck.too_slow])
@given(spec=hostile_rings(write_bias=True),
       frames=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6),
       mergeable=st.booleans(), hdr_len=st.sampled_from([0, 10, 12]),
       by_pointer=st.booleans())
def test_rx_agrees_with_reference(spec, frames, mergeable, hdr_len, by_pointer):
    """On random hostile rings C and the reference place, drop and reject alike, and leave
    byte-identical guest memory and the same dirty pages: frames joined into one buffer or
    passed by pointer (pc_vq_push_rx_ptrs) alike."""
    join_max = core.PUSH_RX_JOIN_MAX
    core.PUSH_RX_JOIN_MAX = 0 if by_pointer else 1 << 30
    try:
        _rx_agrees_with_reference(spec, frames, mergeable, hdr_len)
    finally:
        core.PUSH_RX_JOIN_MAX = join_max


def _rx_agrees_with_reference(spec, frames, mergeable, hdr_len) -> None:
    ram, ring = _build(spec)
    logfd = os.memfd_create("log")
    os.ftruncate(logfd, PAGE)
    try:
        mem, vq, rmem, rvq = _device(spec, ram, ring)
        mem.set_log(logfd, 64, 0)
        mem.logging = True
        rmem.log_size, rmem.logging = 64, True
        n = vq.push_rx(frames, hdr_len, mergeable)
        res = vq.last_rx
        want = rvq.push_rx(frames, hdr_len, mergeable)
        event(f"placed {min(res.placed, 2)}+ dropped {min(res.dropped, 1)}+ bad {min(res.bad, 1)}+")
        assert (n, res.placed, res.dropped, res.bad, res.notified) == want
        assert vq.stop() == rvq.last_avail
        assert ram.snapshot() == bytes(rmem.buf)
        assert _bits(logfd) == rmem.dirty
        mem.clear()
    finally:
        os.close(logfd)
        ram.close()


@hypothesis_budget(0.5)
@given(num=st.sampled_from([1, 4, 16]), jump=st.integers(1, 0xFFFF - 16))
def test_broken_avail_idx_agrees(num, jump):
    """C and the reference both call an avail idx more than num ahead broken."""
    ram = GuestRam(PLAYOUT)
    try:
        ring = DriverRing(ram, num)
        spec = dict(num=num, event_idx=False, indirect_ok=False, base=0)
        mem, vq, rmem, rvq = _device(spec, ram, ring)
        ring.set_avail_idx(num + jump)
        rmem.buf[:] = ram.snapshot()
        with pytest.raises(CoreError):
            vq.pop_tx()
        with pytest.raises(ref.RingBroken):
            rvq.pop_tx(8)
        mem.clear()
    finally:
        ram.close()


def test_push_goes_on_with_buffers_added_while_it_ran_out():
    """EVENT_IDX: a frame copied into a buffer that overlaps the avail ring publishes one
    more buffer (the same chain again) while the push runs; out of the buffers it planned
    with, the push must take the new one rather than stop (no kick would come for it)."""
    r = Rig(num=16, event_idx=True)
    try:
        seen = r.ring.avail_idx + 1
        start = r.ring.avail_gpa + 2 - 12               # header room: the frame lands on idx
        head = r.ring.add_chain([(start, 64, True)])
        first = struct.pack("<HHH", seen + 1, head, head) + b"A" * 16   # idx, slots 0 and 1
        assert r.vq.push_rx([first, b"B" * 22], hdr_len=12) == 2
        assert r.vq.last_rx.placed == 2
    finally:
        r.close()
