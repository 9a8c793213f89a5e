# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Opening paths below a root without ever leaving it.

Every component is opened relative to its parent's descriptor with ``O_NOFOLLOW``:
a symlink (or a non-directory) in the middle of a path is an error, never a way out
of the root.  ``..`` never reaches here (tar names are normalised first).  Opened
directories are cached (bounded) because a tar lists many files per directory.
"""
from __future__ import annotations

import errno
import os
from collections import OrderedDict
from typing import Callable, List, Optional

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# create(parent_fd, name, relpath) makes a missing directory; on_open(relpath, created)
CreateDir = Callable[[int, bytes, bytes], None]


class NotBeneath(Exception):
    """A path component is a symlink or not a directory (``blocker`` names it)."""

    def __init__(self, blocker: bytes, reason: str) -> None:
        super().__init__(reason)
        self.blocker = blocker
        self.reason = reason


class Beneath:
    """Directory descriptors for relative paths under ``root`` (b"" is the root)."""

    def __init__(self, root: str, cache_size: int = 128) -> None:
        self.root = root
        self._root_fd = os.open(root, DIR_FLAGS)
        self._cache: "OrderedDict[bytes, int]" = OrderedDict()
        self._cache_size = cache_size

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> "Beneath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root_fd(self) -> int:
        return self._root_fd

    def dir_fd(self, rel: bytes, create: Optional[CreateDir] = None,
               on_open: Optional[Callable[[bytes], None]] = None) -> int:
        """A descriptor of directory ``rel``; owned by the cache, do not close it."""
        if not rel:
            return self._root_fd
        fd = self._cache.get(rel)
        if fd is not None:
            self._cache.move_to_end(rel)
            return fd
        # down from the nearest cached ancestor, without recursion: a layer may nest
        # directories 2000 deep within PATH_MAX, deeper than Python's stack
        cut = len(rel)
        while cut > 0:
            cut = rel.rfind(b"/", 0, cut)
            if cut > 0 and rel[:cut] in self._cache:
                break
        fd = self.dir_fd(rel[:cut]) if cut > 0 else self._root_fd
        while cut < len(rel):
            end = rel.find(b"/", cut + 1)
            end = len(rel) if end < 0 else end
            fd = self._open_child(fd, rel[:end], create, on_open)
            cut = end
        return fd

    def _open_child(self, parent_fd: int, rel: bytes, create: Optional[CreateDir],
                    on_open: Optional[Callable[[bytes], None]]) -> int:
        name = rel.rpartition(b"/")[2]
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if create is None:
                raise
            create(parent_fd, name, rel)
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotBeneath(rel, "is a symlink" if _is_symlink(parent_fd, name)
                                 else "is not a directory") from exc
            raise
        if on_open is not None:
            on_open(rel)
        self._cache[rel] = fd
        if len(self._cache) > self._cache_size:
            _key, old = self._cache.popitem(last=False)
            os.close(old)
        return fd

    def invalidate(self, rel: bytes) -> None:
        """Forget ``rel`` and everything below it (it was removed or replaced)."""
        prefix = rel + b"/"
        for key in [k for k in self._cache if k == rel or k.startswith(prefix)]:
            os.close(self._cache.pop(key))

    def open_file(self, rel: bytes, flags: int = os.O_RDONLY) -> int:
        """Open a non-directory below the root (never through or at a symlink)."""
        parent, _sep, name = rel.rpartition(b"/")
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd(parent))


def _is_symlink(dir_fd: int, name: bytes) -> bool:
    try:
        os.readlink(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False


MAX_SYMLINKS = 40


def resolve_scoped(path: bytes, link_target: Callable[[bytes], Optional[bytes]],
                   follow_last: bool = True) -> List[bytes]:
    """The components of ``path`` with every symlink resolved as a chroot would resolve
    them: ``..`` and absolute targets never climb above the root.  ``link_target(rel)``
    is the target of the symlink at ``rel`` (components joined by "/"), or None when
    ``rel`` is not one.  NotBeneath past MAX_SYMLINKS hops (a loop)."""
    todo = [p for p in path.split(b"/") if p]
    done: List[bytes] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == b".":
            continue
        if part == b"..":
            if done:
                done.pop()
            continue
        target = link_target(b"/".join(done + [part])) if todo or follow_last else None
        if target is not None:
            hops += 1
            if hops > MAX_SYMLINKS:
                raise NotBeneath(b"/".join(done + [part]), "is part of a symlink loop")
            if target.startswith(b"/"):
                done = []
            todo = [p for p in target.split(b"/") if p] + todo
            continue
        done.append(part)
    return done


def resolve_beneath(root: bytes, path: bytes, follow_last: bool = True) -> bytes:
    """``path`` inside directory ``root``, with symlinks resolved as a chroot at ``root``
    would resolve them: ``..`` and absolute targets never leave ``root``.

    The build context and a RUN step's root are read this way, as Docker scopes them
    (a context symlink to /etc means the context's own etc/, not the host's)."""
    def link_target(rel: bytes) -> Optional[bytes]:
        candidate = os.path.join(root, rel)
        return os.readlink(candidate) if os.path.islink(candidate) else None

    done = resolve_scoped(path, link_target, follow_last)
    return os.path.join(root, *done) if done else root
