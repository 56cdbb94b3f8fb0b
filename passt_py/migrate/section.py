# SPDX-License-Identifier: MIT
"""Sections and the version table: who writes, parses and applies each part of a stream.

A :class:`Section` belongs to the code whose state it carries: META and GUEST to
passt_py.migrate.meta, PING and UDP to passt_py.udp.migration, TCP to passt_py.tcp.migration.
Each owner registers its sections in the one :class:`VersionTable`
(passt_py.migrate.versions.VERSIONS), whose layout fixes which section ids each stream version
holds and in which order. The table gives, per version, those sections: the source writes
exactly that list and the target expects exactly that list, so writer and reader cannot
disagree on content or order; a section not registered is an error, never a shorter stream.

A section's source-side work beyond writing (stopping its protocol's host side before the
save, records of its flows, what to do once the state went out, a rollback) is a
:class:`SourceShare`, created by the section for each migration; its target-side work after
the apply (once the guest link is up, or when the guest went away first) is its ``activate``
and ``discard``.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Iterator

from passt_py.flow import Flow
from passt_py.migrate.codec import Reader
from passt_py.migrate.context import Loaded, MigrationContext, Report, Saved


class SourceShare:
    """One protocol's part of a source migration; the defaults do nothing."""

    def pre(self) -> None:
        """Stop this protocol's host side and take what it migrates out of play."""

    def records(self, version: int) -> list[bytes]:
        """Every flow's record, encoded (and framed as the section wants) for ``version``."""
        return []

    def post(self) -> None:
        """The state went out: stay quiet (or close quietly with --migrate-exit)."""

    def rollback(self) -> int:
        """Serve the guest here again; the number of flows re-created."""
        return 0

    def frozen(self) -> list[tuple[Flow, socket.socket]]:
        """Connections held frozen (in repair mode) for the transfer."""
        return []


@dataclass(frozen=True)
class Section:
    """One section: its wire id, and how it is written and read."""

    name: str
    id: int
    optional: bool
    save: Callable[[MigrationContext, Saved], list[bytes]]
    parse: Callable[[MigrationContext, Reader, Loaded], None]
    apply: Callable[[MigrationContext, Loaded, Report], None] | None = None
    #: Source: this section's share of the work around the save (see SourceShare).
    source: Callable[[MigrationContext, Report], SourceShare] | None = None
    #: Target, once the guest link is up: hand over what apply rebuilt.
    activate: Callable[[MigrationContext, Report], None] | None = None
    #: Target, the guest went away before activate: let go of what apply rebuilt.
    discard: Callable[[MigrationContext, Report], None] | None = None


class VersionTable:
    """The stream versions this back-end reads and writes: per version the section ids in
    stream order (fixed once released), and the sections their owners registered."""

    def __init__(self, layout: dict[int, tuple[int, ...]],
                 sections: tuple[Section, ...] = ()) -> None:
        self._layout = dict(layout)
        self._sections: dict[int, Section] = {}
        for section in sections:
            self.register(section)

    def register(self, section: Section) -> None:
        """Add an owner's section; an id taken or in no version is a programming error."""
        other = self._sections.get(section.id)
        if other is not None:
            raise ValueError(f"migration section {section.name} (0x{section.id:04x}) "
                             f"clashes with {other.name}")
        if not any(section.id in ids for ids in self._layout.values()):
            raise ValueError(f"migration section {section.name} (0x{section.id:04x}) is in "
                             "no stream version")
        self._sections[section.id] = section

    def sections(self) -> tuple[Section, ...]:
        """Every registered section, in id order."""
        return tuple(self._sections[i] for i in sorted(self._sections))

    def versions(self) -> list[int]:
        """Every version in the table, oldest first."""
        return sorted(self._layout)

    def stages(self, version: int) -> tuple[Section, ...]:
        """The sections of ``version``, in stream order; all must be registered (a stream
        without one would be another format under the same version number)."""
        out = []
        for sid in self._layout[version]:
            section = self._sections.get(sid)
            if section is None:
                raise LookupError(f"migration section 0x{sid:04x} of stream version "
                                  f"{version} is not registered: its protocol package "
                                  "was not imported")
            out.append(section)
        return tuple(out)

    def __iter__(self) -> Iterator[tuple[int, tuple[Section, ...]]]:
        """(version, ordered sections), oldest version first."""
        return iter([(v, self.stages(v)) for v in self.versions()])

    def choose(self, version: int, compat: int) -> tuple[int, tuple[Section, ...]] | None:
        """The newest version we know within [compat, version] (a bounded walk)."""
        best = None
        for v in self.versions():
            if compat <= v <= version:
                best = v
        return None if best is None else (best, self.stages(best))
