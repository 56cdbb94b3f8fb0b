# SPDX-License-Identifier: MIT
"""Builds the test guest: a Debian cloud kernel and a busybox initramfs, cached by input hash.

Why this shape: a full distribution image would take minutes to boot under TCG and needs a disk;
a kernel + initramfs boots to a shell in a few seconds and is assembled from Debian packages that
are only downloaded and extracted (``apt-get download`` + ``dpkg-deb -x``), never installed on the
host. The initramfs holds busybox, the virtio-net modules with their dependencies, iperf3 and socat
with their shared-library closure, and an ``/init`` that brings the network up and then serves a
command agent on the second serial port (see ``agent.py`` for the wire format).

The cache key is a hash of this file's text and the exact package versions apt would fetch, so a
kernel update or an edit of the guest scripts rebuilds (and drops older builds), and everything
else reuses the last build.
The cache lives under ``tests/.cache/guest/`` or ``$PASST_PY_GUEST_CACHE``; a file lock makes
concurrent test runs share one build.

Run ``python -m tests.guest.image`` to build (or find) the image and print its paths.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Kernel-command-line flag that makes /init start udhcpc on eth0.
DHCP_FLAG = "passt_test.dhcp=1"

# Marker lines of the serial agent (kept here because /init and agent.py must agree).
READY_LINE = "@@READY"
BEGIN_PREFIX = "@@BEGIN"
END_PREFIX = "@@END"

# Extra user-space packages for throughput tests; each entry lists alternatives, first available
# wins (Debian 13 renamed libssl3 for the 64-bit time_t transition).
EXTRA_PACKAGES: list[tuple[str, ...]] = [
    ("busybox-static",),
    ("iperf3",),
    ("libiperf0",),
    ("libsctp1",),
    ("libssl3t64", "libssl3"),
    ("socat",),
    ("libwrap0",),
    # libwrap0's own closure, so a minimal host needs none of them installed.
    ("libnsl2",),
    ("libtirpc3t64", "libtirpc3"),
    ("libgssapi-krb5-2",),
    ("libkrb5-3",),
    ("libk5crypto3",),
    ("libcom-err2",),
    ("libkrb5support0",),
    ("libkeyutils1",),
]
# Binaries copied into the guest together with their ldd closure.
EXTRA_BINARIES = ("usr/bin/iperf3", "usr/bin/socat")
GUEST_MODULES = ("virtio_pci", "virtio_net")
MULTIARCH = "x86_64-linux-gnu"

INIT_SCRIPT = r"""#!/bin/busybox sh
# /init of the passt_py test guest: mount, load modules, network up, then serve the agent.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /etc
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
echo "passt-test-guest" > /proc/sys/kernel/hostname
echo 1 > /proc/sys/net/ipv6/conf/default/accept_ra
echo 1 > /proc/sys/net/ipv6/conf/default/autoconf
echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "init: insmod $m failed"
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e /sys/class/net/eth0 ]; then
    echo 1 > /proc/sys/net/ipv6/conf/eth0/accept_ra
    echo 1 > /proc/sys/net/ipv6/conf/eth0/autoconf
    ip link set eth0 up
    case " $(cat /proc/cmdline) " in
    *" passt_test.dhcp=1 "*)
        udhcpc -f -i eth0 -O mtu -s /udhcpc.sh -t 60 -T 1 -A 1 > /run/udhcpc.log 2>&1 &
        ;;
    esac
else
    echo "init: no eth0"
fi
echo "init: up after $(cut -d' ' -f1 /proc/uptime)s"
stty -F /dev/ttyS1 raw -echo -echoe -echok -echoctl -echoke 2>/dev/null
while true; do
    /bin/sh /agent.sh < /dev/ttyS1 > /dev/ttyS1 2>&1
    sleep 1
done
"""

AGENT_SCRIPT = r"""#!/bin/sh
# Serial command agent. Request line: "<id> <timeout_s> <base64 of shell script>".
# Reply: "@@BEGIN <id>", base64 of combined stdout+stderr, "@@END <id> <rc>".
# An empty line is a ping, answered with "@@READY" (the host may connect after the first one).
echo "@@READY"
while read -r id tmo b64; do
    if [ -z "$id" ]; then echo "@@READY"; continue; fi
    case "$tmo" in ''|*[!0-9]*) echo "@@END $id 254"; continue;; esac
    echo "$b64" | base64 -d > /tmp/.agent_cmd 2>/dev/null || { echo "@@END $id 253"; continue; }
    timeout -s KILL "$tmo" sh /tmp/.agent_cmd < /dev/null > /tmp/.agent_out 2>&1
    rc=$?
    echo "@@BEGIN $id"
    base64 < /tmp/.agent_out
    echo "@@END $id $rc"
