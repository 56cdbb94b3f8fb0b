# SPDX-License-Identifier: MIT
"""passt_py: a user-mode network back-end for QEMU guests, speaking vhost-user."""

__version__ = "0.1.0"
