# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about filesystems and mounts, read from the kernel directly.

``statfs(2)`` for the backing filesystem type (Python's ``statvfs`` has no f_type),
``getdents64`` (through libc ``readdir``) for d_type support, ``mount(2)`` and
``umount2(2)`` through libc, and ``/proc/self/mountinfo`` for what is mounted where.
All of it is standard library (ctypes) so modules run on bare managed hosts.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, TypeVar

from ansible_collections.strata.layers.plugins.module_utils._atomic import libc

FS_MAGIC: Dict[int, str] = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0x65735546: "fuse",
    0x5346544E: "ntfs",
    0x4D44: "vfat",
    0x858458F6: "ramfs",
    0x73717368: "squashfs",
    0xFF534D42: "cifs",
    0x01021997: "9p",
    0xF2F52010: "f2fs",
    0x6A656A63: "fakeowner",
}


class _Statfs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong), ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong), ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4),
    ]


def fs_type(path: str) -> str:
    """Name of the filesystem type holding ``path`` (``ext4``, ``xfs``, ... or ``0x....``)."""
    buf = _Statfs()
    if libc().statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    magic = buf.f_type & 0xFFFFFFFF
    return FS_MAGIC.get(magic, "0x%x" % magic)


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


DT_UNKNOWN = 0


def supports_d_type(directory: str) -> bool:
    """True when ``readdir`` reports file types under ``directory`` (overlay needs it).

    Reads the directory with libc's readdir and looks at the d_type reported for its
    ``.`` entry: filesystems without d_type (xfs with ftype=0, ext4 without the
    filetype feature) report DT_UNKNOWN for every entry.  Writes nothing.
    """
    lib = libc()
    lib.opendir.restype = ctypes.c_void_p
    lib.opendir.argtypes = [ctypes.c_char_p]
    lib.readdir.restype = ctypes.POINTER(_Dirent)
    lib.readdir.argtypes = [ctypes.c_void_p]
    lib.closedir.argtypes = [ctypes.c_void_p]
    handle = lib.opendir(os.fsencode(directory))
    if not handle:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), directory)
    try:
        while True:
            entry = lib.readdir(handle)
            if not entry:
                return False
            if entry.contents.d_name in (b".", b".."):
                return entry.contents.d_type != DT_UNKNOWN
    finally:
        lib.closedir(handle)


MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2


def mount(source: str, target: str, fstype: Optional[str], flags: int = 0,
          options: Optional[str] = None) -> None:
    lib = libc()
    rc = lib.mount(os.fsencode(source), os.fsencode(target),
                   os.fsencode(fstype) if fstype else None, ctypes.c_ulong(flags),
                   options.encode() if options else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (fstype or source, target, os.strerror(err)))


def umount(target: str, flags: int = 0) -> None:
    if libc().umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "umount %s: %s" % (target, os.strerror(err)))


