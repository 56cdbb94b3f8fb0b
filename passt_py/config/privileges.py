# SPDX-License-Identifier: MIT
"""Dropping root: --runas, the user and group to become after everything privileged is open.

Theory of operation (as passt's isolate_user()): started as root (UID 0 in the initial user
namespace, or in a user namespace that maps more than one ID), the process first opens whatever
needs root — the vhost-user socket, the PID file, the capture and log files, the listening
forward sockets — then :func:`drop_privileges` switches to ``--runas USER[:GROUP]`` (names or
numbers), or to ``nobody`` when --runas is not given: supplementary groups are cleared with
setgroups([]), then setgid, then setuid (in that order: after setuid we could no longer change
the group). The socket file is handed to that user and group with mode 0660 so the process can
remove it at exit and a QEMU running as that user or group can connect; nobody else can.

Capabilities: a switch from UID 0 clears the permitted and effective sets. One may be kept on
request: CAP_NET_ADMIN, which TCP_REPAIR (live migration of TCP connections) needs when no
repair helper (--repair-path, passt-repair) is used. That is done with prctl(PR_SET_KEEPCAPS)
before setuid and capset() afterwards leaving CAP_NET_ADMIN alone in the permitted and effective
sets, through libc via ctypes (no C-core function is needed for two system calls). In every case
PR_SET_NO_NEW_PRIVS is set, so nothing executed later can gain privileges back.

Not root (an ordinary user, or a user namespace where we are not UID 0): nothing changes and
--runas is ignored with a note, as passt does. In a user namespace that maps only our own ID
(``unshare -r``), the target user does not exist there: the process stays as it is and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import grp
import logging
import os
import pwd
import signal
import stat
import time
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger(__name__)

DEFAULT_USER = "nobody"
NOBODY_ID = 65534
SOCKET_MODE = 0o660

CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38


class PrivilegeError(Exception):
    """The switch could not be made (the message says which step)."""


@dataclass(frozen=True)
class Identity:
    """Who to become."""

    uid: int
    gid: int
    name: str


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def get_caps() -> tuple[int, int]:
    """(effective, permitted) capability sets of this thread, as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    eff = data[0].effective | data[1].effective << 32
    perm = data[0].permitted | data[1].permitted << 32
    return eff, perm


