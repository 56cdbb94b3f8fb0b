# SPDX-License-Identifier: MIT
"""Starts and stops ``qemu-system-x86_64`` with a vhost-user virtio-net device.

The guest memory is a shared memfd (vhost-user requires the back-end to map it). Two ways a guest
can end up without a working vhost-user device are treated as hard failures: guest RAM that is not
shared (checked through QMP ``query-memdev`` right after start; QEMU itself says nothing), and
QEMU's "falling back on userspace virtio" message on stderr (printed when starting the vhost-user
device fails, e.g. the back-end rejects a request), checked by ``check()``.

Acceleration: KVM only where /dev/kvm is usable for stock kernels (not PVM, which only runs
specially built guests), TCG otherwise. Stopping is by PID: QMP ``quit``, then SIGTERM, then
SIGKILL, each with a bounded wait.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .image import DHCP_FLAG, GuestImage
from .qmp import QMPClient, QMPError

QEMU_BINARY = "qemu-system-x86_64"
FALLBACK_MESSAGE = "falling back on userspace virtio"
DEFAULT_MAC = "52:54:00:12:34:56"


class QemuError(RuntimeError):
    """QEMU could not start, exited early, or fell back to userspace virtio."""


def kvm_usable() -> bool:
    """True when /dev/kvm can run a stock Debian kernel (exists, accessible, and not PVM)."""
    return (os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
            and not os.path.exists("/sys/module/kvm_pvm"))


def accel_args() -> list[str]:
    """QEMU acceleration arguments for this machine."""
    if kvm_usable():
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg", "-cpu", "max"]


def qemu_binary() -> str | None:
    """Path of qemu-system-x86_64, or None."""
    return shutil.which(QEMU_BINARY)


def qemu_version() -> tuple[int, int, int] | None:
    """QEMU's version (e.g. (10, 0, 2)); migration of vhost-user device state needs >= 10."""
    binary = qemu_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _prop_value(value: object) -> str:
    """Renders a -device property value the way QEMU parses it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass
class QemuConfig:
    """Everything that shapes one QEMU instance; the paths live in `workdir`."""

    image: GuestImage
    workdir: Path
    vhost_socket: Path
    netns: str | None = None
    dhcp: bool = True
    mac: str = DEFAULT_MAC
    memory_mb: int = 512
    smp: int = 1
    device_props: dict[str, object] = field(default_factory=dict)  # e.g. {"mrg_rxbuf": False}
    extra_args: list[str] = field(default_factory=list)
    cmdline_extra: str = ""
    incoming: str | None = None  # e.g. "unix:/path", for a migration target
    name: str = "guest"
    # Only for negative tests: without share=on vhost-user cannot work; start() refuses it.
    share_memory: bool = True

    @property
    def console_log(self) -> Path:
        return self.workdir / f"{self.name}.console.log"

    @property
    def agent_socket(self) -> Path:
        return self.workdir / f"{self.name}.agent.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / f"{self.name}.qmp.sock"

    @property
    def stderr_log(self) -> Path:
        return self.workdir / f"{self.name}.qemu.stderr"


def build_argv(cfg: QemuConfig) -> list[str]:
    """The full QEMU command line (wrapped in `ip netns exec` when a namespace is given)."""
    binary = qemu_binary() or QEMU_BINARY
    append = "console=ttyS0 panic=-1 loglevel=4 random.trust_cpu=on"
    if cfg.dhcp:
        append += " " + DHCP_FLAG
    if cfg.cmdline_extra:
        append += " " + cfg.cmdline_extra
    device = f"virtio-net-pci,netdev=n0,mac={cfg.mac}"
    for key, value in cfg.device_props.items():
        device += f",{key}={_prop_value(value)}"
    argv = [
        binary, "-name", cfg.name,
        *accel_args(),
        "-machine", "q35,memory-backend=mem",
        "-object", f"memory-backend-memfd,id=mem,size={cfg.memory_mb}M,"
                   f"share={'on' if cfg.share_memory else 'off'}",
        "-m", f"{cfg.memory_mb}M", "-smp", str(cfg.smp),
        "-chardev", f"socket,id=c0,path={cfg.vhost_socket}",
        "-netdev", "vhost-user,id=n0,chardev=c0",
        "-device", device,
        "-kernel", str(cfg.image.kernel), "-initrd", str(cfg.image.initrd),
        "-append", append,
        "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
        "-serial", f"file:{cfg.console_log}",
        "-serial", f"unix:{cfg.agent_socket},server=on,wait=off",
        "-qmp", f"unix:{cfg.qmp_socket},server=on,wait=off",
    ]
    if cfg.incoming:
        argv += ["-incoming", cfg.incoming]
    argv += cfg.extra_args
    if cfg.netns:
        argv = ["ip", "netns", "exec", cfg.netns, *argv]
    return argv


class QemuProcess:
    """A running QEMU; `start()` returns once QMP answers, `stop()` ends it by PID."""

    def __init__(self, cfg: QemuConfig) -> None:
        self.cfg = cfg
        self.argv = build_argv(cfg)
        self.proc: subprocess.Popen | None = None
        self.qmp: QMPClient | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 20.0) -> None:
        """Launches QEMU and connects QMP; raises QemuError with stderr if it dies first."""
        self.cfg.workdir.mkdir(parents=True, exist_ok=True)
        for p in (self.cfg.agent_socket, self.cfg.qmp_socket):
            p.unlink(missing_ok=True)
        (self.cfg.workdir / f"{self.cfg.name}.argv").write_text(shlex.join(self.argv) + "\n")
        err = open(self.cfg.stderr_log, "wb")
        try:
            self.started_at = time.monotonic()
            # `ip netns exec` execs QEMU in place, so this PID is QEMU's own.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        while not self.cfg.qmp_socket.exists():
            self._check_alive()
            if time.monotonic() >= deadline:
                self.stop()
                raise QemuError(f"QMP socket did not appear in {timeout}s\n{self.stderr()}")
            time.sleep(0.02)
        try:
            self.qmp = QMPClient(self.cfg.qmp_socket,
                                 timeout=max(1.0, deadline - time.monotonic()))
        except QMPError as e:
            self.stop()
            raise QemuError(f"QMP failed: {e}\n{self.stderr()}") from e
        # QEMU 10 boots happily with private guest RAM and a vhost-user netdev: the back-end
        # then gets no usable memory table and the guest no network, with nothing on stderr.
        unshared = [m.get("id", "?") for m in self.qmp.execute("query-memdev")
                    if not m.get("share")]
        if unshared:
            self.stop()
            raise QemuError(f"guest memory backend(s) {unshared} not shared (share=off): "
                            "vhost-user cannot work, QEMU would use userspace virtio")

    def stderr(self) -> str:
        """QEMU's stderr so far."""
        try:
            return self.cfg.stderr_log.read_text(errors="replace")
        except OSError:
            return ""

    def console(self) -> str:
        """The guest's console (ttyS0) output so far."""
        try:
            return self.cfg.console_log.read_text(errors="replace")
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise QemuError(f"QEMU exited with {self.proc.returncode}\n{self.stderr()}\n"
                            f"--- console ---\n{self.console()[-4000:]}")

    def check(self) -> None:
        """Raises QemuError if QEMU died or fell back to userspace virtio (no vhost-user)."""
        err = self.stderr()
        if FALLBACK_MESSAGE in err:
            raise QemuError(f"QEMU is not using the vhost-user back-end:\n{err}")
        self._check_alive()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ends QEMU: QMP quit, SIGTERM, SIGKILL by PID, each bounded; returns exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=min(timeout, 5.0))
            except (QMPError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        return self.proc.poll()
