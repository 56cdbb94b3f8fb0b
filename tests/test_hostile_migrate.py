"""Hostile migration streams into a target back-end (passt_py.migrate.load_bytes).

Real streams from a source holding ping, UDP and TCP flows, then corrupted in the places a
checksum cannot protect (a source that lies, a stream re-sealed after tampering): every load is
refused with MigrationError or applied flow by flow; no other exception escapes and the link
keeps serving. Runs in a private network namespace (tests/fuzz/netns_guard.py).
"""
from __future__ import annotations

import dataclasses
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passt_py import migrate
from tests.conftest import qemu_unavailable
from tests.fuzz import driver, netns_guard, targets

EXAMPLES = int(os.environ.get("PASST_PY_EXAMPLES", "300")) // 3
SEEDS = driver.load_corpus("migrate")


@pytest.fixture(scope="module")
def ns():
    if not netns_guard.available():
        qemu_unavailable("needs a private network namespace (root or a user namespace)")
    with netns_guard.private_netns():
        yield
        for attr in ("_migrate_rig",):
            rig = getattr(targets, attr)
            if rig is not None:
                rig.close()
                setattr(targets, attr, None)


def test_seed_streams_load(ns):
    """The committed seeds are real streams: each loads without an error."""
    assert SEEDS
    for seed in SEEDS:
        targets.fuzz_migrate(seed)


@st.composite
def tampered(draw) -> bytes:
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not body:
            break
        i = draw(st.integers(0, len(body) - 1))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            body[i] = draw(st.integers(0, 255))
        elif kind == 1 and i + 4 <= len(body):
            body[i:i + 4] = draw(st.sampled_from(
                [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])).to_bytes(4, "big")
        elif kind == 2 and i + 2 <= len(body):
            body[i:i + 2] = draw(st.sampled_from([0, 0xFFFF, 0x8000, 0xFF])).to_bytes(2, "big")
        else:
            del body[i:]
    return bytes(body)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=tampered())
def test_tampered_resealed_streams_are_refused_or_applied_cleanly(ns, body):
    """A lying source: refused or applied, never an unexpected exception."""
    targets.fuzz_migrate(body)


def _stream_with_tcp(patch) -> bytes:
    """A real stream of one established TCP connection whose kernel state ``patch`` edits."""
    from passt_py import tcp_repair
    from tests.test_load import tcp_frame
    rig = targets.FrameRig()
    rig.serve_tcp_echo(9)
    try:
        assert rig.tcp is not None
        out = rig.feed([tcp_frame(42000, 0x02, 1000)], 3)
        isn = next(struct.unpack_from("!I", f, 38)[0] for f in out if f[47] & 0x12 == 0x12)
        rig.feed([tcp_frame(42000, 0x10, 1001, isn + 1)], 2)
        real_save = tcp_repair.save
        tcp_repair.save = lambda sock: patch(real_save(sock))
        try:
            src = migrate.Source(targets.migrate_context(rig))
            src.pre()
            data = b"".join(src.sections())
            src.rollback()
        finally:
            tcp_repair.save = real_save
        return data[:-(migrate.SECTION.size + migrate.DIGEST_LEN)]
    finally:
        rig.close()


def test_tcp_record_with_one_sided_window_scaling_is_refused(ns):
    """snd_wscale 7 with rcv_wscale -1 is refused (or that connection alone fails)."""
    body = _stream_with_tcp(lambda ks: dataclasses.replace(ks, snd_wscale=7, rcv_wscale=-1))
    targets.fuzz_migrate(body)


def test_tcp_record_with_port_out_of_range_is_refused(ns):
    """A TCP record whose guest-side port is 70000 does not get past validation or adopt."""
    import passt_py.tcp as tcp_mod
    real_export = tcp_mod.TcpHandler.export
    tcp_mod.TcpHandler.export = lambda self, flow: dataclasses.replace(
        real_export(self, flow), guest_port=70000)
    try:
        body = _stream_with_tcp(lambda ks: ks)
    finally:
        tcp_mod.TcpHandler.export = real_export
    targets.fuzz_migrate(body)


def test_ping_and_udp_records_with_ids_out_of_range_are_skipped(ns):
    """Ping ids and UDP ports above 65535 (valid u32 in the record codec) are refused per
    flow, not raised out of the load."""
    from passt_py.icmp import PingFlowState
    from passt_py.udp import UdpFlowState
    import ipaddress
    rig = targets.FrameRig()
    try:
        ping = PingFlowState(guest_addr=targets.GUEST4, guest_id=70000, dest=targets.GW4,
                             host_addr=ipaddress.IPv4Address("127.0.0.1"), host_id=70000)
        udp = UdpFlowState(forwarded=False, guest_addr=targets.GUEST4, guest_port=70000,
                           our_addr=targets.GW4, our_port=9,
                           host_addr=ipaddress.IPv4Address("127.0.0.1"), host_port=9,
                           local_addr=ipaddress.IPv4Address("0.0.0.0"), local_port=0,
                           bidir=False)
        with pytest.raises(ValueError):
            rig.icmp.adopt(ping)
        with pytest.raises(ValueError):
            rig.udp.adopt(udp)
        assert len(rig.flows) == 0
    finally:
        rig.close()