done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc hook: apply address, router, MTU (option 26) and DNS; record the lease for tests.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    {
        echo "ip=$ip"
        echo "subnet=$subnet"
        echo "router=$router"
        echo "mtu=$mtu"
        echo "dns=$dns"
        echo "serverid=$serverid"
        echo "lease=$lease"
        echo "uptime=$(cut -d' ' -f1 /proc/uptime)"
    } > /run/dhcp.lease.tmp
    mv /run/dhcp.lease.tmp /run/dhcp.lease
    ;;
esac
exit 0
"""


class ImageError(RuntimeError):
    """The guest image could not be built (missing tool, package or module)."""


@dataclass(frozen=True)
class GuestImage:
    """Paths of a built guest and what went into it."""

    kernel: Path
    initrd: Path
    kernel_version: str
    manifest: dict

    @property
    def directory(self) -> Path:
        """Cache directory of this build."""
        return self.kernel.parent


def default_cache_root() -> Path:
    """Cache root: $PASST_PY_GUEST_CACHE or tests/.cache/guest (ignored by git)."""
    env = os.environ.get("PASST_PY_GUEST_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".cache" / "guest"


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None,
         timeout: float = 300) -> str:
    """Runs a build step; a failure carries the command's own output."""
    try:
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except FileNotFoundError as e:
        raise ImageError(f"missing tool {cmd[0]!r}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"timed out after {timeout}s: {' '.join(cmd)}") from e
    if res.returncode != 0:
        raise ImageError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout


def _candidate_versions(names: list[str]) -> dict[str, str]:
    """Versions apt would download, in one apt-cache call; names apt cannot fetch are absent."""
    try:
        out = subprocess.run(["apt-cache", "policy", *names], capture_output=True, text=True,
                             timeout=60).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^(\S+):$", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"^\s+Candidate:\s*(\S+)", line)
        if m and current and m.group(1) != "(none)":
            found[current] = m.group(1)
    return found


def _kernel_package() -> str:
    """The versioned kernel package linux-image-cloud-amd64 currently points at."""
    out = _run(["apt-cache", "depends", "linux-image-cloud-amd64"], timeout=60)
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise ImageError("linux-image-cloud-amd64 has no linux-image-* dependency")


def resolve_packages() -> dict[str, str]:
    """Maps each package to download to its candidate version (the inputs of the cache key)."""
    pkgs: dict[str, str] = {}
    try:
        kernel = _kernel_package()
    except ImageError:
        # A fresh machine may have no package lists yet; refresh once (root only) and retry.
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-q"], timeout=300)
        kernel = _kernel_package()
    versions = _candidate_versions([kernel, *(n for alts in EXTRA_PACKAGES for n in alts)])
    if kernel not in versions:
        raise ImageError(f"no candidate version for {kernel}")
    pkgs[kernel] = versions[kernel]
    for alternatives in EXTRA_PACKAGES:
        for name in alternatives:
            ver = versions.get(name)
            if ver is not None:
                pkgs[name] = ver
                break
        else:
            if alternatives[0] == "busybox-static":
                raise ImageError("busybox-static is not available from apt")
            # Optional helpers (e.g. libwrap0 gone from a newer release): ldd decides later.
    return pkgs


def _host_libc_version() -> str:
    """Host libc6 version: its libraries may fill gaps in the guest's ldd closure."""
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libc6"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "unknown"


def cache_key(pkgs: dict[str, str]) -> str:
    """Hash of everything that determines the image's content."""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps(sorted(pkgs.items())).encode())
    h.update(_host_libc_version().encode())
    return h.hexdigest()[:16]


