# SPDX-License-Identifier: MIT
"""Configuration: command line, host addresses and routes, privileges, daemon, logging."""
