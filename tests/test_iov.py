# SPDX-License-Identifier: MIT
"""Full-transfer readv/writev loops of the C core: partial transfers, EAGAIN resume, EINTR, EOF."""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from passt_py import core

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _chunks(data: bytes, seed: int, max_len: int = 7000) -> list[memoryview]:
    """Split data into random-length pieces, zero-length ones included."""
    rng = random.Random(seed)
    view, out, pos = memoryview(data), [], 0
    while pos < len(data):
        n = rng.choice([0, 1, rng.randrange(1, max_len)])
        out.append(view[pos:pos + n])
        pos += n
    return out


def _buffers(sizes: list[int]) -> list[bytearray]:
    """Writable receive buffers of the given sizes."""
    return [bytearray(n) for n in sizes]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe shrunk to one page, so transfers are partial."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_writev_blocking_pipe_all_bytes_arrive(pipe):
    """A blocking writev_all through a one-page pipe delivers every byte in order."""
    r, w = pipe
    data = os.urandom(300_000)
    got = bytearray()

    def reader() -> None:
        while chunk := os.read(r, 10_000):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    assert core.writev_all(w, _chunks(data, 1)) == len(data)
    os.close(w)
    t.join(10)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_readv_blocking_socketpair_fills_every_buffer():
    """A blocking readv_all over a socketpair fills buffers of odd sizes completely."""
    a, b = socket.socketpair()
    with a, b:
        data = os.urandom(200_001)
        sizes = [len(c) for c in _chunks(data, 2)]
        t = threading.Thread(target=lambda: [a.sendall(c) for c in _chunks(data, 3, 999)])
        t.start()
        bufs = _buffers(sizes)
        assert core.readv_all(b.fileno(), bufs) == len(data)
        t.join(10)
        assert b"".join(bufs) == data


def test_writev_nonblocking_raises_with_progress(pipe):
    """On a full non-blocking pipe writev_all raises BlockingIOError carrying the offset reached."""
    r, w = pipe
    os.set_blocking(w, False)
    with pytest.raises(BlockingIOError) as info:
        core.writev_all(w, [bytes(10_000), bytes(10_000)])
    assert info.value.characters_written == 4096


def test_readv_nonblocking_empty_raises_with_zero_progress(pipe):
    """An empty non-blocking pipe raises BlockingIOError with nothing read."""
    r, w = pipe
    os.set_blocking(r, False)
    with pytest.raises(BlockingIOError) as info:
        core.readv_all(r, [bytearray(10)])
    assert info.value.characters_written == 0


def test_nonblocking_resume_both_ends_sha256(pipe):
    """Writer and reader both resume from their offsets after EAGAIN until the SHA-256 matches."""
    r, w = pipe
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    data = os.urandom(1 << 20)
    src = _chunks(data, 4)
    dst = _buffers([len(c) for c in _chunks(data, 5, 5000)])
    woff = roff = 0
    eagain = 0
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
    sel.register(w, selectors.EVENT_WRITE)
    while roff < len(data):
        for key, _ in sel.select(timeout=5):
            try:
                if key.fd == w:
                    woff = core.writev_all(w, src, woff)
                    sel.unregister(w)
                else:
                    roff = core.readv_all(r, dst, roff)
            except BlockingIOError as exc:
                eagain += 1
                if key.fd == w:
                    woff = exc.characters_written
                else:
                    roff = exc.characters_written
    sel.close()
    assert eagain > 0
    assert hashlib.sha256(b"".join(dst)).digest() == hashlib.sha256(data).digest()


def test_resume_offset_skips_already_sent_bytes(pipe):
    """Calling again with offset=n sends only the bytes from n on."""
    r, w = pipe
    assert core.writev_all(w, [b"abc", b"", b"defgh"], 4) == 8
    os.close(w)
    assert os.read(r, 100) == b"efgh"


def test_resume_offset_into_later_buffers_for_read(pipe):
    """readv_all with an offset starts filling at that byte, leaving earlier bytes alone."""
    r, w = pipe
    os.write(w, b"XYZ")
    bufs = [bytearray(b"..."), bytearray(b"....")]
    assert core.readv_all(r, bufs, 4) == 7
    assert bufs == [bytearray(b"..."), bytearray(b".XYZ")]


