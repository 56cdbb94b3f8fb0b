# SPDX-License-Identifier: MIT
"""``boot_guest()``: back-end + QEMU + agent as one context manager, for any vhost-user back-end.

A test passes a factory that turns the vhost-user socket path into the back-end's argv, e.g.
``lambda sock: ["passt-py", "-f", "--vhost-user", "-s", str(sock)]``. The back-end is started
first (inside the test's network namespace when one is given) and must create its socket within
a bounded time; then QEMU starts in the same namespace, and the guest agent must say READY within
``boot_timeout``. On exit QEMU is stopped before its back-end (QEMU expects the back-end to
outlive it), both by PID with bounded waits. Failures carry the tails of the guest console, QEMU's
stderr and the back-end's log, because that is where the reason usually is.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .agent import AgentClient, AgentError
from .image import GuestImage, build_image
from .qemu import QemuConfig, QemuError, QemuProcess
from .qmp import QMPClient

BackendFactory = Callable[[Path], list[str]]


class GuestError(RuntimeError):
    """The guest or its back-end did not come up as required."""


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(none)"


def netns_wrap(argv: list[str], netns: str | None) -> list[str]:
    """argv run inside the named network namespace (ip netns exec execs it: same PID)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


@dataclass
class BackendProcess:
    """A vhost-user back-end started for one guest; stopped by PID."""

    argv: list[str]
    socket: Path
    log: Path
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """The back-end's combined stdout/stderr so far."""
        return _tail(self.log, 20000)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL, by PID with bounded waits; returns the exit status."""
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
        return self.proc.poll()


def start_backend(factory: BackendFactory, workdir: Path, netns: str | None = None,
                  name: str = "backend", socket_timeout: float = 10.0) -> BackendProcess:
    """Starts the back-end and waits (bounded) until its vhost-user socket listens."""
    sock = workdir / f"{name}.sock"
    sock.unlink(missing_ok=True)
    argv = netns_wrap(factory(sock), netns)
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    backend = BackendProcess(argv=argv, socket=sock, log=log, proc=proc)
    deadline = time.monotonic() + socket_timeout
    while not _listening(proc.pid, sock):
        if proc.poll() is not None:
            raise GuestError(f"back-end exited with {proc.returncode} before creating {sock}:\n"
                             f"{' '.join(argv)}\n{backend.output()}")
        if time.monotonic() >= deadline:
            backend.stop()
            raise GuestError(f"back-end socket {sock} missing after {socket_timeout}s:\n"
                             f"{backend.output()}")
        time.sleep(0.02)
    return backend


def _listening(pid: int, sock: Path) -> bool:
    """Whether `sock` is a listening UNIX socket in the back-end's network namespace.

    The socket file appears at bind(), which comes before listen(): a QEMU started in between
    is refused (passt prints its whole configuration between the two). /proc/PID/net/unix shows
    the back-end's namespace; the flags column has __SO_ACCEPTCON (0x10000) once it listens.
    If that table cannot be read, the file's existence has to do.
    """
    if not sock.exists():
        return False
    try:
        table = Path(f"/proc/{pid}/net/unix").read_text()
    except OSError:
        return True
    want = str(sock)
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[7] == want and int(cols[3], 16) & 0x10000:
            return True
    return False


@dataclass
class Guest:
    """A booted guest: run commands through `agent`, drive QEMU through `qmp`."""

    qemu: QemuProcess
    agent: AgentClient | None
    backend: BackendProcess | None
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def qmp(self) -> QMPClient:
        assert self.qemu.qmp is not None
        return self.qemu.qmp

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[int, str]:
        """Runs cmd in the guest: (exit status, output); fails loudly if vhost-user was lost."""
        if self.agent is None:
            raise GuestError("guest has no agent connection (started with wait_ready=False?)")
        try:
            result = self.agent.run(cmd, timeout)
        except AgentError as e:
            raise GuestError(f"{e}\n{self.diagnostics()}") from e
        self.qemu.check()
        return result

    def check(self, cmd: str, timeout: float = 30.0) -> str:
        """Runs cmd and returns its output; raises GuestError on non-zero exit status."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise GuestError(f"guest command {cmd!r} exited {rc}:\n{out}")
        return out

    def connect_agent(self, timeout: float = 60.0) -> float:
        """Connects to the agent (e.g. on a migration target) and waits for READY."""
        if self.agent is None:
            self.agent = AgentClient(self.qemu.cfg.agent_socket)
        try:
            return self.agent.wait_ready(timeout)
        except AgentError as e:
            raise GuestError(f"{e}\n{self.diagnostics()}") from e

    def wait_dhcp(self, timeout: float = 30.0) -> dict[str, str]:
        """Waits for the guest's udhcpc lease (needs dhcp=True); returns its fields."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            rc, out = self.run("cat /run/dhcp.lease", timeout=10)
            if rc == 0 and "ip=" in out:
                lease = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
                self.timings.setdefault("dhcp_lease_host_s",
                                        round(time.monotonic() - self.qemu.started_at, 2))
                self.timings.setdefault("dhcp_lease_guest_uptime_s",
                                        float(lease.get("uptime", "nan")))
                return lease
            if time.monotonic() >= deadline:
                _, log = self.run("cat /run/udhcpc.log", timeout=10)
                raise GuestError(f"no DHCP lease after {timeout}s; udhcpc log:\n{log}\n"
                                 f"{self.diagnostics()}")
            time.sleep(0.2)

    def wait_ipv6(self, prefix: str, timeout: float = 30.0) -> str:
        """Waits until eth0 has a non-tentative global address starting with prefix; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            _, out = self.run("ip -6 addr show dev eth0 scope global", timeout=10)
            for line in out.splitlines():
                words = line.split()
                if (len(words) > 1 and words[0] == "inet6" and words[1].startswith(prefix)
                        and "tentative" not in words):
                    return words[1]
            if time.monotonic() >= deadline:
                raise GuestError(f"no IPv6 address in {prefix} after {timeout}s:\n{out}\n"
                                 f"{self.diagnostics()}")
            time.sleep(0.3)

    def diagnostics(self) -> str:
        """Tails of console, QEMU stderr and back-end log, for failure messages."""
        parts = [f"--- work directory: {self.workdir} ---",
                 f"--- guest console ---\n{self.qemu.console()[-3000:]}",
                 f"--- qemu stderr ---\n{self.qemu.stderr()[-2000:]}"]
        if self.backend is not None:
            parts.append(f"--- back-end log ---\n{self.backend.output()[-3000:]}")
        if self.agent is not None and self.agent.transcript:
            parts.append("--- agent stray lines ---\n" + "\n".join(self.agent.transcript[-20:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """QEMU first, then its back-end; both by PID, bounded."""
        if self.agent is not None:
            self.agent.close()
        try:
            self.qemu.stop()
        finally:
            if self.backend is not None:
                self.backend.stop()


def migrate(source: Guest, target: Guest, uri: str, timeout: float = 60.0,
            parameters: dict | None = None) -> dict:
    """Live-migrates source to target (started with incoming=uri) over QMP; returns the final
    ``query-migrate`` result (status, total-time, downtime in ms). Raises GuestError on failure."""
    if parameters:
        source.qmp.execute("migrate-set-parameters", parameters)
    source.qmp.execute("migrate", {"uri": uri})
    deadline = time.monotonic() + timeout
    while True:
        info = source.qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            wait_running(target, max(1.0, deadline - time.monotonic()))
            return info
        if status in ("failed", "cancelled"):
            raise GuestError(f"migration {status}: {info.get('error-desc', info)}\n"
                             f"--- source ---\n{source.diagnostics()}\n"
                             f"--- target ---\n{target.diagnostics()}")
        if time.monotonic() >= deadline:
            raise GuestError(f"migration not complete after {timeout}s: {info}")
        time.sleep(0.05)


def wait_running(target: Guest, timeout: float) -> None:
    """Waits until the migration target's VM runs, which is when its back-end has loaded the
    device state (QEMU resumes only after that). The source says "completed" once it has sent
    everything, possibly before the target has read it: an orchestrator (libvirt, KubeVirt)
    moves traffic only after the target runs, and so must a test."""
    deadline = time.monotonic() + timeout
    while True:
        status = target.qmp.execute("query-status").get("status")
        if status == "running":
            return
        if time.monotonic() >= deadline:
            raise GuestError(f"migration target not running after {timeout}s: {status}\n"
                             f"--- target ---\n{target.diagnostics()}")
        time.sleep(0.01)


@contextmanager
def boot_guest(backend_cmd_factory: BackendFactory | None, netns: str | None,
               dhcp: bool = True, *, image: GuestImage | None = None,
               workdir: Path | None = None, name: str = "guest",
               boot_timeout: float = 60.0, device_props: dict[str, object] | None = None,
               extra_args: list[str] | None = None, cmdline_extra: str = "",
               smp: int = 1, memory_mb: int = 512, incoming: str | None = None,
               wait_ready: bool | None = None, backend: BackendProcess | None = None,
               keep_workdir: bool = False, share_memory: bool = True) -> Iterator[Guest]:
    """Boots a guest against a freshly started back-end and yields a ready `Guest`.

    backend_cmd_factory: socket path -> back-end argv (run inside `netns`); or pass an already
    started `backend` instead. incoming: QEMU `-incoming` URI for a migration target (the agent is
    then not awaited unless wait_ready=True). The work directory (sockets, logs) is a short path
    under /tmp (UNIX socket paths are limited to 107 bytes), removed afterwards unless keep_workdir
    or PASST_PY_KEEP_GUEST_DIRS=1 is set (failures already carry the logs' tails).
    """
    image = image or build_image()
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp")) if own_dir else workdir
    assert wd is not None
    wd.mkdir(parents=True, exist_ok=True)
    # Back-ends that drop privileges (passt does, as root) may still need to reach their files.
    wd.chmod(0o755)
    if wait_ready is None:
        wait_ready = incoming is None
    guest: Guest | None = None
    started_backend = False
    try:
        if backend is None:
            if backend_cmd_factory is None:
                raise ValueError("need backend_cmd_factory or backend")
            backend = start_backend(backend_cmd_factory, wd, netns, name=f"{name}-backend")
            started_backend = True
        cfg = QemuConfig(image=image, workdir=wd, vhost_socket=backend.socket, netns=netns,
                         dhcp=dhcp, smp=smp, memory_mb=memory_mb,
                         device_props=dict(device_props or {}),
                         extra_args=list(extra_args or []), cmdline_extra=cmdline_extra,
                         incoming=incoming, name=name, share_memory=share_memory)
        qemu = QemuProcess(cfg)
        guest = Guest(qemu=qemu, agent=None, backend=backend if started_backend else None,
                      workdir=wd)
        t0 = time.monotonic()
        try:
            qemu.start()
        except QemuError as e:
            raise GuestError(f"{e}\n--- back-end log ---\n{backend.output()[-3000:]}") from e
        guest.timings["qemu_start_s"] = round(time.monotonic() - t0, 2)
        if wait_ready:
            guest.connect_agent(boot_timeout)
            guest.timings["boot_to_ready_s"] = round(time.monotonic() - t0, 2)
            qemu.check()
        yield guest
    finally:
        try:
            if guest is not None:
                guest.stop()
            elif started_backend and backend is not None:
                backend.stop()
        finally:
            keep = keep_workdir or os.environ.get("PASST_PY_KEEP_GUEST_DIRS") == "1"
            if own_dir and not keep:
                shutil.rmtree(wd, ignore_errors=True)
