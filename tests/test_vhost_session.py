# SPDX-License-Identifier: MIT
"""The sans-IO vhost-user session against a fake device: negotiation, rings, errors, fds."""
from __future__ import annotations

import errno
import os
import struct

import pytest
from hypothesis import given, strategies as st

from passt_py.vhost_user import wire
from passt_py.vhost_user.events import (
    DeviceStateTransfer, RingEnabled, RingKickFd, RingStarted, RingStopped, SendRarp)
from passt_py.vhost_user.session import OFFERED_PROTOCOL_FEATURES, Reply, Session
from passt_py.vhost_user.wire import (
    LogDescription, MemoryRegion, MemoryTable, Message, ProtocolFeature, Request, U64, VringAddr,
    VringFile, VringState, bit)
from tests.conftest import hypothesis_budget
from tests.vhost_fakes import OFFERED, FakeDevice

ALL_PROTO = OFFERED_PROTOCOL_FEATURES


def msg(request: int, payload: bytes = b"", need_reply: bool = False) -> Message:
    flags = wire.VERSION | (wire.FLAG_NEED_REPLY if need_reply else 0)
    return Message(request, flags, payload)


def replies(outputs) -> list[Message]:
    return [o.message for o in outputs if isinstance(o, Reply)]


def events(outputs) -> list:
    return [o for o in outputs if not isinstance(o, Reply)]


def u64_reply(outputs) -> int:
    (r,) = replies(outputs)
    assert r.flags & wire.FLAG_REPLY
    return U64.decode(r.payload).value


def eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def dev() -> FakeDevice:
    return FakeDevice()


@pytest.fixture
def sess(dev) -> Session:
    return Session(dev)


def negotiate(sess: Session, proto: int = ALL_PROTO, features: int | None = None) -> None:
    sess.handle(msg(Request.SET_PROTOCOL_FEATURES, U64(proto).encode()))
    if features is None:
        features = OFFERED | bit(wire.VHOST_USER_F_PROTOCOL_FEATURES)
    sess.handle(msg(Request.SET_FEATURES, U64(features).encode()))


def memfd(size: int = 1 << 20) -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def set_mem(sess: Session) -> None:
    table = MemoryTable((MemoryRegion(0, 1 << 20, 0x7000_0000_0000, 0),))
    sess.handle(msg(Request.SET_MEM_TABLE, table.encode()), [memfd()])


def configure_ring(sess: Session, index: int, base: int = 0) -> None:
    sess.handle(msg(Request.SET_VRING_NUM, VringState(index, 256).encode()))
    sess.handle(msg(Request.SET_VRING_BASE, VringState(index, base).encode()))
    sess.handle(msg(Request.SET_VRING_ADDR,
                    VringAddr(index, 0, 0x7000_0000_0000, 0x7000_0000_2000, 0x7000_0000_1000,
                              0x2000).encode()))


def start_ring(sess: Session, index: int, base: int = 0) -> list:
    configure_ring(sess, index, base)
    return sess.handle(msg(Request.SET_VRING_KICK, VringFile(index, False).encode()), [eventfd()])


# ---- feature negotiation ----
def test_get_features_offers_device_features_and_protocol_features(sess):
    """GET_FEATURES replies with the device's bits plus PROTOCOL_FEATURES."""
    value = u64_reply(sess.handle(msg(Request.GET_FEATURES)))
    assert value == OFFERED | bit(wire.VHOST_USER_F_PROTOCOL_FEATURES)


def test_get_protocol_features_offers_the_required_set(sess):
    """MQ, LOG_SHMFD, RARP, REPLY_ACK and DEVICE_STATE are offered."""
    value = u64_reply(sess.handle(msg(Request.GET_PROTOCOL_FEATURES)))
    for f in (ProtocolFeature.MQ, ProtocolFeature.LOG_SHMFD, ProtocolFeature.RARP,
              ProtocolFeature.REPLY_ACK, ProtocolFeature.DEVICE_STATE):
        assert value & bit(f)


