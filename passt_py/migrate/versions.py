# SPDX-License-Identifier: MIT
"""The version table: which stream versions exist, which one is written, what each holds.

:data:`LAYOUT` fixes which sections each version holds, in which order; :data:`VERSIONS`
starts with migrate's own sections (META, GUEST) and each protocol registers its own when
its package is imported (passt_py.tcp, passt_py.udp). The source writes
:data:`VERSION` unless asked for an older one; the target reads every version in the table.
"""
from __future__ import annotations

from passt_py.migrate.codec import SEC_GUEST, SEC_META, SEC_PING, SEC_TCP, SEC_UDP
from passt_py.migrate.meta import GUEST, META
from passt_py.migrate.section import Section, VersionTable

#: Version 2: flow records carry numeric field ids (passt_py.migrate.record); version 1
#: (passt-py 0.1.0) carried field names. Both are read; both can be written (Source).
VERSION = 2
COMPAT_VERSION = 2

#: Per version released, its sections in stream order: never changed once released.
LAYOUT: dict[int, tuple[int, ...]] = {
    1: (SEC_META, SEC_GUEST, SEC_PING, SEC_UDP, SEC_TCP),
    2: (SEC_META, SEC_GUEST, SEC_PING, SEC_UDP, SEC_TCP),
}

#: Versions this back-end reads, oldest first: iterate for (version, ordered sections).
VERSIONS = VersionTable(LAYOUT, (META, GUEST))


def register(section: Section) -> None:
    """Add a protocol's section to the table (see passt_py.migrate.section)."""
    VERSIONS.register(section)


def choose_version(version: int, compat: int) -> tuple[int, tuple[Section, ...]] | None:
    """The newest version we know within [compat, version]."""
    return VERSIONS.choose(version, compat)
