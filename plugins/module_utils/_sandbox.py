# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RUN: a command executed in a build container's mounted root filesystem.

Isolated the way container runtimes do it, standard library only.  util-linux
``unshare`` (present on every distribution; Python 3.11 has no ``os.unshare``) makes new
mount (propagation private), PID, UTS and IPC namespaces, and a network namespace (only
``lo``) when the step's network is ``none`` (otherwise it shares the host's, as Docker's
and buildah's builders give RUN), and runs this host's Python interpreter with a small
init program (``INIT``, passed with ``-c``: modules run from an Ansible zip payload, so no
file of ours can be executed) that, as PID 1 of the new PID namespace:

1. bind-mounts the container's root onto itself (recursively, so the ``/dev`` tmpfs
   mounted from here stays visible) and remounts it ``nodev``: device nodes a layer
   carries do not open, since no device cgroup stands behind them; then makes the
   step's ``--mount``s (host paths, still reachable) at mount points the caller made,
   and the files from memory (secrets, /etc/hosts) in a tmpfs of this namespace only;
2. ``pivot_root(".", ".")`` then a lazy unmount of the old root (runc's sequence): the
   host's filesystem is no longer in the namespace at all, so the chroot(2) escape
   (chroot into a subdirectory, ``chdir("..")`` out, ``chroot(".")``) finds nothing;
3. mounts a fresh ``/proc`` (nosuid, nodev, noexec) with Docker's masked paths
   (``/proc/kcore``, ``/proc/keys``, ...) and read-only paths (``/proc/sys``,
   ``/proc/sysrq-trigger``, ...): uid 0 may write ``core_pattern`` without any capability;
4. sets the hostname, starts a new session (no controlling terminal to inject into),
   joins a new session keyring (the host root's keys are not the step's);
5. installs a seccomp filter that refuses only user namespaces (``unshare``/``clone``
   with ``CLONE_NEWUSER``; ``clone3`` gets ENOSYS so the C library falls back to
   ``clone``), unless asked not to: inside one, a step could mount;
6. drops from the capability bounding set every capability outside Docker's default
   set, and ``CAP_MKNOD`` too (and ``CAP_NET_RAW`` when the step shares the host's
   network: raw sockets there see and forge the host's traffic), clears the
   inheritable and ambient sets;
7. takes the USER the caller resolved (uid, gid, groups), enters its WORKDIR and
   executes the command with its ENV (looked up in the step's PATH; 127 when it is not
   found, as a shell says).

A minimal ``/dev`` on a tmpfs (null, zero, full, random, urandom, tty, fd links, shm) is
mounted from here before and unmounted after.  There is no user namespace: root in a
step is uid 0 on the host, as with Docker's default daemon, but without
``CAP_SYS_ADMIN``, ``CAP_MKNOD``, ``CAP_SYS_MODULE`` and the rest it cannot mount,
create devices, load modules or leave its root; it cannot see the host's filesystem or
processes (nor its network, with ``none``).  ``unshare`` dies with the module
(parent-death signal), and its ``--kill-child`` takes the step's PID namespace down.

Directories created only to mount on (``/proc``, ``/dev``) are removed afterwards so
they do not end up in the step's layer, like Docker's init layer keeps them out.
"""
from __future__ import annotations

import base64
import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._atomic import libc
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount, mount_at, umount
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
MAX_OUTPUT = 256 << 10
TAIL_LINES = 30
MS_NOSUID = 2
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_PDEATHSIG = 1

# The init program, run by the host's interpreter inside the new namespaces.  It must
# run on Python 3.9+, import everything before pivot_root (after it, a module path names
# a file of the image, so importing is switched off) and touch files only through os.
# Its configuration arrives as JSON on stdin (no argument-size limit), and its own
# failures exit 125 (setup), 126 (not executable) or 127 (not found) with a message.
INIT = r'''
import base64
import ctypes
import json
import os
import signal
import stat
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 1, 24, 47, 4
CAP_VERSION_3 = 0x20080522
# glibc has no pivot_root(): the system call number depends on the architecture
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41,
              "ppc64le": 203, "ppc64": 203, "s390x": 217, "i686": 217, "i386": 217,
              "armv7l": 218, "armv8l": 218}
KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "loongarch64": 219,
          "ppc64le": 271, "ppc64": 271, "s390x": 280, "i686": 288, "i386": 288,
          "armv7l": 311, "armv8l": 311}
KEYCTL_JOIN_SESSION_KEYRING = 1
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
# Docker's default capability set without CAP_MKNOD (27): CHOWN DAC_OVERRIDE FOWNER
# FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT AUDIT_WRITE
# SETFCAP.  Docker can leave MKNOD in because its device cgroup refuses to open the
# nodes; there is no device cgroup here, so a step able to mknod the host's disk could
# read and write it.
KEEP = (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31)
CAP_NET_RAW = 13
# Docker's masked and read-only /proc paths: uid 0 needs no capability to write
# /proc/sys/kernel/core_pattern (a program the host's kernel runs) or sysrq-trigger
MASKED = ("/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
          "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
          "/proc/sched_debug", "/proc/scsi")
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NOT_FOUND = (2, 20)   # ENOENT, ENOTDIR


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class SetupError(Exception):
    pass


LIBC = ctypes.CDLL(None, use_errno=True)


def fail(code, message):
    os.write(2, ("strata sandbox: %s\n" % message).encode("utf-8", "replace"))
    os._exit(code)


def check(result, what):
    if result != 0:
        raise SetupError("%s: %s" % (what, os.strerror(ctypes.get_errno())))


def mount(source, target, fstype, flags, data=None):
    check(LIBC.mount(None if source is None else os.fsencode(source), os.fsencode(target),
                     None if fstype is None else fstype.encode(), ctypes.c_ulong(flags),
                     None if data is None else data.encode()),
          "mount %s on %s" % (fstype or source, target))


def read_config():
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return json.loads(b"".join(chunks))
        chunks.append(chunk)


def memory_file(staging_fd, index, spec):
    """A secret or generated file, on a tmpfs of this namespace only (never on disk);
    its descriptor (the bind's source, by /proc/self/fd)."""
    fd = os.open(str(index), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                 dir_fd=staging_fd)
    data = base64.b64decode(spec["content"])
    while data:
        data = data[os.write(fd, data):]
    os.fchown(fd, spec["uid"], spec["gid"])
    os.fchmod(fd, spec["mode"])
    return fd


def open_target(root_fd, spec, make):
    """An O_PATH descriptor of the mount target, opened from the root one component at
    a time with O_NOFOLLOW, after the mounts above it are made: a symlink met on the
    way (an earlier mount's content brought it: the caller resolved the image's) is
    refused, never followed to the host.  ``make``: a point missing inside an earlier
    mount (a nested target) is made there."""
    parts = [p for p in spec["target"].split("/") if p]
    fd = os.dup(root_fd)
    try:
        for index, name in enumerate(parts):
            last = index == len(parts) - 1
            directory = not last or spec["directory"]
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
            try:
                try:
                    below = os.open(name, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not make:
                        raise
                    if directory:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    else:
                        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                         | os.O_NOFOLLOW, 0o644, dir_fd=fd))
                    below = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                raise SetupError("RUN --mount target %s: /%s is %s" % (
                    spec["shown"], "/".join(parts[:index + 1]),
                    "a symlink or not a directory" if exc.errno in (20, 40)
                    else exc.strerror)) from None
            os.close(fd)
            fd = below
            # the point a file is bound on (after the bind it is the source's kind)
            if make and last and not directory and not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SetupError("RUN --mount target %s is not a regular file" % spec["shown"])
        return fd
    except BaseException:
        os.close(fd)
        raise


def at_fd(fd):
    return "/proc/self/fd/%d" % fd


def apply_mounts(root, mounts, staging):
    # done before pivot_root: the sources are host paths (or descriptors); each target
    # is opened inside the new root (rbound above) as the mounts before it left it
    staging_fd = None
    if any(m["kind"] == "file" for m in mounts):
        mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=700")
        staging_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for index, spec in enumerate(mounts):
            target = open_target(root_fd, spec, make=True)
            try:
                if spec["kind"] == "tmpfs":
                    mount("tmpfs", at_fd(target), "tmpfs", MS_NOSUID | MS_NODEV, spec.get("data"))
                    continue
                source = memory_file(staging_fd, index, spec) if spec["kind"] == "file" \
                    else None
                try:
                    # not recursive: mounts inside a source (the context's) stay out,
                    # so read-only cannot be escaped through one
                    mount(at_fd(source) if source is not None else spec["source"],
                          at_fd(target), None, MS_BIND)
                finally:
                    if source is not None:
                        os.close(source)
            finally:
                os.close(target)
            # the new mount, opened again the same way, gets its flags
            target = open_target(root_fd, spec, make=False)
            try:
                mount(None, at_fd(target), None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV
                      | (MS_RDONLY if spec.get("readonly") else 0))
            finally:
                os.close(target)
    finally:
        os.close(root_fd)
        if staging_fd is not None:
            os.close(staging_fd)
    if staging_fd is not None:
        # the binds keep the files; the staging tmpfs itself goes out of sight
        check(LIBC.umount2(os.fsencode(staging), MNT_DETACH), "unmount the file staging")


def enter_root(root, mounts, staging):
    # pivot_root needs a mount point not under a shared mount; unshare made all private
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount(root, root, None, MS_BIND | MS_REC)
    kept = os.statvfs(root).f_flag & (MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    mount(None, root, None, MS_BIND | MS_REMOUNT | MS_NODEV | kept)
    apply_mounts(root, mounts, staging)
    os.chdir(root)
    number = PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise SetupError("pivot_root: no system call number known for %s"
                         % os.uname().machine)
    check(LIBC.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    # the old root now sits on top of the new one: detach it and everything under it
    check(LIBC.umount2(b".", MNT_DETACH), "unmount the host's root")
    os.chdir("/")


def mount_proc():
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("proc", "/proc", "proc", flags)
    for path in MASKED:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | flags)
        elif os.path.exists(path):
            mount("/dev/null", path, None, MS_BIND)
    for path in READ_ONLY:
        if os.path.exists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)


def read_small(path):
    """A file of the image as the step sees it (symlinks resolve inside its root)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, 1 << 20).decode("utf-8", "replace")
    finally:
        os.close(fd)


def own_keyring():
    # a new anonymous session keyring: the step must not see (or add to) the keys of
    # the host root's session; a kernel without keys has nothing to share
    number = KEYCTL.get(os.uname().machine)
    if number is None:
        raise SetupError("keyctl: no system call number known for %s" % os.uname().machine)
    if LIBC.syscall(ctypes.c_long(number), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING),
                    None) < 0 and ctypes.get_errno() != 38:
        raise SetupError("join a new session keyring: %s" % os.strerror(ctypes.get_errno()))


# Per audit architecture: (unshare, clone, clone3, offset of the low word of clone's
# flags in struct seccomp_data).  Compat ABIs are listed too: an i386 binary on x86_64
# enters with AUDIT_ARCH_I386 and that ABI's numbers.
SECCOMP_ARCHES = {
    "x86_64": ((0xC000003E, 272, 56, 435, 16), (0x40000003, 310, 120, 435, 16)),
    "aarch64": ((0xC00000B7, 97, 220, 435, 16), (0x40000028, 337, 120, 435, 16)),
    "riscv64": ((0xC00000F3, 97, 220, 435, 16),),
    "loongarch64": ((0xC0000102, 97, 220, 435, 16),),
}
CLONE_NEWUSER, X32_BIT, EPERM, ENOSYS = 0x10000000, 0x40000000, 1, 38
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def assemble(program):
    """(code, k, true label, false label) / ("label", name) -> sock_filter entries."""
    where, at = {}, 0
    for item in program:
        if item[0] == "label":
            where[item[1]] = at
        else:
            at += 1
    out, at = [], 0
    for item in program:
        if item[0] == "label":
            continue
        code, k, jt, jf = item
        out.append((code, where[jt] - at - 1 if jt else 0, where[jf] - at - 1 if jf else 0, k))
        at += 1
    return out


def userns_filter(arches):
    # unshare/clone asking for CLONE_NEWUSER fail with EPERM; clone3, whose flags a
    # filter cannot read, fails with ENOSYS so the C library falls back to clone (as
    # Docker's default profile does); everything else is allowed
    program = [(LD_ABS, 4, None, None)]
    for index, (arch, unshare, clone, clone3, flags) in enumerate(arches):
        nxt = "arch%d" % (index + 1)
        program += [(JEQ, arch, "in%d" % index, nxt), ("label", "in%d" % index),
                    (LD_ABS, 0, None, None),
                    (JGE, X32_BIT, "x32", "native%d" % index), ("label", "native%d" % index),
                    (JEQ, clone3, "nosys", "u%d" % index), ("label", "u%d" % index),
                    (JEQ, unshare, "flags%d" % index, "c%d" % index), ("label", "c%d" % index),
                    (JEQ, clone, "flags%d" % index, "allow"), ("label", "flags%d" % index),
                    (LD_ABS, flags, None, None),
                    (JSET, CLONE_NEWUSER, "deny", "allow"), ("label", nxt)]
    program += [("label", "allow"), (RET, RET_ALLOW, None, None),
                # x32 calls (the x32 bit set): unshare, clone and clone3 of that ABI
                ("label", "x32"), (JEQ, X32_BIT | 272, "deny", "x32c"), ("label", "x32c"),
                (JEQ, X32_BIT | 56, "deny", "x32c3"), ("label", "x32c3"),
                (JEQ, X32_BIT | 435, "nosys", "allow2"), ("label", "allow2"),
                (RET, RET_ALLOW, None, None),
                ("label", "deny"), (RET, RET_ERRNO | EPERM, None, None),
                ("label", "nosys"), (RET, RET_ERRNO | ENOSYS, None, None)]
    return program


def deny_user_namespaces():
    arches = SECCOMP_ARCHES.get(os.uname().machine)
    if arches is None:
        return   # documented: no filter on other architectures
    compiled = assemble(userns_filter(arches))
    table = (SockFilter * len(compiled))(*[SockFilter(c, jt, jf, k) for c, jt, jf, k in compiled])
    prog = SockFprog(len(compiled), table)
    # without no_new_privs: this process still holds CAP_SYS_ADMIN, and setuid programs
    # of the image must keep working
    check(LIBC.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog),
                     ctypes.c_ulong(0), ctypes.c_ulong(0)), "install the seccomp filter")


def drop_capabilities(keep):
    last = int(read_small("/proc/sys/kernel/cap_last_cap") or "63")
    for cap in range(last + 1):
        if cap not in keep:
            check(LIBC.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0),
                             ctypes.c_ulong(0), ctypes.c_ulong(0)), "drop capability %d" % cap)
    check(LIBC.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL),
                     ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
          "clear the ambient capabilities")
    # exec gives uid 0 its inheritable set as well as the bounding set: clear it
    header = CapHeader(CAP_VERSION_3, 0)
    data = (CapData * 2)()
    check(LIBC.capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.inheritable = 0
    check(LIBC.capset(ctypes.byref(header), data), "capset")


def become(uid, gid, groups):
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    # changing credentials cleared the parent-death signal unshare --kill-child set:
    # without it a timed-out step of a non-root USER would outlive unshare
    check(LIBC.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                     ctypes.c_ulong(0), ctypes.c_ulong(0)), "set the parent-death signal")


def setup(config):
    # the interpreter ignores SIGPIPE and SIGXFSZ, the caller may ignore or block more,
    # and exec would hand all of that on to the step
    for number in signal.valid_signals():
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(number, signal.SIG_DFL)
            except (OSError, ValueError):
                pass  # signals reserved by the C library (SIGRTMIN..)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    sys.meta_path[:] = []
    enter_root(config["root"], config["mounts"], config["staging"])
    mount_proc()
    own_keyring()
    name = config["hostname"].encode()
    check(LIBC.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        os.chdir(config["workdir"])
    except OSError as exc:
        raise SetupError("cannot enter the WORKDIR %s: %s"
                         % (config["workdir"], exc.strerror)) from None
    if not config.get("user_namespaces"):
        deny_user_namespaces()
    # on the host's network, raw sockets would see and forge the host's traffic
    drop_capabilities(KEEP if config.get("own_network") else
                      tuple(cap for cap in KEEP if cap != CAP_NET_RAW))
    become(config["uid"], config["gid"], config["groups"])


def execute(argv, env):
    program = argv[0]
    if "/" in program:
        candidates = [program]
    else:
        candidates = [os.path.join(part or ".", program)
                      for part in env.get("PATH", "").split(":")]
    error = None
    for candidate in candidates:
        try:
            os.execve(candidate, argv, env)
        except OSError as exc:
            if error is None or (error.errno in NOT_FOUND and exc.errno not in NOT_FOUND):
                error = exc
    if error is None or error.errno in NOT_FOUND:
        fail(127, "%s: not found in the image (PATH=%s)" % (program, env.get("PATH", "")))
    fail(126, "%s: cannot execute: %s" % (program, error.strerror))


def main():
    try:
        config = read_config()
        if not config["argv"]:
            raise SetupError("the command is empty")
        setup(config)
    except (SetupError, OSError, ValueError, KeyError, TypeError) as exc:
        fail(125, "cannot set up the build container: %s" % exc)
    execute(config["argv"], config["env"])


main()
'''


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
    """Prepares a mounted root for RUN steps and runs them (use as a context manager).

    ``hostname`` is what a step sees (Docker uses the first 12 hex digits of the
    container id); a random one when not given.  ``network``: ``none`` gives the step
    its own network namespace (only ``lo``), anything else the host's."""

    def __init__(self, root: str, hostname: Optional[str] = None,
                 network: str = "none", user_namespaces: bool = False) -> None:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise Unsupported("RUN needs the unshare program (util-linux) on the managed host")
        if not sys.executable:
            raise Unsupported("RUN needs the path of this Python interpreter, and "
                              "sys.executable is empty")
        self._unshare = unshare
        self.root = os.path.abspath(root)
        self.hostname = hostname or secrets.token_hex(6)
        self.network = network
        self.user_namespaces = user_namespaces
        # what was made only to mount on: (path relative to the root, its device and
        # inode), removed after the step only while it is still that very entry
        self._created: List[Tuple[bytes, Tuple[int, int]]] = []
        # directories of the image a mount point was made in: (relative path -> atime,
        # mtime before, mtime once every mount point was made), so their times can be
        # put back
        self._touched: Dict[bytes, List[int]] = {}
        self._dev: Optional[str] = None
        self._mounts: List[Dict[str, Any]] = []
        self._staging: Optional[str] = None

    def __enter__(self) -> "Sandbox":
        for name in ("proc", "dev"):
            path = os.path.join(self.root, name)
            if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
                raise InvalidInput("/%s in the image is not a directory; RUN cannot mount it"
                                   % name)
            if not os.path.exists(path):
                self._touch(b"")
                os.mkdir(path, 0o755)
                self._made(path)
        self._dev = os.path.join(self.root, "dev")
        mount("tmpfs", self._dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
        self._populate_dev(self._dev)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dev and mount_at(self._dev) is not None:
            umount(self._dev)
        if self._staging is not None:
            os.rmdir(self._staging)
            self._staging = None
        # the step ran as root in this tree and may have swapped any directory for a
        # symlink to the host: every path below is opened from the root one component
        # at a time, never through a symlink (Beneath), and an entry is removed only
        # while it is still the one made here (device and inode)
        with Beneath(self.root) as tree:
            made = {rel for rel, _identity in self._created}
            untouched = [rel for rel, times in self._touched.items()
                         if rel not in made and _mtime(tree, rel) == times[2]]
            for rel, identity in reversed(self._created):
                _remove_made(tree, rel, identity)
            # a directory only our mount points changed gets its times back, so the
            # step's layer is the same bytes on every run (its own changes keep theirs)
            for rel in untouched:
                try:
                    os.utime(tree.dir_fd(rel), ns=tuple(self._touched[rel][:2]))
                except (OSError, NotBeneath):
                    pass  # changed or gone since: the step's

    def _rel(self, path: str) -> bytes:
        rel = os.path.relpath(path, self.root)
        return b"" if rel == "." else os.fsencode(rel)

    def _made(self, path: str) -> None:
        st = os.lstat(path)
        self._created.append((self._rel(path), (st.st_dev, st.st_ino)))

    def _touch(self, rel: bytes) -> None:
        if rel not in self._touched:
            st = os.lstat(os.path.join(self.root, os.fsdecode(rel)) if rel else self.root)
            self._touched[rel] = [st.st_atime_ns, st.st_mtime_ns, st.st_mtime_ns]

    def _settle(self) -> None:
        """Just before the step: the times our mount points left on the directories."""
        with Beneath(self.root) as tree:
            for rel, times in self._touched.items():
                times[2] = _mtime(tree, rel)

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

    # ------------------------------------------------------------------ mounts
    def mountpoint(self, target: str, directory: bool) -> str:
        """``target`` (a path in the container) made to exist for a mount; what this
        creates is removed after the step when still empty, so it stays out of the
        layer (BuildKit does the same for its mount points).  Returns the target's path
        relative to the root, symlinks of the image resolved inside it: the step's init
        opens it again after the mounts above it are made, never through a symlink."""
        path = secure_join(self.root, target)
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel in ("dev", "proc") or rel.startswith("proc/"):
            raise InvalidInput("RUN --mount target %s: the root, /dev and /proc are the build "
                               "container's own" % target)
        try:
            self._make_mountpoint(path, directory, target)
        except OSError as exc:
            raise InvalidInput("RUN --mount target %s cannot be made in the image: %s"
                               % (target, exc.strerror)) from exc
        return rel

    def _make_mountpoint(self, path: str, directory: bool, target: str) -> None:
        if os.path.lexists(path):
            if os.path.isdir(path) != directory:
                raise InvalidInput("RUN --mount target %s is %s in the image" % (
                    target, "a file, not a directory" if directory else "a directory"))
            return
        parent = os.path.dirname(path)
        missing = []
        while not os.path.lexists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        self._touch(self._rel(parent))
        for directory_path in reversed(missing):
            os.mkdir(directory_path, 0o755)
            self._made(directory_path)
        if directory:
            os.mkdir(path, 0o755)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        self._made(path)

    def bind(self, source: str, target: str, readonly: bool) -> None:
        """A host path (a cache, the context, another root) seen at ``target``."""
        directory = os.path.isdir(source)
        path = self.mountpoint(target, directory)
        self._mounts.append({"kind": "bind", "source": source, "target": path,
                             "directory": directory, "shown": target, "readonly": readonly})

    def tmpfs(self, target: str, size: Optional[int]) -> None:
        path = self.mountpoint(target, True)
        self._mounts.append({"kind": "tmpfs", "target": path, "directory": True,
                             "shown": target,
                             "data": None if size is None else "size=%d" % size})

    def memory_file(self, target: str, content: bytes, mode: int, owner: Tuple[int, int],
                    readonly: bool = True) -> None:
        """A file from memory (a secret, /etc/hosts): it never touches the disk."""
        path = self.mountpoint(target, False)
        self._mounts.append({"kind": "file", "target": path, "directory": False,
                             "shown": target, "readonly": readonly,
                             "content": base64.b64encode(content).decode("ascii"),
                             "mode": mode, "uid": owner[0], "gid": owner[1]})

    # ------------------------------------------------------------------ running
    def command(self) -> List[str]:
        """``unshare`` making the namespaces, then the init program (see ``INIT``)."""
        # -I: no PYTHON* variable, user site or script directory can steer the init
        # (it runs as root with every capability until it has left the host's root)
        net = ["--net"] if self.network == "none" else []
        return [self._unshare, "--mount", "--uts", "--ipc", "--pid"] + net + [
            "--fork", "--kill-child", "--propagation=private", "--",
            sys.executable, "-I", "-S", "-c", INIT]

    def run(self, argv: Sequence[str], env: Dict[str, str], workdir: str,
            owner: Tuple[int, int], what: str, timeout: Optional[float] = None,
            groups: Optional[Sequence[int]] = None, log: Optional[str] = None) -> str:
        """Run ``argv``; return the tail of its output or raise StepFailed with it.

        The whole output goes to ``log`` (when given) as it comes; only the last
        ``MAX_OUTPUT`` bytes are kept in memory."""
        # parents before children: a cache inside a bind must be mounted after it
        mounts = sorted(self._mounts, key=lambda m: m["target"].count("/"))
        self._settle()
        if self._staging is None and any(m["kind"] == "file" for m in mounts):
            # outside the root, so nothing a step left there (or an earlier mount
            # brings) decides where the files are made; a tmpfs of the step's mount
            # namespace only covers it, the host sees an empty private directory
            self._staging = tempfile.mkdtemp(prefix="strata-run-files-")
        config = {"root": self.root, "workdir": workdir, "uid": owner[0], "gid": owner[1],
                  "groups": list(groups if groups is not None else [owner[1]]),
                  "argv": list(argv), "env": dict(env), "hostname": self.hostname,
                  "mounts": mounts, "staging": self._staging,
                  "user_namespaces": self.user_namespaces,
                  "own_network": self.network == "none"}
        code, tail, total = _supervise(self.command(), json.dumps(config).encode("ascii"),
                                       timeout, log)
        if code == 0:
            return tail.decode("utf-8", "replace")
        text = _tail(tail)
        if log and total == len(tail) and len(tail.splitlines()) <= TAIL_LINES:
            os.unlink(log)   # the message holds all of it: no file to keep
            log = None
        more = "\n(whole output: %s)" % log if log else ""
        if code is None:
            raise StepFailed("%s did not finish within %ss (step_timeout); last output:\n%s%s"
                             % (what, timeout, text, more), output=text, log=log)
        raise StepFailed("%s failed with exit code %d; last output:\n%s%s"
                         % (what, code, text, more), exit_code=code, output=text, log=log)


def _mtime(tree: Beneath, rel: bytes) -> int:
    try:
        return os.fstat(tree.dir_fd(rel)).st_mtime_ns
    except (OSError, NotBeneath):
        return -1


def _remove_made(tree: Beneath, rel: bytes, identity: Tuple[int, int]) -> None:
    """Remove an empty directory or file made to mount on, if it is still that entry."""
    parent, _sep, name = rel.rpartition(b"/")
    try:
        pfd = tree.dir_fd(parent)
        st = os.lstat(name, dir_fd=pfd)
        if (st.st_dev, st.st_ino) != identity:
            return
        if stat.S_ISDIR(st.st_mode):
            tree.invalidate(rel)
            os.rmdir(name, dir_fd=pfd)
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(name, dir_fd=pfd)
    except (OSError, NotBeneath):
        pass  # the step put something there, or moved things: it is the step's to keep


def _die_with_parent() -> None:
    # unshare must not outlive a killed module: its --kill-child then takes the step
    # (PID 1 of its namespace, and with it every process of the step) down too
    libc().prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                 ctypes.c_ulong(0), ctypes.c_ulong(0))


def _supervise(command: List[str], config: bytes, timeout: Optional[float],
               log: Optional[str]) -> Tuple[Optional[int], bytes, int]:
    """Run the sandbox; stream its output to ``log``, keep the tail; the exit code (None
    on timeout), the tail and the number of bytes it wrote."""
    deadline = None if timeout is None else time.monotonic() + timeout
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={"PATH": HOST_PATH, "LC_ALL": "C"},
                            preexec_fn=_die_with_parent)
    tail = bytearray()
    total = 0
    sink = open(log, "ab") if log else None
    try:
        if proc.stdin is None or proc.stdout is None:
            raise RuntimeError("Popen gave no pipes")
        proc.stdin.write(config)
        proc.stdin.close()
        fd = proc.stdout.fileno()
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _w, _x = select.select([fd], [], [], wait)
            if not ready:
                proc.kill()
                proc.wait()
                return None, bytes(tail), total
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            if sink is not None:
                try:
                    sink.write(chunk)
                except OSError:
                    # a full /tmp must not fail the step: the log stops, the tail stays
                    sink.close()
                    sink = None
            tail += chunk
            total += len(chunk)
            del tail[:-MAX_OUTPUT]
        return proc.wait(), bytes(tail), total
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        if sink is not None:
            sink.close()


def _tail(data: bytes) -> str:
    lines = data[-MAX_OUTPUT:].decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-TAIL_LINES:])
