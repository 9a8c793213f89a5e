# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The store lock: ``flock`` on ``<data_root>/lock``, a file never renamed, and deleted
only with the store itself when a store's first run failed (``current`` tells a waiter).

Exclusive for mutations, shared for reads.  Waiting polls with a non-blocking
``flock`` so a timeout is exact and the waiter can say who holds the lock: the
exclusive holder writes its pid, operation and start time into the lock file, and
``/proc/locks`` tells which processes hold a lock on that inode right now (a pid
written by a holder that died is therefore never blamed).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from typing import List, Optional

from ansible_collections.strata.layers.plugins.module_utils._errors import Locked, StoreError

DEFAULT_TIMEOUT = 300.0


class StoreLock:
    """One acquisition of the store lock; use as a context manager."""

    def __init__(self, path: str, exclusive: bool, timeout: float = DEFAULT_TIMEOUT,
                 operation: str = "") -> None:
        self.path = path
        self.exclusive = exclusive
        self.timeout = timeout
        self.operation = operation
        self._fd: Optional[int] = None
        self._handed_over = False

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> int:
        """The lock file's descriptor.  A reader of a store on a read-only filesystem
        (or without write permission) locks a read-only descriptor: flock(2) needs none."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if not self.exclusive and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                try:
                    return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass
            raise read_only_error(exc, os.path.dirname(self.path), self.operation) from exc

    def acquire(self) -> None:
        fd = self._open()
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + max(self.timeout, 0.0)
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    holder = describe_holders(fd)
                    os.close(fd)
                    raise Locked(
                        "the store lock %s is held by %s; gave up after %gs. Wait for that "
                        "run to finish (or raise lock_timeout) and run again"
                        % (self.path, holder, self.timeout), holder=holder) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        self._fd = fd
        if self.exclusive:
            note = "pid %d on %s: %s since %s\n" % (
                os.getpid(), socket.gethostname(), self.operation or "a mutation",
                time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, note.encode("utf-8", "replace"), 0)
            except OSError:
                pass    # a full disk: the note is a courtesy, /proc/locks still names us

    def current(self) -> bool:
        """The locked file is still the one at ``path`` (a first run that failed removes
        its store, lock file included, while others may be waiting on it)."""
        if self._fd is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)

    def descriptor(self) -> Optional[int]:
        """The locked descriptor (None when not held)."""
        return self._fd

    def hand_over(self) -> None:
        """Another process holds a copy of the locked descriptor (fork shares the open file
        description, and with it the flock): ``release`` only closes ours, and the lock is
        held until that process closes its copy or exits."""
        self._handed_over = True

    def release(self) -> None:
        if self._fd is not None:
            if not self._handed_over:
                if self.exclusive:
                    os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_only_error(exc: OSError, root: str, operation: str = "") -> StoreError:
    """The error for a store whose directory cannot be written (or opened)."""
    doing = operation or "this change"
    if exc.errno == errno.EROFS:
        return StoreError("data_root %s is on a read-only filesystem: %s cannot change the "
                          "store; remount it read-write (read-only modules such as store_info "
                          "still work)" % (root, doing))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError("data_root %s is not writable by this user (%s): %s needs write "
                          "access (become root)" % (root, exc.strerror, doing))
    return StoreError("cannot open the store lock in %s: %s" % (root, exc.strerror or exc))


def holder_pids(fd: int) -> List[int]:
    st = os.fstat(fd)
    want_dev = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    try:
        with open("/proc/locks") as handle:
            for line in handle:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 00:2e:123 0 EOF" (blocked waiters have "->")
                if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                if fields[5].lower() == want_dev:
                    pids.append(int(fields[4]))
    except (OSError, ValueError):
        pass
    return sorted(set(pids))


def describe_holders(fd: int) -> str:
    pids = [p for p in holder_pids(fd) if p != os.getpid()]
    note = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    parts = []
    for pid in pids:
        if note.startswith("pid %d " % pid):
            parts.append(note)
        else:
            parts.append("pid %d (%s)" % (pid, _cmdline(pid)))
    if not parts:
        return note or "another process"
    return "; ".join(parts)


def _cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            raw = handle.read().replace(b"\0", b" ").strip()
        return raw.decode("utf-8", "replace")[:120] or "unknown command"
    except OSError:
        return "unknown command"
