#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Debian packages the test suite needs: QEMU >= 10 (device-state migration for
# vhost-user net), iproute2, and tools the guest image builder uses. Debian 12 takes QEMU from
# bookworm-backports (never trixie: it would replace libc); Debian 13 has it in main.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
major=$(cut -d. -f1 /etc/debian_version)
target=()
if [ "$major" = "12" ]; then
    src=/etc/apt/sources.list.d/debian.sources
    uri=$(awk '/^URIs:/ {print $2; exit}' "$src" 2>/dev/null || true)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat > /etc/apt/sources.list.d/bookworm-backports.sources <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    target=(-t bookworm-backports)
fi
# Third-party sources on the machine may be unreachable; Debian's own must not be.
apt-get update -q || true
apt-get install -y -q --no-install-recommends "${target[@]}" qemu-system-x86
apt-get install -y -q --no-install-recommends iproute2 kmod xz-utils cpio ethtool procps iperf3
qemu-system-x86_64 --version
