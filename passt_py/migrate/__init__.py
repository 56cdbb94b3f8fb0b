# SPDX-License-Identifier: MIT
"""Migration: the device-state stream, its record codec and TCP repair.

Compatibility rule: this back-end reads stream versions 1 (passt-py 0.1.0, records with field
names) and 2 (records with numeric field ids), and writes 2 unless asked for 1
(``Source(version=1)``, to move back to 0.1.0). A released version never changes: any change
to a section or to a record schema (pinned in tests/test_migrate_schema.py) gets a new
version number in passt_py.migrate.versions, and every released version stays readable
(tests/compat holds streams written by 0.1.0).

Modules: codec (wire constants, limits, section cursor), context (what migration works on),
section (Section, the version table), versions (the table and the layout of each version),
meta (META and GUEST sections), source, target, transfer (the fd pump on the loop), record,
repair. The protocol sections live with their protocols: passt_py.tcp.migration,
passt_py.udp.migration.
"""
