# SPDX-License-Identifier: MIT
"""TCP: the connection handler, its segment codec and its two data paths."""
