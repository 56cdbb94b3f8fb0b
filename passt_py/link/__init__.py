# SPDX-License-Identifier: MIT
"""Link services: the guest's Ethernet view, ARP, NDP, DHCP, DHCPv6 and forwarding rules."""
