# SPDX-License-Identifier: MIT
"""TCP: the connection handler, its segment codec and its two data paths.

Importing the package registers TCP's migration section (passt_py.tcp.migration) in the
stream's version table: wherever TCP connections exist, they can migrate.
"""
from passt_py.tcp import migration  # registers the TCP section

__all__ = ["migration"]
