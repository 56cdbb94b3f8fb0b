# SPDX-License-Identifier: MIT
"""Finds the real passt (with vhost-user) to use as a known-good comparison back-end.

Order: a ``passt`` on PATH whose ``--help`` mentions ``--vhost-user``; else Debian 13's ``passt``
package, fetched with a private apt state (its own lists, cache and a sources file naming the
trixie suite of the mirror this machine already uses) and extracted together with Debian 13's
``libc6`` into a cache directory. The system's apt sources and packages are never touched. The
extracted binary runs through the extracted loader; ``passt.avx2`` is run directly because passt's
re-exec of its AVX2 variant does not work under an explicit loader.

passt is a peer for comparison, not the product: callers skip (never fail) when it is missing.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

PEER_SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MULTIARCH = "x86_64-linux-gnu"


class RealPasstError(RuntimeError):
    """The real passt could not be found or fetched."""


def cache_dir() -> Path:
    """Where the extracted passt lives: $PASST_PY_PEER_CACHE or tests/.cache/real-passt."""
    env = os.environ.get("PASST_PY_PEER_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".cache" / "real-passt"


def _has_vhost_user(cmd: list[str]) -> bool:
    """True if `cmd --help` documents --vhost-user."""
    try:
        res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--vhost-user" in (res.stdout + res.stderr)


def system_mirror() -> str:
    """The Debian mirror URI the machine's own sources use (deb822 or one-line format)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        m = re.search(r"^URIs:\s*(\S+)", deb822.read_text(), re.M)
        if m and "security" not in m.group(1):
            return m.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    return DEFAULT_MIRROR


def _apt_options(base: Path) -> list[str]:
    """apt options confining state, cache and sources to `base`."""
    return [
        "-o", f"Dir::State={base / 'state'}",
        "-o", f"Dir::State::Lists={base / 'state' / 'lists'}",
        "-o", "Dir::State::status=/dev/null",
        "-o", f"Dir::Cache={base / 'cache'}",
        "-o", f"Dir::Etc::SourceList={base / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", "Dir::Etc::Preferences=/dev/null",
        "-o", "Dir::Etc::PreferencesParts=/dev/null",
        # As root apt would drop to _apt, which may not be able to write into `base`.
        *(["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []),
    ]


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 300) -> None:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RealPasstError(f"{' '.join(cmd[:3])}...: {e}") from e
    if res.returncode != 0:
        raise RealPasstError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")


def fetch(base: Path | None = None) -> Path:
    """Downloads and extracts Debian 13's passt + libc6 (once); returns the extraction root."""
    base = base or cache_dir()
    root = base / "root"
    done = base / ".complete"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return root
        for d in ("state/lists/partial", "cache/archives/partial", "debs"):
            (base / d).mkdir(parents=True, exist_ok=True)
        signed = f" [signed-by={KEYRING}]" if Path(KEYRING).exists() else ""
        (base / "sources.list").write_text(
            f"deb{signed} {system_mirror()} {PEER_SUITE} main\n")
        opts = _apt_options(base)
        _run(["apt-get", *opts, "-q", "update"])
        debs = base / "debs"
        for old in debs.glob("*.deb"):
            old.unlink()
        _run(["apt-get", *opts, "download", "passt", "libc6"], cwd=debs)
        if root.exists():
            shutil.rmtree(root)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)])
        if not (root / "usr" / "bin" / "passt").exists():
            raise RealPasstError("extracted passt package has no usr/bin/passt")
        done.write_text("ok\n")
    return root


def _loader_wrap(root: Path, binary: Path) -> list[str]:
    """Command prefix running an extracted binary with the extracted libc."""
    libdir = root / "usr" / "lib" / MULTIARCH
    return [str(libdir / "ld-linux-x86-64.so.2"), "--library-path", str(libdir), str(binary)]


def _cpu_has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def real_passt_command(allow_download: bool = True) -> list[str] | None:
    """argv prefix that runs a vhost-user capable passt, or None if none can be had."""
    on_path = shutil.which("passt")
    if on_path and _has_vhost_user([on_path]):
        return [on_path]
    try:
        root = fetch() if allow_download else cache_dir() / "root"
    except RealPasstError:
        return None
    bindir = root / "usr" / "bin"
    binary = bindir / "passt.avx2" if _cpu_has_avx2() and (bindir / "passt.avx2").exists() \
        else bindir / "passt"
    if not binary.exists():
        return None
    cmd = _loader_wrap(root, binary)
    return cmd if _has_vhost_user(cmd) else None


def real_passt_repair_command(allow_download: bool = True) -> list[str] | None:
    """argv prefix for passt-repair from the same source as real_passt_command(), or None."""
    on_path = shutil.which("passt")
    if on_path and _has_vhost_user([on_path]):
        repair = shutil.which("passt-repair")
        return [repair] if repair else None
    try:
        root = fetch() if allow_download else cache_dir() / "root"
    except RealPasstError:
        return None
    binary = root / "usr" / "bin" / "passt-repair"
    return _loader_wrap(root, binary) if binary.exists() else None


if __name__ == "__main__":
    cmd = real_passt_command()
    print(cmd if cmd else "no vhost-user capable passt available")
    print(real_passt_repair_command())
    sys.exit(0 if cmd else 1)