def test_set_features_passes_acked_bits_to_the_device(sess, dev):
    """SET_FEATURES hands the acknowledged bits to the device."""
    sess.handle(msg(Request.SET_FEATURES, U64(bit(wire.VIRTIO_F_VERSION_1)).encode()))
    assert ("features", bit(wire.VIRTIO_F_VERSION_1)) in dev.calls


def test_set_features_with_unoffered_bits_is_refused(sess, dev):
    """Bits that were not offered are refused with an error ack."""
    negotiate(sess)
    out = sess.handle(msg(Request.SET_FEATURES, U64(1 << 40).encode(), need_reply=True))
    assert u64_reply(out) != 0
    assert ("features", 1 << 40) not in dev.calls


def test_set_protocol_features_with_unoffered_bits_is_refused(sess):
    """Protocol bits that were not offered are refused."""
    sess.handle(msg(Request.SET_PROTOCOL_FEATURES, U64(bit(ProtocolFeature.CONFIG)).encode()))
    assert sess.protocol_features == 0


def test_get_queue_num_reports_one_queue_pair(sess):
    """GET_QUEUE_NUM answers 1 (one RX/TX pair)."""
    assert u64_reply(sess.handle(msg(Request.GET_QUEUE_NUM))) == 1


def test_set_owner_has_no_reply_without_reply_ack(sess):
    """A request without its own reply gets none when REPLY_ACK is not negotiated."""
    assert replies(sess.handle(msg(Request.SET_OWNER, need_reply=True))) == []


# ---- REPLY_ACK ----
def test_reply_ack_success_is_zero(sess):
    """With REPLY_ACK and NEED_REPLY, success is acknowledged with 0."""
    negotiate(sess)
    assert u64_reply(sess.handle(msg(Request.SET_OWNER, need_reply=True))) == 0


def test_reply_ack_failure_is_non_zero(sess, dev):
    """With REPLY_ACK and NEED_REPLY, failure is acknowledged with non-zero."""
    negotiate(sess)
    dev.fail_mem = True
    table = MemoryTable((MemoryRegion(0, 4096, 0x1000, 0),))
    out = sess.handle(msg(Request.SET_MEM_TABLE, table.encode(), need_reply=True), [memfd()])
    assert u64_reply(out) != 0


def test_reply_ack_without_need_reply_flag_sends_nothing(sess):
    """REPLY_ACK negotiated but no NEED_REPLY flag: no reply."""
    negotiate(sess)
    assert replies(sess.handle(msg(Request.SET_OWNER))) == []


def test_requests_with_own_reply_get_no_extra_ack(sess):
    """GET_FEATURES with NEED_REPLY gets exactly one reply: its own."""
    negotiate(sess)
    out = sess.handle(msg(Request.GET_FEATURES, need_reply=True))
    assert len(replies(out)) == 1


# ---- malformed input: every request with a wrong payload size ----
SIZED = {
    Request.GET_FEATURES: 0, Request.SET_FEATURES: 8, Request.SET_OWNER: 0,
    Request.RESET_OWNER: 0, Request.GET_PROTOCOL_FEATURES: 0,
    Request.SET_PROTOCOL_FEATURES: 8, Request.GET_QUEUE_NUM: 0, Request.SET_MEM_TABLE: 40,
    Request.SET_LOG_BASE: 16, Request.SET_LOG_FD: 0, Request.SET_VRING_NUM: 8,
    Request.SET_VRING_ADDR: 40, Request.SET_VRING_BASE: 8, Request.GET_VRING_BASE: 8,
    Request.SET_VRING_KICK: 8, Request.SET_VRING_CALL: 8, Request.SET_VRING_ERR: 8,
    Request.SET_VRING_ENABLE: 8, Request.SEND_RARP: 8, Request.SET_DEVICE_STATE_FD: 8,
    Request.CHECK_DEVICE_STATE: 0,
}