def test_offset_beyond_total_rejected(pipe):
    """An offset past the end of the buffers is an error."""
    r, w = pipe
    with pytest.raises(core.CoreError):
        core.writev_all(w, [b"ab"], 3)


def test_offset_equal_to_total_is_complete(pipe):
    """An offset equal to the total length means nothing is left to do."""
    r, w = pipe
    assert core.writev_all(w, [b"ab", b"c"], 3) == 3


def test_readv_eof_returns_short_count(pipe):
    """End of file before the buffers are full returns the bytes read, less than the total."""
    r, w = pipe
    os.write(w, b"hello")
    os.close(w)
    bufs = _buffers([3, 10])
    assert core.readv_all(r, bufs) == 5
    assert bytes(bufs[0]) + bytes(bufs[1][:2]) == b"hello"


def test_readv_eof_immediately_returns_offset(pipe):
    """At end of file readv_all returns the starting offset unchanged."""
    r, w = pipe
    os.close(w)
    assert core.readv_all(r, [bytearray(4), bytearray(4)], 2) == 2


def test_many_buffers_beyond_iov_max():
    """More buffers than IOV_MAX (1024) are moved in batches."""
    a, b = socket.socketpair()
    with a, b:
        pieces = [bytes([i % 256]) * 3 for i in range(3000)]

        def writer() -> None:
            try:
                core.writev_all(a.fileno(), pieces)
            finally:
                a.shutdown(socket.SHUT_WR)   # a failed write ends the read with EOF, not a hang

        t = threading.Thread(target=writer)
        t.start()
        bufs = _buffers([9] * 1000)
        assert core.readv_all(b.fileno(), bufs) == 9000
        t.join(10)
        assert b"".join(bufs) == b"".join(pieces)


def test_readv_rejects_readonly_buffer(pipe):
    """A read-only buffer cannot be a read target."""
    r, w = pipe
    with pytest.raises((TypeError, BufferError)):
        core.readv_all(r, [b"immutable"])


def test_bad_fd_raises_core_error():
    """A closed fd surfaces as CoreError with EBADF."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(core.CoreError) as info:
        core.writev_all(w, [b"x"])
    assert info.value.errno == 9


def test_writev_to_closed_reader_raises_epipe(pipe):
    """Writing into a pipe whose reader is gone fails with EPIPE, not a hang."""
    r, w = pipe
    os.close(r)
    with pytest.raises(core.CoreError) as info:
        core.writev_all(w, [b"x" * 10])
    assert info.value.errno == 32


@pytest.mark.timeout(20)
def test_readv_retries_eintr(pipe):
    """A signal that interrupts a blocking readv (no SA_RESTART) does not end the transfer."""
    r, w = pipe
    hits = []
    old = signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    signal.siginterrupt(signal.SIGUSR1, True)
    main = threading.get_ident()

    def poke() -> None:
        time.sleep(0.2)
        for _ in range(3):
            signal.pthread_kill(main, signal.SIGUSR1)
            time.sleep(0.05)
        os.write(w, b"after signals")

    t = threading.Thread(target=poke)
    try:
        t.start()
        buf = bytearray(13)
        assert core.readv_all(r, [buf]) == 13
        t.join(10)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert bytes(buf) == b"after signals"
    assert hits, "the signal never reached the blocked thread"


@pytest.mark.timeout(20)
def test_writev_retries_eintr(pipe):
    """A signal that interrupts a blocking writev on a full pipe does not end the transfer."""
    r, w = pipe
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.siginterrupt(signal.SIGUSR1, True)
    main = threading.get_ident()
    data = os.urandom(64_000)
    got = bytearray()

    def poke_then_drain() -> None:
        time.sleep(0.2)
        for _ in range(3):
            signal.pthread_kill(main, signal.SIGUSR1)
            time.sleep(0.05)
        while len(got) < len(data):
            got.extend(os.read(r, 8192))

    t = threading.Thread(target=poke_then_drain)
    try:
        t.start()
        assert core.writev_all(w, [data]) == len(data)
        t.join(10)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert bytes(got) == data