def set_caps(mask: int) -> None:
    """Make ``mask`` the effective and permitted sets (inheritable empty)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        part = mask >> (32 * i) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = part
        data[i].inheritable = 0
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def _lookup_user(name: str) -> tuple[int, int | None, str]:
    if name.isdigit():
        uid = int(name)
        try:
            entry = pwd.getpwuid(uid)
            return uid, entry.pw_gid, entry.pw_name
        except KeyError:
            return uid, None, name
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"--runas: no user '{name}'") from None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def _lookup_group(name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise PrivilegeError(f"--runas: no group '{name}'") from None


def resolve(runas: str | None) -> Identity:
    """The identity for ``--runas USER[:GROUP]`` (default: nobody, its group or 65534)."""
    if runas is None:
        try:
            entry = pwd.getpwnam(DEFAULT_USER)
            return Identity(entry.pw_uid, entry.pw_gid, DEFAULT_USER)
        except KeyError:
            return Identity(NOBODY_ID, NOBODY_ID, DEFAULT_USER)
    user, _, group = runas.partition(":")
    uid, gid, name = _lookup_user(user)
    if group:
        gid = _lookup_group(group)
    if gid is None:
        gid = uid      # a bare number with no passwd entry: same number for the group
    return Identity(uid, gid, name)


def is_root() -> bool:
    """Running with UID 0 (in whatever user namespace we are in)."""
    return os.geteuid() == 0


def hand_over_socket(path: str | None, who: Identity) -> None:
    """Give the vhost-user socket file to ``who``, mode 0660 (QEMU as that user/group connects)."""
    if path is None:
        return
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        return
    os.chown(path, who.uid, who.gid, follow_symlinks=False)
    os.chmod(path, SOCKET_MODE)


class CleanupHelper:
    """A child that stays root only to remove our socket and PID file once we are gone.

    After the switch the process can no longer unlink files in directories only root may write
    (/run, a private temporary directory). The helper closes every descriptor but the read end
    of a pipe and blocks on it; end of file — our exit, however it happens, even SIGKILL — makes
    it remove the socket (if it is still the one we bound) and the PID file (if it still names
    us), and exit. It reads nothing else and acts on nothing else.
    """

    def __init__(self, sockets: Sequence[str], pid_file: str | None) -> None:
        self.pid = -1
        self._wfd = -1
        inodes: dict[str, int] = {}
        for path in sockets:
            try:
                inodes[path] = os.lstat(path).st_ino
            except OSError:
                pass
        if not inodes and pid_file is None:
            return
        owner = os.getpid()
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, checked through its effects
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)   # a group signal must not skip the work
                os.closerange(0, rfd)
                os.closerange(rfd + 1, max(65536, os.sysconf("SC_OPEN_MAX")))
                while os.read(rfd, 64):
                    pass
                for path, ino in inodes.items():
                    _remove_if(path, lambda st, _p, ino=ino: st.st_ino == ino
                               and stat.S_ISSOCK(st.st_mode))
                _remove_if(pid_file, lambda _st, p: _read(p) == str(owner))
            finally:
                os._exit(0)
        os.close(rfd)
        self.pid, self._wfd = pid, wfd

    def finish(self, timeout: float = 2.0) -> None:
        """Let the helper clean up now and wait for it (bounded)."""
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        if self.pid <= 0:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.005)
        self.pid = -1


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _remove_if(path: str | None, check) -> None:  # noqa: ANN001 - (stat, path) -> bool
    if path is None:
        return
    try:
        if check(os.lstat(path), path):
            os.unlink(path)
    except OSError:
        pass


@dataclass
class Dropped:
    """What drop_privileges() did: a summary line and the clean-up helper, if one runs."""

    note: str
    helper: CleanupHelper | None = None

    def finish(self) -> None:
        """At exit: let the helper remove the socket and PID file."""
        if self.helper is not None:
            self.helper.finish()


def drop_privileges(runas: str | None, keep_net_admin: bool = False,
                    socket_path: str | None = None, pid_file: str | None = None,
                    other_sockets: Sequence[str] = ()) -> Dropped:
    """Become the --runas identity if root; returns what was done (the summary is logged).

    ``keep_net_admin``: keep CAP_NET_ADMIN (and only it) for TCP_REPAIR. ``socket_path`` (the
    vhost-user socket, handed to the new user, mode 0660), ``other_sockets`` (e.g. the repair
    helper's, left as they are) and ``pid_file`` are removed at exit by a root clean-up helper
    (:class:`CleanupHelper`). Raises PrivilegeError when a step fails in a way that would leave
    the process half-switched.
    """
    if not is_root():
        if runas is not None:
            note = f"not running as root: --runas {runas} ignored"
        else:
            note = f"running as UID {os.getuid()}, GID {os.getgid()} (not root: nothing to drop)"
        log.info("%s", note)
        return Dropped(note)
    who = resolve(runas)
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        log.warning("cannot set no_new_privs: %s", exc)
    if who.uid == 0:
        note = "--runas names root: keeping UID 0 and all capabilities"
        log.warning("%s", note)
        return Dropped(note)
    if not _uid_mapped(who.uid):
        note = (f"user namespace without {who.name} (UID {who.uid}) mapped: "
                f"staying UID {os.getuid()}")
        log.warning("%s", note)
        return Dropped(note)
    helper = CleanupHelper([p for p in (socket_path, *other_sockets) if p is not None],
                           pid_file)
    try:
        os.setgroups([])
    except PermissionError:
        pass  # a user namespace with setgroups denied: there are no groups to drop anyway
    try:
        os.setgid(who.gid)
    except OSError as exc:
        helper.finish(0)
        raise PrivilegeError(f"setgid({who.gid}): {exc.strerror}") from None
    if socket_path is not None:
        try:
            hand_over_socket(socket_path, who)
        except OSError as exc:
            log.warning("cannot hand %s over to %s: %s", socket_path, who.name, exc)
    try:
        if keep_net_admin:
            _prctl(PR_SET_KEEPCAPS, 1)
        os.setuid(who.uid)
    except OSError as exc:
        raise PrivilegeError(f"setuid({who.uid}): {exc.strerror}") from None
    if os.getuid() != who.uid or os.geteuid() != who.uid:
        raise PrivilegeError("setuid did not take effect")
    if keep_net_admin:
        set_caps(1 << CAP_NET_ADMIN)
        _prctl(PR_SET_KEEPCAPS, 0)
        kept = "kept CAP_NET_ADMIN (TCP_REPAIR without a repair helper)"
    else:
        set_caps(0)
        kept = "no capabilities kept"
    note = f"dropped privileges to {who.name} (UID {who.uid}, GID {who.gid}): {kept}"
    log.info("%s", note)
    return Dropped(note, helper)


def _uid_mapped(uid: int) -> bool:
    """Whether ``uid`` exists in this user namespace (from /proc/self/uid_map)."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return True
    except (OSError, ValueError):
        return True
    return False


def needs_net_admin(repair_path: str | None, migration: bool) -> bool:
    """Whether to keep CAP_NET_ADMIN: migration moves TCP sockets with TCP_REPAIR and no helper
    is sure to do it for us.

    ``repair_path`` is --repair-path: None (default: the helper may connect on
    ``SOCKET.repair``, but need not, so keep the capability to do without it), ``"none"`` (no
    helper: keep it), or a path (the user set up passt-repair there: drop it).
    """
    return migration and (repair_path is None or repair_path == "none")
