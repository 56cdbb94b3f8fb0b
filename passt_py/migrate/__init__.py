# SPDX-License-Identifier: MIT
"""Migration: the device-state stream, its record codec and TCP repair."""
