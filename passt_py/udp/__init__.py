# SPDX-License-Identifier: MIT
"""Datagram flows: UDP and ICMP echo, bound to host sockets."""
