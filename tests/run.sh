#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Sets up everything the test suite needs on a fresh Debian 12/13 machine and runs it:
# system packages (QEMU >= 10 and friends, when run as root and missing), a virtualenv in
# .venv with passt-py installed editable plus its test extra, then pytest with any arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

need_system=0
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    need_system=1
elif ! qemu-system-x86_64 --version | awk 'NR==1 {split($4, v, "."); exit !(v[1] >= 10)}'; then
    need_system=1
fi
# Everything .ci/install-system.sh provides: one missing tool means install them all.
for tool in ip depmod modprobe xz cpio ethtool ps iperf3; do
    command -v "$tool" >/dev/null 2>&1 || need_system=1
done
if [ "$need_system" = 1 ]; then
    if [ "$(id -u)" = 0 ]; then
        bash .ci/install-system.sh
    else
        echo "run as root once (or run .ci/install-system.sh as root) to install QEMU >= 10" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