@pytest.mark.parametrize("request_code", list(SIZED))
def test_wrong_payload_size_is_refused_and_the_session_survives(sess, request_code):
    """A payload one byte too long gets an error reply; the next request still works."""
    negotiate(sess)
    out = sess.handle(msg(request_code, bytes(SIZED[request_code] + 1), need_reply=True))
    (r,) = replies(out)
    if request_code in (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                        Request.GET_QUEUE_NUM, Request.GET_VRING_BASE):
        assert r.payload == b""
    else:
        assert U64.decode(r.payload).value & 0xFF != 0
    assert u64_reply(sess.handle(msg(Request.GET_QUEUE_NUM))) == 1


def test_unknown_request_is_refused_with_an_ack(sess):
    """An unknown request code gets an error ack when one is asked for."""
    negotiate(sess)
    assert u64_reply(sess.handle(msg(999, b"xx", need_reply=True))) == errno.ENOSYS


def test_unknown_request_closes_its_descriptors(sess):
    """Descriptors sent with an unknown request are closed."""
    fd = eventfd()
    sess.handle(msg(999), [fd])
    assert not fd_open(fd)


def test_wrong_version_is_refused(sess):
    """A header version other than 1 is refused."""
    negotiate(sess)
    out = sess.handle(Message(Request.SET_OWNER, 2 | wire.FLAG_NEED_REPLY))
    assert u64_reply(out) != 0


def test_unexpected_descriptor_is_closed_and_refused(sess):
    """A descriptor on a request that takes none is closed and the request refused."""
    negotiate(sess)
    fd = eventfd()
    out = sess.handle(msg(Request.SET_OWNER, need_reply=True), [fd])
    assert u64_reply(out) != 0
    assert not fd_open(fd)


# ---- memory table ----
def test_mem_table_needs_one_descriptor_per_region(sess, dev):
    """A region count that does not match the descriptors is refused; descriptors closed."""
    negotiate(sess)
    table = MemoryTable((MemoryRegion(0, 4096, 0x1000, 0), MemoryRegion(8192, 4096, 0x9000, 0)))
    fd = memfd()
    out = sess.handle(msg(Request.SET_MEM_TABLE, table.encode(), need_reply=True), [fd])
    assert u64_reply(out) != 0
    assert not fd_open(fd)
    assert not any(c[0] == "mem" for c in dev.calls)


def test_mem_table_reaches_the_device(sess, dev):
    """A valid table is handed to the device."""
    negotiate(sess)
    set_mem(sess)
    assert any(c[0] == "mem" for c in dev.calls)


@pytest.mark.parametrize("count", [0, 9])
def test_mem_table_with_bad_count_is_refused(sess, count):
    """0 or more than 8 regions are refused."""
    negotiate(sess)
    payload = struct.pack("=II", count, 0) + bytes(32 * 8)
    assert u64_reply(sess.handle(msg(Request.SET_MEM_TABLE, payload, need_reply=True))) != 0


# ---- rings ----
@pytest.mark.parametrize("request_code,payload", [
    (Request.SET_VRING_NUM, VringState(2, 256).encode()),
    (Request.SET_VRING_BASE, VringState(7, 0).encode()),
    (Request.GET_VRING_BASE, VringState(2, 0).encode()),
    (Request.SET_VRING_ENABLE, VringState(255, 1).encode()),
    (Request.SET_VRING_ADDR, VringAddr(3, 0, 0, 0, 0, 0).encode()),
    (Request.SET_VRING_CALL, VringFile(2, True).encode()),
    (Request.SET_VRING_KICK, VringFile(200, True).encode()),
    (Request.SET_VRING_ERR, VringFile(9, True).encode()),
])
def test_ring_index_out_of_range_is_refused(sess, request_code, payload):
    """Only rings 0 and 1 exist."""
    negotiate(sess)
    (r,) = replies(sess.handle(msg(request_code, payload, need_reply=True)))
    assert r.payload == b"" or U64.decode(r.payload).value == errno.ERANGE


@pytest.mark.parametrize("num", [0, 3, 65536])
def test_ring_size_must_be_a_power_of_two_up_to_32768(sess, num):
    """Sizes that are zero, not powers of two or too big are refused."""
    negotiate(sess)
    out = sess.handle(msg(Request.SET_VRING_NUM, VringState(0, num).encode(), need_reply=True))
    assert u64_reply(out) != 0