@dataclass
class MountEntry:
    mount_id: int
    parent_id: int
    mount_point: str
    fstype: str
    source: str
    options: str
    super_options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def mounts() -> List[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", "rb") as handle:
        for line in handle.read().decode("utf-8", "surrogateescape").splitlines():
            left, _sep, right = line.partition(" - ")
            fields = left.split()
            tail = right.split()
            if len(fields) < 6 or len(tail) < 3:
                continue
            entries.append(MountEntry(int(fields[0]), int(fields[1]), _unescape(fields[4]),
                                      tail[0], _unescape(tail[1]), fields[5], tail[2]))
    return entries


def mount_at(path: str) -> Optional[MountEntry]:
    """The topmost mount whose mount point is exactly ``path``, if any."""
    real = os.path.realpath(path)
    found = None
    for entry in mounts():
        if entry.mount_point == real:
            found = entry
    return found


def mounts_below(path: str) -> List[MountEntry]:
    real = os.path.realpath(path).rstrip("/") + "/"
    return [m for m in mounts() if m.mount_point.startswith(real)]


def processes_using(path: str) -> List[str]:
    """``pid (command)`` of processes whose cwd, root or open files lie under ``path``."""
    real = os.path.realpath(path).rstrip("/")
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        links = ["/proc/%s/cwd" % pid, "/proc/%s/root" % pid]
        try:
            links += ["/proc/%s/fd/%s" % (pid, fd) for fd in os.listdir("/proc/%s/fd" % pid)]
        except OSError:
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == real or target.startswith(real + "/"):
                found.append("%s (%s)" % (pid, _comm(pid)))
                break
    return found


def _comm(pid: str) -> str:
    try:
        with open("/proc/%s/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# directories a walk by descriptors keeps open at once: the deepest trees the applier
# accepts are ~2000 levels, past a process's usual 1024 descriptors
OPEN_LEVELS = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
AnyPath = TypeVar("AnyPath", str, bytes)
# what a walk that tolerates a tree changing under it skips, as ``os.scandir`` did: gone,
# unreadable, no longer a directory (a symlink now: ``O_NOFOLLOW``)
_GONE = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ELOOP)
# what opening a directory of a live tree by name meets when it went or became a link
VANISHED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def walk_dirs(top: AnyPath, visit: "Callable[[AnyPath, int, Any], List[Tuple[AnyPath, Any]]]",
              data: Any = None, tolerant: bool = False, live: bool = False) -> None:
    """Walk the tree at ``top`` by directory descriptors: ``visit(rel, fd, data)`` reads
    directory ``rel`` (relative to ``top``, ``fd`` open on it; ``data``: what its
    parent's visit gave with its name, for ``top`` the argument) and returns the
    subdirectories to walk as ``(name, data)`` pairs, names in the type of ``top``.
    Each entry can then be read with ``fstatat`` of its name (``os.scandir(fd)``)
    instead of an ``lstat`` of a path the kernel resolves from ``/`` again. ``top`` is
    opened following a link; nothing below it is.

    The first ``OPEN_LEVELS`` levels stay open while their subdirectories are walked,
    deeper ones are opened from the deepest open one; every descriptor is closed, on
    errors too. ``tolerant``: a directory that cannot be opened (gone, no longer one,
    unreadable) is skipped, as is ``top``; else the error is raised.  ``live``: the tree
    may be changing (a running container's): a directory below ``top`` that is gone or
    no longer a directory when its turn comes is skipped (never followed), as Docker's
    size walk leaves out what disappears while it walks."""
    sep = b"/" if isinstance(top, bytes) else "/"
    levels: List[Tuple[AnyPath, Optional[int], Iterator[Tuple[AnyPath, Any]]]] = []
    try:
        _walk_into(levels, top, top[:0], data, visit, tolerant, live)
        while levels:
            rel, fd, below = levels[-1]
            child = next(below, None)
            if child is None:
                levels.pop()
                if fd is not None:
                    os.close(fd)
                continue
            name, given = child
            _walk_into(levels, top, rel + sep + name if rel else name, given, visit, tolerant,
                       live)
    finally:
        for _rel, fd, _below in levels:
            if fd is not None:
                os.close(fd)


def _walk_into(levels: list, top: AnyPath, rel: AnyPath, data: Any, visit: Callable,
               tolerant: bool, live: bool = False) -> None:
    """Open directory ``rel`` (below the deepest open level), visit it, and push it:
    open while its subdirectories are walked unless ``OPEN_LEVELS`` are open already."""
    try:
        if levels:
            anchor, at, _below = levels[min(len(levels), OPEN_LEVELS) - 1]
            fd = _open_below(at, rel[len(anchor) + 1:] if anchor else rel)
        else:
            fd = os.open(top, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as exc:
        if tolerant and exc.errno in _GONE or live and levels and exc.errno in VANISHED:
            return
        raise
    kept: Optional[int] = fd
    try:
        below = visit(rel, fd, data)
        if len(levels) >= OPEN_LEVELS:
            kept = None
            os.close(fd)
    except BaseException:
        os.close(fd)
        raise
    levels.append((rel, kept, iter(below)))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


# openat2(2) (Linux 5.6) has one number on every architecture that numbers new calls
# alike since 5.1 (not alpha, ia64 or mips, which are left to the fallback)
_SYS_OPENAT2 = 437
_OPENAT2_MACHINES = ("x86_64", "i386", "i686", "aarch64", "armv5tel", "armv5tejl", "armv6l",
                     "armv7l", "armv8l", "ppc64le", "ppc64", "s390x", "riscv64",
                     "loongarch64")
_RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x04, 0x08
_PATH_MAX = 4096
# None: not tried yet; False: not here (fall back to one openat per component)
_openat2_state: Dict[str, Optional[bool]] = {
    "works": None if platform.machine() in _OPENAT2_MACHINES else False}


def _openat2(at: int, rel: bytes) -> Optional[int]:
    """``openat2(at, rel)`` of a directory with no symlink anywhere on the path and never
    outside ``at``; None where the kernel has no such call (before 5.6, or a seccomp
    filter refuses it: the first call tells) or the path is too long for one call (a
    container's long names: one component at a time has no such limit)."""
    if _openat2_state["works"] is False or len(rel) >= _PATH_MAX:
        return None
    how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH)
    for _attempt in range(3):
        fd = libc().syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(at), ctypes.c_char_p(rel),
                            ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            _openat2_state["works"] = True
            return fd
        err = ctypes.get_errno()
        if err == errno.EAGAIN:  # a rename or mount raced the lookup: the kernel asks again
            continue
        if err == errno.ENAMETOOLONG:
            return None
        if _openat2_state["works"] is None and err in (errno.ENOSYS, errno.EPERM):
            _openat2_state["works"] = False
            return None
        raise OSError(err, os.strerror(err), os.fsdecode(rel))
    return None


def _open_below(at: int, rel: AnyPath) -> int:
    """Open directory ``rel`` below descriptor ``at``, never through a symlink: a link
    swapped in for a directory of the path (a running container can) fails the open
    (``ELOOP``/``ENOTDIR``) instead of leading the walk out.  One ``openat2`` call where
    the kernel has it, else one ``openat`` per component, each with ``O_NOFOLLOW``
    (a directory at depth d then costs d - ``OPEN_LEVELS`` calls)."""
    if _openat2_state["works"] is not False:
        fd = _openat2(at, os.fsencode(rel))
        if fd is not None:
            return fd
    sep = b"/" if isinstance(rel, bytes) else "/"
    fd = at
    try:
        for name in rel.split(sep):
            opened = os.open(name, _DIR_FLAGS, dir_fd=fd)
            if fd != at:
                os.close(fd)
            fd = opened
    except BaseException:
        if fd != at:
            os.close(fd)
        raise
    return fd


def allocated_bytes(root: str,
                    known: Optional[Dict[str, Tuple[int, Set[Tuple[int, int]]]]] = None) -> int:
    """Bytes allocated under ``root`` (hardlinks once; mounts below it skipped).

    Mount points are skipped by path, not by device number: btrfs subvolumes each have
    their own st_dev but are part of the store.  ``known``: directories (real paths)
    whose contents the caller already measured, with the inodes of several links among
    them: their bytes are taken as given and those inodes are not counted again if
    linked elsewhere too; such a directory with something mounted below it is walked.
    Walked by descriptors (``walk_dirs``); what vanishes or turns unreadable meanwhile
    is left out.
    """
    seen: Set[Tuple[int, int]] = set()
    if not os.path.lexists(root):
        return 0
    skip = {m.mount_point for m in mounts_below(root)}
    sizes: Dict[str, int] = {}
    for path, (size, linked) in (known or {}).items():
        if not any(m == path or m.startswith(path + "/") for m in skip):
            sizes[path] = size
            seen |= linked
    top = os.path.realpath(root)
    prefix = top.rstrip("/") + "/"
    skipped, given = _by_parent(dict.fromkeys(skip, 0)), _by_parent(sizes)
    total = [0]

    def visit(rel: str, fd: int, _data: Any) -> List[Tuple[str, Any]]:
        here = prefix + rel if rel else top
        below: List[Tuple[str, Any]] = []
        total[0] += _allocated_in(fd, seen, skipped.get(here, {}), given.get(here, {}), below)
        return below

    walk_dirs(top, visit, tolerant=True)
    return total[0]


def first_link(st: os.stat_result, seen: Set[Tuple[int, int]]) -> bool:
    """For an inode of several links (``st_nlink > 1``, checked by the caller so that
    the common single-link entry costs no call): whether this is the first of its links
    met, recorded in ``seen``. What ``du`` does: a hardlinked file's blocks count once."""
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def _by_parent(paths: Dict[str, int]) -> Dict[str, Dict[str, int]]:
    """``{"/a/b": n}`` as ``{"/a": {"b": n}}``."""
    out: Dict[str, Dict[str, int]] = {}
    for path, value in paths.items():
        parent, _sep, name = path.rpartition("/")
        out.setdefault(parent or "/", {})[name] = value
    return out


def _allocated_in(fd: int, seen: Set[Tuple[int, int]], skipped: Dict[str, int],
                  given: Dict[str, int], below: List[Tuple[str, Any]]) -> int:
    """The bytes directory ``fd``'s entries allocate (a ``given`` one's contents as
    given), its other subdirectories added to ``below``."""
    total = 0
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.name in skipped:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_nlink > 1 and not first_link(st, seen):
                continue
            total += st.st_blocks * 512
            if entry.name in given:
                total += given[entry.name]
            elif stat.S_ISDIR(st.st_mode):
                below.append((entry.name, None))
    return total
