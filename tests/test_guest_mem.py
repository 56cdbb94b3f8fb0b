# SPDX-License-Identifier: MIT
"""Guest memory (csrc/guest_mem.c via core.GuestMemory): translation, bounds, dirty log."""
from __future__ import annotations

import errno
import mmap
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_py.core import CoreError, GuestMemory
from passt_py.ref.virtq import RefMemory, RefRegion
from tests.conftest import hypothesis_budget
from tests.virtq_driver import PAGE, GuestRam

BASE = 0x10000
SIZE = 64 * 1024


@pytest.fixture
def ram():
    """Two adjacent regions [BASE, +SIZE) and [BASE+SIZE, +SIZE), then one after a hole."""
    r = GuestRam(((BASE, SIZE), (BASE + SIZE, SIZE), (BASE + 4 * SIZE, SIZE)))
    yield r
    r.close()


@pytest.fixture
def mem(ram):
    """GuestMemory with every region of ram mapped."""
    m = GuestMemory()
    ram.map_into(m)
    yield m
    m.clear()


def _errno(exc_info) -> int:
    return exc_info.value.errno


def _memfd(size: int) -> int:
    fd = os.memfd_create("log")
    os.ftruncate(fd, size)
    return fd


def test_write_then_read_at_region_edges(mem, ram):
    """The first and the last byte of a region are reachable, and land in the memfd."""
    mem.write(BASE, b"A")
    mem.write(BASE + SIZE - 1, b"Z")
    assert mem.read(BASE, 1) == b"A" and mem.read(BASE + SIZE - 1, 1) == b"Z"
    assert ram.read(BASE, 1) == b"A" and ram.read(BASE + SIZE - 1, 1) == b"Z"


def test_guest_writes_are_visible(mem, ram):
    """What the driver writes into the memfd is what the device reads (shared mapping)."""
    ram.write(BASE + 100, b"guest data")
    assert mem.read(BASE + 100, 10) == b"guest data"


def test_read_before_first_region_faults(mem):
    """An address below every region is rejected with EFAULT."""
    with pytest.raises(CoreError) as e:
        mem.read(BASE - 1, 1)
    assert _errno(e) == errno.EFAULT


def test_read_into_hole_faults(mem):
    """A range running from a region into unmapped space is rejected."""
    with pytest.raises(CoreError) as e:
        mem.read(BASE + 2 * SIZE - 4, 8)
    assert _errno(e) == errno.EFAULT


def test_read_past_last_region_faults(mem):
    """A range ending one byte past the last region is rejected."""
    with pytest.raises(CoreError):
        mem.read(BASE + 5 * SIZE - 4, 5)


def test_wrapping_address_faults(mem):
    """gpa + len overflowing 64 bits is rejected, not wrapped around to low memory."""
    with pytest.raises(CoreError) as e:
        mem.read(2**64 - 4, 8)
    assert _errno(e) == errno.EFAULT


def test_read_spans_adjacent_regions(mem, ram):
    """A range over two adjacent regions is read in two pieces, transparently."""
    ram.write(BASE + SIZE - 3, b"abc")
    ram.write(BASE + SIZE, b"def")
    assert mem.read(BASE + SIZE - 3, 6) == b"abcdef"


def test_failed_write_writes_nothing(mem, ram):
    """A write that runs into a hole is refused as a whole: no byte is written."""
    before = ram.snapshot()
    with pytest.raises(CoreError):
        mem.write(BASE + 2 * SIZE - 2, b"xxxx")
    assert ram.snapshot() == before


def test_overlapping_gpa_rejected(ram):
    """A region overlapping another in guest-physical space is refused with EEXIST."""
    m = GuestMemory()
    m.add_region(ram.fd, BASE, SIZE, 0x1000_0000, 0)
    with pytest.raises(CoreError) as e:
        m.add_region(ram.fd, BASE + SIZE - 1, SIZE, 0x2000_0000, 0)
    assert _errno(e) == errno.EEXIST


def test_overlapping_uva_rejected(ram):
    """A region overlapping another in front-end virtual space is refused too."""
    m = GuestMemory()
    m.add_region(ram.fd, BASE, SIZE, 0x1000_0000, 0)
    with pytest.raises(CoreError) as e:
        m.add_region(ram.fd, BASE + SIZE, SIZE, 0x1000_0000 + SIZE - 1, 0)
    assert _errno(e) == errno.EEXIST


def test_ninth_region_rejected(ram):
    """At most 8 regions (the vhost-user baseline) are accepted."""
    m = GuestMemory()
    for i in range(GuestMemory.MAX_REGIONS):
        m.add_region(ram.fd, i * PAGE, PAGE, 0x1000_0000 + i * PAGE, 0)
    with pytest.raises(CoreError) as e:
        m.add_region(ram.fd, 100 * PAGE, PAGE, 0x2000_0000, 0)
    assert _errno(e) == errno.ENOSPC and m.nregions == 8


def test_zero_size_and_wrapping_region_rejected(ram):
    """A region of size 0, or one whose end wraps, is invalid."""
    m = GuestMemory()
    for args in ((BASE, 0, 0x1000, 0), (2**64 - PAGE, 2 * PAGE, 0x1000, 0)):
        with pytest.raises(CoreError) as e:
            m.add_region(ram.fd, *args)
        assert _errno(e) == errno.EINVAL