def test_kick_starts_a_configured_ring(sess, dev):
    """SET_VRING_KICK on a configured ring starts it and reports its kick fd."""
    negotiate(sess)
    set_mem(sess)
    out = start_ring(sess, 1)
    evs = events(out)
    assert isinstance(evs[0], RingKickFd) and evs[0].index == 1 and evs[0].fd is not None
    assert RingStarted(1) in evs
    assert ("start", 1) in dev.calls


def test_kick_on_unconfigured_ring_is_refused_and_fd_closed(sess):
    """A kick fd for a ring without size/addresses is refused and closed."""
    negotiate(sess)
    fd = eventfd()
    out = sess.handle(msg(Request.SET_VRING_KICK, VringFile(0, False).encode(), need_reply=True),
                      [fd])
    assert u64_reply(out) != 0
    assert not fd_open(fd)


def test_kick_without_fd_and_without_nofd_flag_is_refused(sess):
    """A kick request missing its descriptor is refused."""
    negotiate(sess)
    set_mem(sess)
    configure_ring(sess, 0)
    out = sess.handle(msg(Request.SET_VRING_KICK, VringFile(0, False).encode(), need_reply=True))
    assert u64_reply(out) != 0
    assert not sess.ring_started(0)


def test_kick_with_nofd_flag_starts_a_polled_ring(sess):
    """The no-fd flag starts the ring without a kick descriptor."""
    negotiate(sess)
    set_mem(sess)
    configure_ring(sess, 0)
    out = sess.handle(msg(Request.SET_VRING_KICK, VringFile(0, True).encode()))
    assert RingKickFd(0, None) in events(out)
    assert sess.ring_started(0)


def test_nofd_flag_with_a_descriptor_attached_is_refused(sess):
    """The no-fd flag with a descriptor attached is inconsistent: refused, fd closed."""
    negotiate(sess)
    fd = eventfd()
    out = sess.handle(msg(Request.SET_VRING_CALL, VringFile(0, True).encode(), need_reply=True),
                      [fd])
    assert u64_reply(out) != 0
    assert not fd_open(fd)


def test_get_vring_base_returns_set_base_plus_consumed(sess, dev):
    """GET_VRING_BASE stops the ring and returns the base plus what was consumed."""
    negotiate(sess)
    set_mem(sess)
    start_ring(sess, 1, base=100)
    dev.consumed[1] = 7
    out = sess.handle(msg(Request.GET_VRING_BASE, VringState(1, 0).encode()))
    (r,) = replies(out)
    assert VringState.decode(r.payload) == VringState(1, 107)
    assert RingStopped(1, 107) in events(out)
    assert not sess.ring_started(1)


def test_get_vring_base_of_a_stopped_ring_returns_its_base(sess):
    """A never-started ring reports the base it was given."""
    negotiate(sess)
    set_mem(sess)
    configure_ring(sess, 0, base=42)
    (r,) = replies(sess.handle(msg(Request.GET_VRING_BASE, VringState(0, 0).encode())))
    assert VringState.decode(r.payload) == VringState(0, 42)


def test_all_rings_stopped_means_suspended(sess):
    """After GET_VRING_BASE on every started ring the device is suspended."""
    negotiate(sess)
    set_mem(sess)
    start_ring(sess, 0)
    start_ring(sess, 1)
    assert not sess.suspended
    for i in (0, 1):
        sess.handle(msg(Request.GET_VRING_BASE, VringState(i, 0).encode()))
    assert sess.suspended


def test_set_vring_base_on_a_started_ring_is_refused(sess):
    """The base cannot change while the ring runs."""
    negotiate(sess)
    set_mem(sess)
    start_ring(sess, 0)
    out = sess.handle(msg(Request.SET_VRING_BASE, VringState(0, 5).encode(), need_reply=True))
    assert u64_reply(out) == errno.EBUSY