def _download(pkgs: dict[str, str], dest: Path) -> list[Path]:
    """apt-get download of exact versions; one apt-get update only if lists are stale."""
    specs = [f"{name}={ver}" for name, ver in pkgs.items()]
    try:
        _run(["apt-get", "download", *specs], cwd=dest)
    except ImageError as first:
        if os.geteuid() != 0:
            raise
        try:
            _run(["apt-get", "update", "-q"], timeout=300)
        except ImageError:
            pass  # a broken third-party source must not stop a retry
        # Versions may have moved with the fresh lists.
        latest = _candidate_versions(list(pkgs))
        fresh = {n: latest.get(n, v) for n, v in pkgs.items()}
        try:
            _run(["apt-get", "download", *[f"{n}={v}" for n, v in fresh.items()]], cwd=dest)
        except ImageError as second:
            raise ImageError(f"apt-get download failed:\n{first}\n{second}") from second
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != len(pkgs):
        raise ImageError(f"expected {len(pkgs)} .deb files, got {[d.name for d in debs]}")
    return debs


def _find_modules_dir(root: Path) -> tuple[Path, str]:
    """Locates lib/modules/VERSION in an extracted kernel package (usr/ merged or not)."""
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if base.is_dir():
            versions = [p for p in base.iterdir() if p.is_dir()]
            if len(versions) == 1:
                return versions[0], versions[0].name
    raise ImageError(f"no single lib/modules/VERSION in {root}")


def _prepare_modules(kroot: Path, work: Path) -> tuple[str, Path, list[Path]]:
    """Decompresses modules, runs depmod and returns the ordered .ko files virtio-net needs."""
    src, version = _find_modules_dir(kroot)
    moddir = work / "modroot"
    dst = moddir / "lib" / "modules" / version
    dst.parent.mkdir(parents=True)
    shutil.copytree(src, dst, symlinks=True)
    # busybox insmod reads plain ELF only; depmod must see the names it will be given.
    for xz in list(dst.rglob("*.ko.xz")):
        xz.with_suffix("").write_bytes(lzma.decompress(xz.read_bytes()))
        xz.unlink()
    for gz in list(dst.rglob("*.ko.gz")):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    if list(dst.rglob("*.ko.zst")):
        raise ImageError("zstd-compressed kernel modules are not supported")
    _run(["depmod", "-b", str(moddir), version])
    # One call per module: further arguments to modprobe would be module parameters.
    out = "".join(_run(["modprobe", "-d", str(moddir), "-S", version, "--show-depends", mod])
                  for mod in GUEST_MODULES)
    order: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod":
            path = Path(parts[1])
            if path not in order:
                order.append(path)
        # "builtin NAME" lines need nothing.
    if not any(p.name.startswith("virtio_net") for p in order) and "builtin virtio_net" not in out:
        raise ImageError(f"virtio_net not found for kernel {version}:\n{out}")
    return version, moddir, order


def _ldd_closure(binary: Path, libdirs: list[Path]) -> dict[str, Path]:
    """Maps each needed soname (and the loader) to the file that satisfies it."""
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(d) for d in libdirs))
    out = _run(["ldd", str(binary)], env=env)
    libs: dict[str, Path] = {}
    for line in out.splitlines():
        line = line.strip()
        if "not found" in line:
            raise ImageError(f"{binary.name}: {line}")
        m = re.match(r"(\S+) => (/\S+)", line)
        if m:
            libs[m.group(1)] = Path(m.group(2))
            continue
        m = re.match(r"(/\S*ld-linux\S*)\s", line)
        if m:
            libs["@loader"] = Path(m.group(1))
    if "@loader" not in libs:
        raise ImageError(f"no dynamic loader found by ldd for {binary}")
    return libs


def _write_cpio(root: Path, out: Path) -> None:
    """Packs root as a gzip'd newc cpio archive owned by root."""
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True,
                           check=True, timeout=60).stdout
    with open(out, "wb") as f:
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                                cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        data, err = cpio.communicate(names, timeout=120)
        if cpio.returncode != 0:
            raise ImageError(f"cpio failed: {err.decode(errors='replace')}")
        f.write(gzip.compress(data, compresslevel=6))


