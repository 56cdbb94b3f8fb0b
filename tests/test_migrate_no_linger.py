# SPDX-License-Identifier: MIT
"""--migrate-no-linger: the source closes its migrated TCP sockets as soon as it is done.

By default a source keeps the migrated sockets frozen in repair mode, holding their
address/port pairs (a target on the same host then cannot rebuild them); with
--migrate-no-linger the source closes them at once, still in repair mode, so their peers hear
nothing, and a target on the same host can take the connections over.
"""
from __future__ import annotations

import socket

import pytest
from tcp_peer import GuestPeer, TcpEnv

from passt_py.migrate import repair as tcp_repair
from passt_py.migrate.context import MigrationContext
from passt_py.migrate.source import Source
from passt_py.migrate.target import load_bytes
from passt_py.udp import migration as _udp_sections  # noqa: F401 - the stream needs them

pytestmark = pytest.mark.skipif(not tcp_repair.direct_repair_allowed(),
                                reason="TCP_REPAIR needs CAP_NET_ADMIN")


def _ctx(env: TcpEnv, no_linger: bool) -> MigrationContext:
    """A migration context over ``env`` (never --migrate-exit)."""
    return MigrationContext(loop=env.loop, view=env.view, guest=env.guest, flows=env.flows,
                            tcp=env.tcp, repair=tcp_repair.RepairControl(),
                            migrate_no_linger=no_linger)


def _connected(env: TcpEnv, gport: int) -> tuple[GuestPeer, socket.socket]:
    """A guest connection to a loopback listener: (guest end, host end)."""
    return env.guest_connection(4, gport)


def _hand_over(env: TcpEnv, no_linger: bool) -> bytes:
    """Source pre, save and post on ``env``; the stream."""
    source = Source(_ctx(env, no_linger))
    source.pre()
    stream = b"".join(source.sections())
    source.post()
    return stream


@pytest.mark.parametrize("no_linger", [False, True])
def test_source_closes_its_sockets_only_with_no_linger(no_linger: bool) -> None:
    """After the hand-over the source holds the connection (default) or nothing (with
    --migrate-no-linger); either way the peer hears neither a FIN nor an RST."""
    src = TcpEnv()
    try:
        _peer, host = _connected(src, 41101)
        _hand_over(src, no_linger)
        src.pump(lambda: False, 0.2)
        with pytest.raises(BlockingIOError):
            host.recv(10)                               # neither EOF nor reset
        assert len(src.flows) == (0 if no_linger else 1)
        host.close()
    finally:
        src.close()


@pytest.mark.parametrize("no_linger", [False, True])
def test_target_on_the_same_host_takes_over_only_with_no_linger(no_linger: bool) -> None:
    """A target on the same host rebuilds the connection when the source did not linger
    (without the option the source still holds the 4-tuple and the rebuild fails)."""
    src, dst = TcpEnv(), TcpEnv()
    try:
        peer, host = _connected(src, 41102)
        stream = _hand_over(src, no_linger)
        for key, p in list(src.peers.items()):
            p.env = dst
            dst.peers[key] = p
        src.peers.clear()
        report = load_bytes(_ctx(dst, False), stream)
        if not no_linger:
            assert (report.tcp, report.failed) == (0, 1)
            return
        assert (report.tcp, report.failed) == (1, 0)
        host.sendall(b"after the move")
        assert dst.pump(lambda: peer.data == b"after the move", 10), peer.data
        host.close()
    finally:
        src.close()
        dst.close()
