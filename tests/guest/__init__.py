# SPDX-License-Identifier: MIT
"""Real-guest test harness: a tiny Linux guest (Debian cloud kernel + busybox initramfs) booted
under QEMU against a vhost-user back-end, driven through a command agent on its second serial
port and through QMP.

Modules:
- ``image``: builds and caches the kernel + initramfs (``python -m tests.guest.image``).
- ``qemu``: starts and stops ``qemu-system-x86_64`` with the vhost-user net device.
- ``agent``: client for the guest's serial command agent.
- ``qmp``: minimal QMP client (commands, events) for migration tests.
- ``boot``: ``boot_guest()``, one context manager tying back-end, QEMU and agent together.
- ``real_passt``: finds or fetches the real passt, the known-good comparison back-end.
"""
