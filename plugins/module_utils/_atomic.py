# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable writes, in one place.

Every metadata write in the store goes through ``write_file``: a temp file in the
same directory, write, fsync, ``os.replace``, fsync of the directory; ``write_stream``
is the same for data that arrives in pieces (an exported archive or blob).  A record of
several files is staged in a directory and made visible by ``rename_durable``.
Layer data written by the tar applier is flushed with ``syncfs`` (one call for the
whole filesystem, cheaper than an fsync per file) *before* the record that makes it
addressable is renamed into place.

Temp names start with ``TEMP_PREFIX`` so that a crash leftover is recognisable and
removed when the store is next opened.

Nothing else under ``plugins/`` renames over a file or opens one for writing, except
the writers listed (with the reason) in ``tests/unit/test_source.py``: layer files
written by the applier, lock files, scratch files, the container's output.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import stat
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._errors import NoSpace, StoreError

TEMP_PREFIX = ".tmp-"

_libc: Optional[ctypes.CDLL] = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:  # not glibc: find_library forks ldconfig, so only as a fallback
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def temp_name(base: str = "") -> str:
    return "%s%s%s" % (TEMP_PREFIX, base + "-" if base else "", secrets.token_hex(6))


def wrap_os_error(exc: OSError, what: str) -> StoreError:
    """Turn an OSError into the store's error, ENOSPC into NoSpace."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace("no space left on the filesystem while %s: free space under the store "
                       "(or prune it with strata.layers.store_prune) and run again; nothing was "
                       "kept" % what)
    return StoreError("%s failed: %s" % (what, exc.strerror or exc))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str) -> None:
    """Flush every dirty page of the filesystem holding ``path`` (syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc().syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, mode: int = 0o644,
               owner: Optional[Tuple[int, int]] = None) -> None:
    """Atomically and durably replace ``path`` with ``data`` (``owner``: uid, gid)."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, temp_name(os.path.basename(path)))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
                os.fchmod(fd, mode)  # chown clears set-id bits; the mode is the caller's
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise wrap_os_error(exc, "writing %s" % path) from exc
    fsync_dir(directory)


@contextmanager
def write_stream(path: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """``write_file`` for data written in pieces: yields an unbuffered binary file on a
    temp name beside ``path`` (its ``fileno()`` may be written to directly).  A clean
    exit of the block fsyncs it, renames it over ``path`` and fsyncs the directory; an
    exception removes it and leaves ``path`` as it was."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, temp_name(os.path.basename(path)))
    try:
        handle = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                   mode), "wb", buffering=0)
    except OSError as exc:
        raise wrap_os_error(exc, "writing %s" % path) from exc
    done = False
    try:
        yield handle
        _replace_with(handle, tmp, path)
        done = True
    finally:
        if not done:
            handle.close()
            _unlink_quietly(tmp)
    fsync_dir(directory)


def _replace_with(handle: BinaryIO, tmp: str, path: str) -> None:
    """The commit of ``write_stream``: the data on disk, then the name."""
    try:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(tmp, path)
    except OSError as exc:
        raise wrap_os_error(exc, "writing %s" % path) from exc


def dumps(obj: Any) -> bytes:
    """Canonical JSON used for every record the store writes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def write_json(path: str, obj: Any) -> None:
    write_file(path, dumps(obj) + b"\n")


def read_json(path: str) -> Any:
    with open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def rename_durable(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` (a file or a whole staged record) and persist it."""
    os.rename(src, dst)
    fsync_dir(os.path.dirname(dst) or ".")
    src_dir = os.path.dirname(src) or "."
    if os.path.realpath(src_dir) != os.path.realpath(os.path.dirname(dst) or "."):
        fsync_dir(src_dir)


def exchange_durable(a: str, b: str) -> None:
    """Swap ``a`` and ``b`` (both exist, one filesystem) in one step (renameat2 with
    RENAME_EXCHANGE), and persist it: at every moment each name holds one of the two."""
    swap = getattr(libc(), "renameat2", None)
    if swap is None:
        raise OSError(errno.ENOSYS, "renameat2 is not in this C library", a)
    if swap(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)
    fsync_dir(os.path.dirname(a) or ".")
    if os.path.realpath(os.path.dirname(a) or ".") != os.path.realpath(os.path.dirname(b) or "."):
        fsync_dir(os.path.dirname(b) or ".")


def makedirs(path: str, mode: int = 0o700) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def remove_tree(path: "str | bytes") -> None:
    """Remove ``path`` and everything below it, never following symlinks.

    Works on read-only directories (layers keep the modes of their tar) and does not
    fail when ``path`` is already gone: removal is used by crash recovery, where a
    previous attempt may have removed part of the tree.
    """
    path = os.fsdecode(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    parent = os.path.dirname(path.rstrip("/")) or "."
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_entry(fd, os.path.basename(path.rstrip("/")))
    finally:
        os.close(fd)


def _remove_entry(dir_fd: int, name: str) -> None:
    if not _unlink_unless_dir(dir_fd, name):
        return
    fd = _open_dir(dir_fd, name)
    if fd < 0:
        return
    # Depth first without recursion, holding one descriptor: a layer may nest
    # directories 2000 deep within PATH_MAX, deeper than Python's stack and than the
    # descriptors a process may hold.  Each level keeps the names of its subdirectories
    # still to remove, so every directory is listed once; going up is through "..".
    pending = [_empty_files(fd)]
    names: List[str] = []
    try:
        while pending:
            if pending[-1]:
                sub = pending[-1].pop()
                child = _open_dir(fd, sub)
                if child < 0:
                    continue
                os.close(fd)
                fd = child
                names.append(sub)
                pending.append(_empty_files(fd))
                continue
            pending.pop()
            if names:
                parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _empty_files(fd: int) -> List[str]:
    """Unlink every non-directory of ``fd``; return its subdirectories."""
    return [entry for entry in os.listdir(fd) if _unlink_unless_dir(fd, entry)]


def _unlink_unless_dir(dir_fd: int, name: str) -> bool:
    """Unlink a non-directory; True when ``name`` is a directory to empty first."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return False
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        return True
    except PermissionError:
        # unlink(2) on a directory gives EISDIR on Linux; EPERM comes from an
        # immutable file or a directory on some filesystems: try it as a directory.
        return True


def _open_dir(dir_fd: int, name: str) -> int:
    """The directory ``name``, made writable (layers keep read-only modes); -1 if gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return -1
    os.chmod(fd, 0o700)
    return fd


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