def test_rings_start_disabled_with_protocol_features(sess):
    """With PROTOCOL_FEATURES negotiated, rings stay disabled until SET_VRING_ENABLE."""
    negotiate(sess)
    set_mem(sess)
    start_ring(sess, 0)
    assert not sess.ring_enabled(0)
    out = sess.handle(msg(Request.SET_VRING_ENABLE, VringState(0, 1).encode()))
    assert RingEnabled(0, True) in events(out)
    assert sess.ring_enabled(0)


def test_rings_are_enabled_without_protocol_features(sess):
    """SET_FEATURES without PROTOCOL_FEATURES enables every ring at once."""
    out = sess.handle(msg(Request.SET_FEATURES, U64(bit(wire.VIRTIO_F_VERSION_1)).encode()))
    assert RingEnabled(0, True) in events(out) and RingEnabled(1, True) in events(out)


def test_enable_value_other_than_0_or_1_is_refused(sess):
    """SET_VRING_ENABLE takes 0 or 1."""
    negotiate(sess)
    out = sess.handle(msg(Request.SET_VRING_ENABLE, VringState(0, 2).encode(), need_reply=True))
    assert u64_reply(out) != 0


# ---- logging ----
def test_set_log_base_replies_when_log_shmfd_negotiated(sess, dev):
    """SET_LOG_BASE gets a u64 0 reply with LOG_SHMFD, even without NEED_REPLY."""
    negotiate(sess)
    fd = memfd(4096)
    out = sess.handle(msg(Request.SET_LOG_BASE, LogDescription(4096, 0).encode()), [fd])
    assert u64_reply(out) == 0
    assert ("log", LogDescription(4096, 0)) in dev.calls


def test_set_log_base_without_log_shmfd_is_refused(sess):
    """Without LOG_SHMFD there is no shared log to map."""
    negotiate(sess, proto=bit(ProtocolFeature.REPLY_ACK))
    fd = memfd(4096)
    out = sess.handle(msg(Request.SET_LOG_BASE, LogDescription(4096, 0).encode(),
                          need_reply=True), [fd])
    assert u64_reply(out) == errno.ENOTSUP
    assert not fd_open(fd)


def test_set_log_base_without_descriptor_is_refused(sess):
    """SET_LOG_BASE needs its descriptor."""
    negotiate(sess)
    assert u64_reply(sess.handle(msg(Request.SET_LOG_BASE, LogDescription(4096, 0).encode()))) != 0


# ---- RARP ----
def test_send_rarp_emits_the_mac(sess):
    """SEND_RARP produces an announcement action with the guest MAC."""
    negotiate(sess)
    mac = bytes.fromhex("52540012abcd")
    out = sess.handle(msg(Request.SEND_RARP, mac + b"\0\0"))
    assert SendRarp(mac) in events(out)


def test_send_rarp_without_the_protocol_feature_is_refused(sess):
    """SEND_RARP needs the RARP protocol feature."""
    negotiate(sess, proto=bit(ProtocolFeature.REPLY_ACK))
    out = sess.handle(msg(Request.SEND_RARP, bytes(8), need_reply=True))
    assert u64_reply(out) != 0 and not events(out)


# ---- device state ----
def state_fd_msg(direction: int, phase: int = 0) -> Message:
    return msg(Request.SET_DEVICE_STATE_FD,
               struct.pack("=II", direction, phase))


def test_set_device_state_fd_hands_the_fd_out(sess):
    """A valid request yields DeviceStateTransfer and a 'no fd returned' success reply."""
    negotiate(sess)
    r, w = os.pipe()
    out = sess.handle(state_fd_msg(0), [w])
    assert u64_reply(out) == wire.DEVICE_STATE_NOFD
    assert DeviceStateTransfer(0, w) in events(out)
    assert fd_open(w)
    os.close(r)
    os.close(w)


