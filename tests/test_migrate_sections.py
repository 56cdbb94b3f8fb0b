# SPDX-License-Identifier: MIT
"""The version table: each released version's sections, owned by their protocols.

The sections live with their owners (passt_py.migrate.meta, passt_py.udp.migration,
passt_py.tcp.migration) and register in one table; the layout of a released version must not
change, and a table missing a section must refuse to write or read that version rather than
produce a shorter stream under the same number.
"""
from __future__ import annotations

import pytest

from passt_py.migrate import meta
from passt_py.migrate.codec import SEC_GUEST, SEC_META, SEC_PING, SEC_TCP, SEC_UDP
from passt_py.migrate.section import Section, VersionTable
from passt_py.migrate.versions import VERSIONS
from passt_py.tcp import migration as tcp_migration
from passt_py.udp import migration as udp_migration


def test_released_versions_hold_the_same_sections_in_the_same_order() -> None:
    """Versions 1 and 2: META, GUEST, PING, UDP, TCP; only PING and UDP optional."""
    for version, stages in VERSIONS:
        assert [(s.name, s.id, s.optional) for s in stages] == [
            ("meta", SEC_META, False), ("guest", SEC_GUEST, False), ("ping", SEC_PING, True),
            ("udp", SEC_UDP, True), ("tcp", SEC_TCP, False)], version
    assert VERSIONS.versions() == [1, 2]


def test_each_section_is_the_one_its_owner_defines() -> None:
    """The table holds the protocol modules' own Section objects, not copies."""
    assert VERSIONS.stages(2) == (meta.META, meta.GUEST, udp_migration.PING,
                                  udp_migration.UDP, tcp_migration.TCP)
    assert tcp_migration.TCP.source is tcp_migration.TcpSource
    assert tcp_migration.TCP.activate is tcp_migration.activate


def test_a_version_with_an_unregistered_section_is_refused() -> None:
    """Without TCP's section, version 1 can be neither written nor read."""
    table = VersionTable({1: (SEC_META, SEC_GUEST, SEC_TCP)}, (meta.META, meta.GUEST))
    with pytest.raises(LookupError, match="0x0005"):
        table.stages(1)
    with pytest.raises(LookupError, match="not registered"):
        table.choose(1, 1)
    table.register(tcp_migration.TCP)
    assert table.choose(1, 1) == (1, (meta.META, meta.GUEST, tcp_migration.TCP))


def test_a_section_id_cannot_be_taken_twice_or_be_in_no_version() -> None:
    """Two owners of one id, or a section no version holds, fail at registration."""
    table = VersionTable({1: (SEC_META, SEC_GUEST)}, (meta.META,))
    clash = Section("other", SEC_META, False, meta.META.save, meta.META.parse)
    with pytest.raises(ValueError, match="clashes with meta"):
        table.register(clash)
    stray = Section("stray", 0x0100, True, meta.META.save, meta.META.parse)
    with pytest.raises(ValueError, match="no stream version"):
        table.register(stray)
