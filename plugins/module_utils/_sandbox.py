# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RUN: a command executed in a build container's mounted root filesystem.

Isolation with Linux namespaces through util-linux ``unshare`` (present on every
distribution; Python 3.11 has no ``os.unshare``): new mount, PID, UTS, IPC and network
namespaces (no network at all: build steps are offline), ``--root`` into the
container's root filesystem, ``/proc`` mounted inside the namespace (it goes away with
it), and a minimal ``/dev`` on a tmpfs (null, zero, full, random, urandom, tty, fd
links, shm) mounted from here and unmounted after.  The command runs as the stage's
USER (uid/gid looked up in the image), in its WORKDIR, with its ENV and nothing else.
There is no user namespace: root in the step is root on the host, as with Docker's
default daemon; the step cannot see the host's filesystem, processes or network.

Directories created only to mount on (``/proc``, ``/dev``) are removed afterwards so
they do not end up in the step's layer, like Docker's init layer keeps them out.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount, mount_at, umount

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
MAX_OUTPUT = 256 << 10
TAIL_LINES = 30


class StepFailed(StoreError):
    """A RUN command exited non-zero (``exit_code`` and ``output`` in details)."""


def secure_join(root: str, path: str) -> str:
    """``path`` inside ``root`` with symlinks resolved as a chroot would (never outside)."""
    todo = [p for p in path.split("/") if p]
    done: List[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise InvalidInput("too many symlinks resolving %s in the build container" % path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


class Sandbox:
    """Prepares a mounted root for RUN steps and runs them (use as a context manager)."""

    def __init__(self, root: str) -> None:
        if shutil.which("unshare") is None:
            raise Unsupported("RUN needs the unshare program (util-linux) on the managed host")
        self.root = root
        self._created: List[str] = []
        self._dev: Optional[str] = None

    def __enter__(self) -> "Sandbox":
        for name in ("proc", "dev"):
            path = os.path.join(self.root, name)
            if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
                raise InvalidInput("/%s in the image is not a directory; RUN cannot mount it"
                                   % name)
            if not os.path.exists(path):
                os.mkdir(path, 0o755)
                self._created.append(path)
        self._dev = os.path.join(self.root, "dev")
        mount("tmpfs", self._dev, "tmpfs", 0, "mode=755,size=65536k")
        self._populate_dev(self._dev)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dev and mount_at(self._dev) is not None:
            umount(self._dev)
        for path in reversed(self._created):
            try:
                os.rmdir(path)
            except OSError:
                pass  # the step put something there: it is the step's to keep

    @staticmethod
    def _populate_dev(dev: str) -> None:
        for name, major, minor in DEVICES:
            os.mknod(os.path.join(dev, name), stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(os.path.join(dev, name), 0o666)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, os.path.join(dev, name))
        os.mkdir(os.path.join(dev, "shm"), 0o1777)
        os.chmod(os.path.join(dev, "shm"), 0o1777)
        os.mkdir(os.path.join(dev, "pipes"), 0o755)

    def add_files(self, files: Dict[str, str]) -> None:
        """Heredoc scripts a RUN executes, read-only under /dev/pipes (not in the layer)."""
        for name, content in files.items():
            path = os.path.join(self.root, "dev", "pipes", os.path.basename(name))
            with open(path, "w") as handle:
                handle.write(content)
            os.chmod(path, 0o555)

    def ensure_workdir(self, workdir: str, owner: Tuple[int, int]) -> None:
        """Create the WORKDIR if the image lacks it (Docker does, owned by the USER)."""
        target = secure_join(self.root, workdir)
        if not os.path.isdir(target):
            os.makedirs(target, 0o755)
            os.chown(target, *owner)

    def run(self, argv: Sequence[str], env: Dict[str, str], workdir: str,
            owner: Tuple[int, int], what: str, timeout: Optional[float] = None) -> str:
        """Run ``argv``; return its output or raise StepFailed with the last lines."""
        command = ["unshare", "--mount", "--uts", "--ipc", "--pid", "--net", "--fork",
                   "--kill-child", "--mount-proc", "--root=%s" % self.root,
                   "--wd=%s" % workdir, "--setuid=%d" % owner[0], "--setgid=%d" % owner[1],
                   "--"] + list(argv)
        try:
            proc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise StepFailed("%s did not finish within %ss" % (what, timeout),
                             output=_tail(exc.output or b"")) from exc
        output = proc.stdout[-MAX_OUTPUT:].decode("utf-8", "replace")
        if proc.returncode != 0:
            tail = _tail(proc.stdout)
            raise StepFailed("%s failed with exit code %d; last output:\n%s"
                             % (what, proc.returncode, tail), exit_code=proc.returncode,
                             output=tail)
        return output


def _tail(data: bytes) -> str:
    lines = data[-MAX_OUTPUT:].decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-TAIL_LINES:])
