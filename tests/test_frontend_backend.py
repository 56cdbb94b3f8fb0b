# SPDX-License-Identifier: MIT
"""The test front-end against the in-process back-end: real sockets, real rings, real memory."""
from __future__ import annotations

import hashlib
import os
import queue
import struct

import pytest
from hypothesis import given, strategies as st

from passt_py.vhost_user import events as ev
from passt_py.vhost_user import wire
from passt_py.vhost_user.wire import (
    MemoryRegion, MemoryTable, Request, U64, VringAddr, VringFile, VringState)
from tests.conftest import hypothesis_budget
from tests.frontend import (
    DEFAULT_FEATURES, RX, TX, Frontend, FrontendError, spawn_passt_py)
from tests.inproc_backend import InprocBackend
from tests.procs import stop


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame(n: int, size: int) -> bytes:
    """A recognisable Ethernet-sized frame."""
    body = hashlib.sha256(n.to_bytes(4, "big")).digest() * (size // 32 + 1)
    return body[:size]


def take_tx(backend: InprocBackend, count: int) -> list[bytes]:
    return [backend.tx_frames.get(timeout=5) for _ in range(count)]


@pytest.fixture
def backend(tmp_path):
    be = InprocBackend(str(tmp_path / "vhost.sock")).start()
    yield be
    be.stop()
    assert be.error is None, be.error


@pytest.fixture
def fe(backend):
    front = Frontend(backend.path).connect_all()
    yield front
    front.close()


def wait_for(pred, timeout: float = 5.0) -> bool:
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_negotiation_makes_the_device_ready(backend, fe):
    """After QEMU-style negotiation both rings are started and enabled."""
    assert wait_for(lambda: backend.device.ready)


def test_tx_frames_arrive_intact(backend, fe):
    """Frames of many sizes sent on TX reach the device byte for byte."""
    frames = [frame(i, size) for i, size in enumerate((60, 64, 1514, 9000, 65000, 1, 4000))]
    for f in frames:
        fe.send_frame(f)
    got = take_tx(backend, len(frames))
    assert [sha(g) for g in got] == [sha(f) for f in frames]
    assert len(fe.wait_tx_used(len(frames))) == len(frames)


def test_tx_frames_split_over_descriptors_arrive_intact(backend, fe):
    """A frame cut into several descriptors (header split off) is reassembled."""
    f = frame(1, 3000)
    fe.send_frame(f, split=[12, 100, 1000])
    assert sha(take_tx(backend, 1)[0]) == sha(f)


def test_tx_indirect_frame_arrives_intact(backend, fe):
    """A frame in an indirect descriptor table is read correctly."""
    f = frame(2, 1500)
    fe.send_frame(f, split=[12, 700], indirect=True)
    assert sha(take_tx(backend, 1)[0]) == sha(f)


def test_rx_frames_arrive_intact(backend, fe):
    """Frames the device pushes appear on RX unchanged, in order."""
    fe.provide_rx(64, 2048)
    frames = [frame(i, size) for i, size in enumerate((60, 1514, 2036, 5000, 64000, 42))]
    backend.send(frames)
    got = fe.recv_frames(len(frames))
    assert [sha(g) for g in got] == [sha(f) for f in frames]


@pytest.mark.parametrize("extra", [wire.VIRTIO_RING_F_EVENT_IDX, None])
def test_traffic_with_other_feature_sets(backend, extra):
    """With EVENT_IDX, or without MRG_RXBUF/INDIRECT, frames still flow intact both ways."""
    with Frontend(backend.path) as fe:
        if extra is None:
            fe.negotiate(features=wire.bit(wire.VIRTIO_F_VERSION_1)
                         | wire.bit(wire.VHOST_USER_F_PROTOCOL_FEATURES))
        else:
            fe.negotiate(features=DEFAULT_FEATURES | wire.bit(extra))
        fe.start()
        fe.provide_rx(8, 2048)
        tx, rx = frame(1, 1514), frame(2, 1400)
        fe.send_frame(tx)
        backend.send([rx])
        assert sha(take_tx(backend, 1)[0]) == sha(tx)
        assert [sha(g) for g in fe.recv_frames(1)] == [sha(rx)]


def test_rx_waits_for_buffers(backend, fe):
    """Frames pushed before the guest offers buffers arrive once it does."""
    frames = [frame(i, 500) for i in range(5)]
    backend.send(frames)
    assert fe.recv_frames(1, timeout=0.3) == []
    fe.provide_rx(8, 2048)
    assert [sha(g) for g in fe.recv_frames(5)] == [sha(f) for f in frames]


def test_get_vring_base_after_traffic_counts_consumed_chains(backend, fe):
    """GET_VRING_BASE returns the base plus the chains the device consumed."""
    for i in range(5):
        fe.send_frame(frame(i, 100))
    take_tx(backend, 5)
    fe.wait_tx_used(5)
    assert fe.get_vring_base(TX) == 5
    assert wait_for(lambda: backend.device.suspended is False)  # RX still started
    assert fe.get_vring_base(RX) == 0
    assert backend.device.suspended


def test_suspended_device_does_not_write_rx(backend, fe):
    """After GET_VRING_BASE on RX, pushed frames are not written to guest memory."""
    fe.provide_rx(8, 2048)
    fe.get_vring_base(RX)
    before = fe.ram.snapshot()
    backend.send([frame(1, 100)])
    assert fe.recv_frames(1, timeout=0.3) == []
    assert fe.ram.snapshot() == before


def test_device_state_save_moves_bytes_then_check_succeeds(backend, fe):
    """SET_DEVICE_STATE_FD(save) yields the state on the pipe; CHECK answers 0."""
    fe.get_vring_base(RX)
    fe.get_vring_base(TX)
    r, w = os.pipe()
    reply = fe.request(Request.SET_DEVICE_STATE_FD, struct.pack("=II", 0, 0), [w])
    os.close(w)
    assert U64.decode(reply.payload).value == wire.DEVICE_STATE_NOFD
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    assert data == backend.save_state
    assert fe.get_u64(Request.CHECK_DEVICE_STATE) == 0


def test_device_state_load_reaches_the_backend(backend, tmp_path):
    """SET_DEVICE_STATE_FD(load) before the rings start delivers the bytes."""
    with Frontend(backend.path) as fe:
        fe.negotiate()
        r, w = os.pipe()
        reply = fe.request(Request.SET_DEVICE_STATE_FD, struct.pack("=II", 1, 0), [r])
        os.close(r)
        assert U64.decode(reply.payload).value & 0xFF == 0
        os.write(w, b"hello state")
        os.close(w)
        assert fe.get_u64(Request.CHECK_DEVICE_STATE) == 0
        assert backend.loaded_state == b"hello state"
        fe.start()
        assert wait_for(lambda: backend.device.ready)


def test_send_rarp_reaches_the_embedding_code(backend, fe):
    """SEND_RARP comes out as an event with the MAC."""
    mac = bytes.fromhex("525400aabbcc")
    fe.request(Request.SEND_RARP, mac + b"\0\0")
    assert wait_for(lambda: ev.SendRarp(mac) in backend.events)


def test_dirty_log_marks_rx_buffers_and_used_ring(backend, fe):
    """With LOG_ALL, pages the device writes (RX data, used rings) are marked in the log."""
    heads = fe.provide_rx(4, 2048)
    log_map = fe.start_logging()
    backend.send([frame(1, 1500)])
    assert len(fe.recv_frames(1, recycle=False)) == 1
    dirty = fe.dirty_pages(log_map)
    rx = fe.rings[RX]
    gpa, _ = rx.chain_buffers(heads[0])[0]
    assert gpa // 4096 in dirty
    assert rx.used_gpa // 4096 in dirty
    log_map.close()


def test_no_dirty_log_without_log_all(backend, fe):
    """Without LOG_ALL the mapped log stays clean."""
    fe.provide_rx(4, 2048)
    log_map = fe.set_log_base()
    backend.send([frame(1, 1500)])
    assert len(fe.recv_frames(1)) == 1
    assert fe.dirty_pages(log_map) == set()
    log_map.close()


# ---- hostile input ----
HOSTILE = [
    ("unknown request", lambda fe: fe.send(777, b"abc", need_reply=True)),
    ("short SET_FEATURES", lambda fe: fe.send(Request.SET_FEATURES, b"\1\2", need_reply=True)),
    ("bad ring index", lambda fe: fe.send(Request.SET_VRING_NUM,
                                          VringState(9, 256).encode(), need_reply=True)),
    ("kick without fd", lambda fe: fe.send(Request.SET_VRING_KICK,
                                           VringFile(0, False).encode(), need_reply=True)),
    ("unexpected fd", lambda fe: fe.send(Request.SET_OWNER, b"", [fe.kick[0]], need_reply=True)),
    ("ring outside memory", lambda fe: fe.send(
        Request.SET_VRING_ADDR, VringAddr(0, 0, 0x10, 0x20, 0x30, 0).encode(), need_reply=True)),
    ("region past end of file", lambda fe: fe.send(
        Request.SET_MEM_TABLE,
        MemoryTable((MemoryRegion(0, 1 << 30, 0x1000_0000, 1 << 40),)).encode(), [fe.ram.fd],
        need_reply=True)),
    ("overlapping regions", lambda fe: fe.send(
        Request.SET_MEM_TABLE,
        MemoryTable((MemoryRegion(0, 8192, 0x1000_0000, 0),
                     MemoryRegion(4096, 8192, 0x2000_0000, 0))).encode(), [fe.ram.fd] * 2,
        need_reply=True)),
    ("no regions", lambda fe: fe.send(Request.SET_MEM_TABLE, struct.pack("=II", 0, 0),
                                      need_reply=True)),
    ("bad device state direction", lambda fe: fe.send(
        Request.SET_DEVICE_STATE_FD, struct.pack("=II", 7, 0), [fe.kick[0]])),
]


@pytest.mark.parametrize("name,attack", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_message_is_refused_and_the_session_survives(backend, name, attack):
    """Each hostile request gets an error reply and the same connection keeps working."""
    with Frontend(backend.path) as fe:
        fe.negotiate()
        attack(fe)
        reply = fe.recv_reply()
        assert U64.decode(reply.payload).value & 0xFF != 0
        assert fe.get_u64(Request.GET_QUEUE_NUM) == 1
    assert backend.alive


def test_framing_error_closes_only_that_connection(backend):
    """An oversized header drops the connection; a new front-end is served after."""
    with Frontend(backend.path) as fe:
        fe.send_raw(struct.pack("=III", 1, 1, 1 << 20))
        with pytest.raises((FrontendError, OSError)):
            fe.recv_reply()
    with Frontend(backend.path) as fe:
        fe.connect_all()
        fe.provide_rx(4)
        backend.send([b"x" * 100])
        assert fe.recv_frames(1) == [b"x" * 100]


def test_bad_descriptor_addresses_do_not_kill_the_backend(backend, fe):
    """TX chains pointing outside guest memory are dropped; good frames still flow."""
    ring = fe.rings[TX]
    ring.add_chain([(1 << 40, 100, False)])
    ring.add_chain([(0, 0xFFFF_FFFF, False)])
    fe.kick_tx()
    good = frame(3, 800)
    fe.send_frame(good)
    assert sha(take_tx(backend, 1)[0]) == sha(good)
    assert backend.alive


def test_bad_rx_buffers_are_refused_and_good_ones_used(backend, fe):
    """RX chains outside memory or read-only come back empty; frames land in good buffers."""
    ring = fe.rings[RX]
    bad = [ring.add_chain([(1 << 40, 2048, True)]),
           ring.add_chain([(ring.ram.alloc(2048), 2048, False)])]
    fe.provide_rx(4, 2048)
    f = frame(5, 1000)
    backend.send([f])
    assert [sha(g) for g in fe.recv_frames(1)] == [sha(f)]
    assert set(fe.rx_refused) == set(bad)
    assert backend.alive


def test_lying_avail_index_does_not_kill_the_backend(backend, fe):
    """An avail idx far ahead of the ring is refused without consuming anything."""
    fe.rings[TX].set_avail_idx(5000)
    fe.kick_tx()
    with pytest.raises(queue.Empty):
        backend.tx_frames.get(timeout=0.3)
    assert backend.alive
    assert fe.get_u64(Request.GET_QUEUE_NUM) == 1


def test_reconnect_after_abrupt_close_serves_a_new_frontend(backend):
    """A front-end vanishing mid-traffic resets the device; the next one works end to end."""
    first = Frontend(backend.path).connect_all()
    first.send_frame(frame(0, 200))
    take_tx(backend, 1)
    first.close()
    assert wait_for(lambda: any(isinstance(e, ev.FrontendDisconnected) for e in backend.events))
    assert not backend.device.ready
    with Frontend(backend.path) as second:
        second.connect_all()
        f = frame(9, 1400)
        second.send_frame(f)
        assert sha(take_tx(backend, 1)[0]) == sha(f)


def test_no_descriptor_leak_across_connections(backend):
    """Connecting, running traffic and disconnecting leaves the fd count unchanged."""
    def cycle():
        with Frontend(backend.path) as fe:
            fe.connect_all()
            fe.send_frame(frame(1, 100))
            take_tx(backend, 1)
        assert wait_for(lambda: backend.server.conn_fd is None)

    cycle()
    before = len(os.listdir("/proc/self/fd"))
    cycle()
    cycle()
    assert len(os.listdir("/proc/self/fd")) == before


# ---- out of process ----
@pytest.fixture
def passt_py_process(tmp_path):
    """A passt-py process serving vhost-user, stopped by PID afterwards."""
    path = str(tmp_path / "passt-py.sock")
    proc = spawn_passt_py(path)
    yield path, proc
    stop(proc)


def test_out_of_process_backend_negotiates_and_survives_hostile_input(passt_py_process):
    """passt-py negotiates like the in-process back-end and outlives a hostile front-end."""
    path, proc = passt_py_process
    with Frontend(path) as hostile:
        hostile.negotiate()
        hostile.send(777, b"junk", need_reply=True)
        assert U64.decode(hostile.recv_reply().payload).value != 0
        hostile.send_raw(struct.pack("=III", 1, 1, 1 << 20))
    with Frontend(path) as fe:
        fe.connect_all()
        assert fe.get_vring_base(TX) == 0
    assert proc.poll() is None


# ---- control-plane fuzzing against the real device ----
_MEM = 1 << 20
_UVA = 0x7F00_0000_0000
_addr = st.one_of(st.integers(_UVA - 0x2000, _UVA + _MEM + 0x2000), st.integers(0, 2**64 - 1))
_ring = st.integers(0, 2)
_STEP = st.one_of(
    st.tuples(st.just("mem"), st.integers(0, 2**64 - 1), st.integers(0, 2 * _MEM), _addr,
              st.integers(0, 2 * _MEM)),
    st.tuples(st.just("num"), _ring, st.sampled_from([0, 1, 2, 3, 256, 32768, 65536])),
    st.tuples(st.just("addr"), _ring, st.integers(0, 1), _addr, _addr, _addr),
    st.tuples(st.just("base"), _ring, st.integers(0, 2**32 - 1)),
    st.tuples(st.just("kick"), _ring, st.booleans()),
    st.tuples(st.just("get_base"), _ring),
    st.tuples(st.just("enable"), _ring, st.integers(0, 2)),
    st.tuples(st.just("features"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("push"),),
)


def _fuzz_step(fe: Frontend, backend: InprocBackend, step: tuple) -> None:
    kind, *args = step
    if kind == "mem":
        gpa, size, uva, off = args
        table = MemoryTable((MemoryRegion(gpa, max(size, 1), uva, off),)).encode()
        fe.ack(Request.SET_MEM_TABLE, table, [fe.ram.fd])
    elif kind == "num":
        fe.ack(Request.SET_VRING_NUM, VringState(*args).encode())
    elif kind == "addr":
        index, flags, desc, used, avail = args
        fe.ack(Request.SET_VRING_ADDR, VringAddr(index, flags, desc, used, avail, 0).encode())
    elif kind == "base":
        fe.ack(Request.SET_VRING_BASE, VringState(*args).encode())
    elif kind == "kick":
        index, with_fd = args
        fds = [fe.kick[index % 2]] if with_fd else []
        fe.ack(Request.SET_VRING_KICK, VringFile(index, not with_fd).encode(), fds)
        fe.kick_tx()
    elif kind == "get_base":
        fe.request(Request.GET_VRING_BASE, VringState(args[0], 0).encode())
    elif kind == "enable":
        fe.ack(Request.SET_VRING_ENABLE, VringState(*args).encode())
    elif kind == "features":
        fe.ack(Request.SET_FEATURES, U64(args[0]).encode())
    else:
        backend.send([b"z" * 300])


@hypothesis_budget(0.4)
@given(st.lists(_STEP, max_size=20))
def test_random_ring_configuration_never_kills_the_backend(tmp_path_factory, steps):
    """Arbitrary sizes, bases, addresses and memory tables get answers, never a crash."""
    path = str(tmp_path_factory.mktemp("fuzz") / "vhost.sock")
    with InprocBackend(path) as backend:
        with Frontend(path, mem_size=_MEM) as fe:
            fe.negotiate()
            for step in steps:
                _fuzz_step(fe, backend, step)
        assert backend.alive, backend.error
        with Frontend(path, mem_size=_MEM) as fe:
            fe.connect_all()
            assert fe.get_u64(Request.GET_QUEUE_NUM) == 1
        assert backend.error is None, backend.error
