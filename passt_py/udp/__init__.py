# SPDX-License-Identifier: MIT
"""Datagram flows: UDP and ICMP echo, bound to host sockets.

Importing the package registers the PING and UDP migration sections
(passt_py.udp.migration) in the stream's version table.
"""
from passt_py.udp import migration  # registers the PING and UDP sections

__all__ = ["migration"]