def test_unaligned_mmap_offset(ram):
    """A region starting at a file offset that is not page-aligned maps the right bytes."""
    ram.write(BASE + 100, b"offset!")
    m = GuestMemory()
    m.add_region(ram.fd, 0x100000, 1000, 0x5000_0000, 100)
    assert m.read(0x100000, 7) == b"offset!"


def test_remove_region_then_access_faults(mem):
    """After REM_MEM_REG the region's addresses fault, the others still work."""
    mem.remove_region(BASE, SIZE, mem_region_uva(mem, BASE))
    with pytest.raises(CoreError):
        mem.read(BASE, 1)
    assert mem.read(BASE + SIZE, 1) == b"\0"


def mem_region_uva(mem: GuestMemory, gpa: int) -> int:
    """The driver's uva for a gpa (GuestRam puts region i at uva_base + file offset)."""
    return 0x7F00_0000_0000 + (gpa - BASE)


def test_remove_unknown_region_fails(mem):
    """Removing a region that does not match exactly is ENOENT."""
    with pytest.raises(CoreError) as e:
        mem.remove_region(BASE, SIZE - 1, mem_region_uva(mem, BASE))
    assert _errno(e) == errno.ENOENT


def test_clear_unmaps_everything(mem):
    """clear() leaves no region: every access faults."""
    mem.clear()
    assert mem.nregions == 0
    with pytest.raises(CoreError):
        mem.read(BASE, 1)


def test_uva_to_gpa(mem, ram):
    """Front-end virtual addresses translate back to guest-physical ones."""
    assert mem.uva_to_gpa(ram.uva(BASE + SIZE + 5)) == BASE + SIZE + 5
    with pytest.raises(CoreError):
        mem.uva_to_gpa(1)


def _log_bits(fd: int, size: int, offset: int = 0) -> set[int]:
    data = os.pread(fd, size, offset)
    return {i * 8 + b for i, byte in enumerate(data) for b in range(8) if byte >> b & 1}


def test_logging_needs_request_and_log(mem):
    """logging is True only with LOG_ALL requested and a log mapped."""
    assert not mem.logging
    mem.logging = True
    assert not mem.logging
    fd = _memfd(PAGE)
    mem.set_log(fd, 64, 0)
    assert mem.logging
    mem.clear_log()
    assert not mem.logging
    os.close(fd)


def test_write_logs_exactly_pages_touched(mem):
    """A write spanning a page boundary sets the bits of both pages and no other."""
    fd = _memfd(PAGE)
    mem.set_log(fd, 64, 0)
    mem.logging = True
    gpa = BASE + 3 * PAGE - 2
    mem.write(gpa, b"1234")
    assert _log_bits(fd, 64) == {gpa >> 12, (gpa + 3) >> 12}
    os.close(fd)


def test_no_log_bits_when_logging_off(mem):
    """With a log mapped but logging not requested, writes set no bit."""
    fd = _memfd(PAGE)
    mem.set_log(fd, 64, 0)
    mem.write(BASE, b"x" * 100)
    assert _log_bits(fd, 64) == set()
    os.close(fd)


def test_log_at_offset(mem):
    """SET_LOG_BASE's mmap_offset is honoured, also when not page-aligned."""
    fd = _memfd(2 * PAGE)
    mem.set_log(fd, 64, 100)
    mem.logging = True
    mem.write(BASE, b"x")
    assert _log_bits(fd, 64, 100) == {BASE >> 12}
    assert _log_bits(fd, 100, 0) == set()
    os.close(fd)


def test_log_bits_beyond_log_size_are_ignored(mem):
    """A page whose bit lies past the end of a too-small log is skipped, not written."""
    fd = _memfd(PAGE)
    mem.set_log(fd, 1, 0)   # covers pages 0..7 only
    mem.logging = True
    mem.write(BASE, b"x")   # page 16
    assert os.pread(fd, PAGE, 0) == bytes(PAGE)
    os.close(fd)


def test_log_is_shared_with_front_end(mem):
    """The log is mapped MAP_SHARED: the front-end sees bits through its own mapping."""
    fd = _memfd(PAGE)
    view = mmap.mmap(fd, PAGE)
    mem.set_log(fd, 64, 0)
    mem.logging = True
    mem.write(BASE + SIZE, b"y")
    page = (BASE + SIZE) >> 12
    assert view[page // 8] == 1 << (page % 8)
    view.close()
    os.close(fd)


@hypothesis_budget(2)
@given(gpa=st.integers(0, 6 * SIZE), length=st.integers(0, 3 * SIZE))
def test_reads_agree_with_reference(gpa, length):
    """For any range, C and the reference agree on fault vs the exact bytes."""
    r = GuestRam(((BASE, SIZE), (BASE + SIZE, SIZE), (BASE + 4 * SIZE, SIZE)))
    try:
        r.mm[:] = bytes(i & 0xFF for i in range(r.file_size))
        m = GuestMemory()
        r.map_into(m)
        ref = RefMemory(bytearray(r.snapshot()),
                        [RefRegion(x.gpa, x.size, x.uva, x.offset) for x in r.regions])
        try:
            want: bytes | None = ref.read(gpa, length)
        except ValueError:
            want = None
        try:
            got: bytes | None = m.read(gpa, length)
        except CoreError:
            got = None
        assert got == want
        m.clear()
    finally:
        r.close()
