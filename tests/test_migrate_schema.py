# SPDX-License-Identifier: MIT
"""The migration wire schemas are pinned per stream version.

A record schema (a state class's ``WIRE``: field ids, version-1 names, annotated types) is part
of the stream format. Changing one without a new stream version would let two releases that
both claim the same version disagree about the bytes. This pins a digest of every schema for
the versions the code writes: a change makes this fail until the version is bumped (and the
old version kept readable, see passt_py.migrate's compatibility rule) and the new digests are
added here.
"""
from __future__ import annotations

import dataclasses

import pytest

from passt_py.migrate import record as migrate_record
from passt_py.migrate.versions import VERSION, VERSIONS
from passt_py.tcp.handler import TcpState
from passt_py.udp.handler import UdpFlowState
from passt_py.udp.icmp import PingFlowState

#: Per stream version, per state class: migrate_record.schema_digest(). Version 1 records
#: are the same schemas written with names instead of ids.
PINNED = {
    1: {"TcpState": "1aa4f096b551e203", "UdpFlowState": "a2a179cbf607565c",
        "PingFlowState": "1f42b6b260992e96"},
    2: {"TcpState": "1aa4f096b551e203", "UdpFlowState": "a2a179cbf607565c",
        "PingFlowState": "1f42b6b260992e96"},
}
STATES = (TcpState, UdpFlowState, PingFlowState)


def test_every_version_the_code_reads_is_pinned() -> None:
    """Each version in the table has its pinned schemas, the newest being the one written."""
    assert sorted(PINNED) == sorted(v for v, _ in VERSIONS)
    assert VERSION == max(PINNED)


@pytest.mark.parametrize("cls", STATES, ids=lambda c: c.__name__)
def test_the_schema_written_now_is_the_one_pinned_for_this_version(cls: type) -> None:
    """Change a migrated state class's fields or their wire ids: bump versions.VERSION."""
    assert migrate_record.schema_digest(cls) == PINNED[VERSION][cls.__name__], \
        f"{cls.__name__}'s wire schema changed: bump versions.VERSION and pin the new digest"


@pytest.mark.parametrize("cls", STATES, ids=lambda c: c.__name__)
def test_every_field_has_a_wire_id(cls: type) -> None:
    """A field without an id would silently stay behind in a migration."""
    wire = migrate_record.schema(cls)
    assert {f.attribute for f in wire} == {f.name for f in dataclasses.fields(cls)}


def test_a_schema_that_misses_a_field_is_refused() -> None:
    """The check behind the one above fails loudly (not on the first migration)."""
    @dataclasses.dataclass
    class Half:
        a: int
        b: int
        WIRE = (migrate_record.WireField(1, "a"),)

    with pytest.raises(TypeError, match="does not match"):
        migrate_record.schema(Half)

    @dataclasses.dataclass
    class Reused:
        a: int
        b: int
        WIRE = (migrate_record.WireField(1, "a"), migrate_record.WireField(1, "b"))

    with pytest.raises(TypeError, match="unique"):
        migrate_record.schema(Reused)