@pytest.mark.parametrize("direction,phase", [(2, 0), (0, 1)])
def test_set_device_state_fd_with_bad_parameters_is_refused(sess, direction, phase):
    """Bad direction or phase: error in bits 0-7, no-fd bit set, descriptor closed."""
    negotiate(sess)
    r, w = os.pipe()
    out = sess.handle(state_fd_msg(direction, phase), [w])
    value = u64_reply(out)
    assert value & 0xFF != 0 and value & wire.DEVICE_STATE_NOFD
    assert not events(out)
    assert not fd_open(w)
    os.close(r)


def test_set_device_state_fd_without_a_descriptor_is_refused(sess):
    """The request needs exactly one descriptor."""
    negotiate(sess)
    assert u64_reply(sess.handle(state_fd_msg(1))) & 0xFF != 0


def test_set_device_state_fd_while_rings_run_is_refused(sess):
    """The only phase is 'stopped': started rings make the request illegal."""
    negotiate(sess)
    set_mem(sess)
    start_ring(sess, 0)
    r, w = os.pipe()
    assert u64_reply(sess.handle(state_fd_msg(0), [w])) & 0xFF == errno.EBUSY
    os.close(r)


def test_set_device_state_fd_without_the_protocol_feature_is_refused(sess):
    """DEVICE_STATE must be negotiated first."""
    negotiate(sess, proto=bit(ProtocolFeature.REPLY_ACK))
    r, w = os.pipe()
    assert u64_reply(sess.handle(state_fd_msg(0), [w])) & 0xFF != 0
    os.close(r)


def test_check_device_state_defaults_to_success(sess):
    """With no transfer, CHECK_DEVICE_STATE answers 0."""
    negotiate(sess)
    assert u64_reply(sess.handle(msg(Request.CHECK_DEVICE_STATE))) == 0


def test_check_device_state_waits_for_the_transfer_result(sess):
    """During a transfer CHECK_DEVICE_STATE is answered only when the result is set."""
    negotiate(sess)
    r, w = os.pipe()
    sess.handle(state_fd_msg(1), [r])
    assert replies(sess.handle(msg(Request.CHECK_DEVICE_STATE))) == []
    assert u64_reply(sess.finish_device_state(errno.EPROTO)) == errno.EPROTO
    os.close(r)
    os.close(w)


def test_check_device_state_reports_a_finished_failure(sess):
    """A transfer that already failed is reported as non-zero."""
    negotiate(sess)
    r, w = os.pipe()
    sess.handle(state_fd_msg(0), [w])
    assert sess.finish_device_state(5) == []
    assert u64_reply(sess.handle(msg(Request.CHECK_DEVICE_STATE))) == 5
    os.close(r)
    os.close(w)


# ---- reset ----
def test_reset_closes_kept_descriptors_and_forgets_features(sess, dev):
    """After reset every descriptor the device kept is closed and negotiation starts over."""
    negotiate(sess)
    set_mem(sess)
    start_ring(sess, 0)
    kept = list(dev.kept)
    evs = sess.reset()
    assert RingStopped(0, 0) in evs and RingKickFd(0, None) in evs
    assert not any(fd_open(fd) for fd in kept)
    assert sess.protocol_features == 0 and sess.features == 0
    assert not sess.ring_started(0)


# ---- fuzzing ----
_REQUESTS = st.one_of(st.sampled_from(list(Request)), st.integers(0, 60))


@hypothesis_budget(3)
@given(st.lists(st.tuples(_REQUESTS, st.integers(0, 15), st.binary(max_size=80),
                          st.integers(0, 3)), max_size=25))
def test_random_messages_never_raise_nor_leak_descriptors(script):
    """Any sequence of messages is answered without exceptions, and no fd is left behind."""
    before = len(os.listdir("/proc/self/fd"))
    dev = FakeDevice()
    sess = Session(dev)
    for request, flags, payload, nfds in script:
        fds = [eventfd() for _ in range(nfds)]
        for out in sess.handle(Message(request, flags, payload), fds):
            if isinstance(out, DeviceStateTransfer):
                os.close(out.fd)  # what its consumer, the migration code, does when done
    sess.reset()
    assert len(os.listdir("/proc/self/fd")) == before