def _build(pkgs: dict[str, str], out_dir: Path) -> dict:
    """Assembles kernel + initramfs into out_dir; returns the manifest."""
    with tempfile.TemporaryDirectory(prefix="guest-build-") as tmp:
        work = Path(tmp)
        debdir = work / "debs"
        debdir.mkdir()
        debs = _download(pkgs, debdir)
        kernel_pkg = next(iter(pkgs))
        kroot = work / "kernel"
        uroot = work / "user"
        for deb in debs:
            target = kroot if deb.name.startswith(kernel_pkg + "_") else uroot
            _run(["dpkg-deb", "-x", str(deb), str(target)])
        version, moddir, order = _prepare_modules(kroot, work)
        vmlinuz = next((p for p in (kroot / "boot").glob("vmlinuz-*")), None)
        if vmlinuz is None:
            raise ImageError("kernel package has no boot/vmlinuz-*")

        rd = work / "initramfs"
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
                  "run", "modules", "lib64", f"lib/{MULTIARCH}"):
            (rd / d).mkdir(parents=True, exist_ok=True)
        busybox = uroot / "bin" / "busybox"
        if not busybox.exists():
            busybox = uroot / "usr" / "bin" / "busybox"
        shutil.copy2(busybox, rd / "bin" / "busybox")
        (rd / "bin" / "sh").symlink_to("busybox")

        names = []
        for ko in order:
            shutil.copy2(ko, rd / "modules" / ko.name)
            names.append(ko.name)
        (rd / "modules.order").write_text("\n".join(names) + "\n")

        libdirs = [uroot / "usr" / "lib" / MULTIARCH, uroot / "lib" / MULTIARCH]
        copied: dict[str, str] = {}
        for rel in EXTRA_BINARIES:
            binary = uroot / rel
            if not binary.exists():
                raise ImageError(f"{rel} missing from extracted packages")
            shutil.copy2(binary, rd / "usr" / "bin" / binary.name)
            for soname, path in _ldd_closure(binary, libdirs).items():
                if soname == "@loader":
                    dest = rd / "lib64" / path.name
                else:
                    dest = rd / "lib" / MULTIARCH / soname
                if not dest.exists():
                    shutil.copy2(path.resolve(), dest)
                    copied[dest.name] = str(path)
        loader = next((rd / "lib64").iterdir())
        (rd / "lib" / MULTIARCH / loader.name).symlink_to(f"../../lib64/{loader.name}")

        for name, text in (("init", INIT_SCRIPT), ("agent.sh", AGENT_SCRIPT),
                           ("udhcpc.sh", UDHCPC_SCRIPT)):
            (rd / name).write_text(text)
            (rd / name).chmod(0o755)
        (rd / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        (rd / "etc" / "group").write_text("root:x:0:\n")
        (rd / "etc" / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")

        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(vmlinuz, out_dir / "vmlinuz")
        _write_cpio(rd, out_dir / "initramfs.gz")
        return {"kernel_version": version, "packages": pkgs,
                "modules": names, "libraries": copied}


def build_image(cache_root: Path | None = None, force: bool = False) -> GuestImage:
    """Returns the cached guest image for the current inputs, building it on a miss."""
    root = cache_root or default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    pkgs = resolve_packages()
    key = cache_key(pkgs)
    final = root / key
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest_path = final / "manifest.json"
        if force and final.exists():
            shutil.rmtree(final)
        if not manifest_path.exists():
            start = time.monotonic()
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
            try:
                manifest = _build(pkgs, staging)
                manifest["build_seconds"] = round(time.monotonic() - start, 2)
                (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
                if final.exists():
                    shutil.rmtree(final)
                staging.rename(final)
                # Older builds are dead weight (~20 MiB each) once the inputs changed.
                for other in root.iterdir():
                    if other.is_dir() and not other.name.startswith(".") and other != final:
                        shutil.rmtree(other, ignore_errors=True)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        manifest = json.loads(manifest_path.read_text())
    return GuestImage(kernel=final / "vmlinuz", initrd=final / "initramfs.gz",
                      kernel_version=manifest["kernel_version"], manifest=manifest)


def main(argv: list[str] | None = None) -> int:
    """CLI: build or find the image and print where it is."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--cache", type=Path, help="cache root (default: $PASST_PY_GUEST_CACHE "
                                                "or tests/.cache/guest)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    try:
        img = build_image(args.cache, force=args.force)
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"kernel:  {img.kernel} ({img.kernel_version})")
    print(f"initrd:  {img.initrd} ({img.initrd.stat().st_size / 2**20:.1f} MiB)")
    print(f"elapsed: {time.monotonic() - start:.2f}s (cold build took "
          f"{img.manifest.get('build_seconds')}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
