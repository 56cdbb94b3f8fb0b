# SPDX-License-Identifier: MIT
"""Pure-Python references of the C core's functions: slow, obvious, and the tests' oracle."""
