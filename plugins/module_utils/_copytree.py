# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A faithful tree copy for full-copy drivers (vfs) and fallbacks.

Preserves types, modes (setuid included), numeric owners, xattrs, nanosecond times
and hardlinks inside the tree.  File data is cloned with ``FICLONE`` (a reflink:
no data copied on btrfs and xfs with reflink=1), else ``copy_file_range`` (in-kernel
copy).  Never follows a symlink.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Callable, Dict, List, Optional, Tuple

FICLONE = 0x40049409
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeCopier:
    """Copies one tree; counts files and bytes; remembers whether reflinks worked."""

    def __init__(self, reflink: bool = True,
                 keep_xattr: Optional[Callable[[str, bytes], bool]] = None) -> None:
        """``keep_xattr(name, value)``: whether to copy that extended attribute (all
        are copied without it)."""
        self.reflink = reflink
        self.keep_xattr = keep_xattr
        self.files = 0
        self.bytes = 0
        self._links: Dict[Tuple[int, int], bytes] = {}
        self._dst_root = -1

    def copy(self, src: str, dst: str) -> None:
        """Create ``dst`` (which must not exist) as a copy of directory ``src``."""
        os.mkdir(dst, 0o700)
        sfd = os.open(src, _DIR_FLAGS)
        dfd = os.open(dst, _DIR_FLAGS)
        self._dst_root = dfd
        try:
            self._copy_dir(sfd, dfd, b"")
            self._meta(sfd, dfd, os.fstat(sfd))
        finally:
            os.close(sfd)
            os.close(dfd)
            self._dst_root = -1

    def copy_children(self, src: str, dst: str) -> None:
        """Copy what directory ``src`` holds into the existing directory ``dst``, leaving
        ``dst``'s own attributes as they are."""
        sfd = os.open(src, _DIR_FLAGS)
        dfd = os.open(dst, _DIR_FLAGS)
        self._dst_root = dfd
        try:
            self._copy_dir(sfd, dfd, b"")
        finally:
            os.close(sfd)
            os.close(dfd)
            self._dst_root = -1

    def _copy_dir(self, sfd: int, dfd: int, rel: bytes) -> None:
        """Copy what ``sfd`` holds into ``dfd``, depth first without recursion: a layer
        may nest directories 2000 deep within PATH_MAX, deeper than Python's stack and
        than the descriptors a process may hold, so each side keeps one descriptor and
        goes back up through ".."."""
        sfd, dfd = os.dup(sfd), os.dup(dfd)
        above: List[Tuple[os.stat_result, List[bytes], bytes]] = []
        names = _names(sfd)
        try:
            while True:
                if not names:
                    if not above:
                        return
                    st, names, rel = above.pop()
                    self._meta(sfd, dfd, st)
                    sfd = _move(sfd, b"..")
                    dfd = _move(dfd, b"..")
                    continue
                name = names.pop()
                st = os.lstat(name, dir_fd=sfd)
                if not stat.S_ISDIR(st.st_mode):
                    self._copy_entry(sfd, dfd, rel, name, st)
                    continue
                os.mkdir(name, 0o700, dir_fd=dfd)
                sfd = _move(sfd, name)
                dfd = _move(dfd, name)
                above.append((st, names, rel))
                names, rel = _names(sfd), rel + name + b"/"
        finally:
            os.close(sfd)
            os.close(dfd)

    def _copy_entry(self, sfd: int, dfd: int, rel: bytes, name: bytes,
                    st: os.stat_result) -> None:
        """Copy one non-directory; a second name of a file already copied is a hardlink."""
        mode = st.st_mode
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self._links:
            os.link(self._links[key], name, src_dir_fd=self._dst_root, dst_dir_fd=dfd,
                    follow_symlinks=False)
            return
        if stat.S_ISREG(mode):
            self._copy_file(sfd, dfd, name, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd,
                     follow_symlinks=False)
        else:
            os.mknod(name, mode, st.st_rdev, dir_fd=dfd)
            _copy_meta_path(sfd, dfd, name, st, self.keep_xattr)
        if st.st_nlink > 1:
            self._links[key] = rel + name

    def _copy_file(self, sfd: int, dfd: int, name: bytes, st: os.stat_result) -> None:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                self._copy_data(src, dst, st.st_size)
                self._meta(src, dst, st)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.files += 1
        self.bytes += st.st_size

    def _meta(self, src_fd: int, dst_fd: int, st: os.stat_result) -> None:
        _copy_meta(src_fd, dst_fd, st, self.keep_xattr)

    def _copy_data(self, src: int, dst: int, size: int) -> None:
        if size == 0:
            return
        if self.reflink:
            try:
                fcntl.ioctl(dst, FICLONE, src)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                    raise
                self.reflink = False
        left = size
        while left > 0:
            try:
                done = os.copy_file_range(src, dst, left)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                done = os.sendfile(dst, src, None, left)
            if done == 0:
                break
            left -= done


def _names(fd: int) -> List[bytes]:
    """The entries of directory ``fd``, last first (they are popped)."""
    with os.scandir(fd) as it:
        names = [os.fsencode(e.name) for e in it]
    names.reverse()
    return names


def _move(fd: int, name: bytes) -> int:
    """Directory ``name`` (a child, or "..") of ``fd``; ``fd`` is closed once it is open."""
    moved = os.open(name, _DIR_FLAGS, dir_fd=fd)
    os.close(fd)
    return moved


def copy_xattrs(src: "int | bytes", dst: "int | bytes",
                keep: Optional[Callable[[str, bytes], bool]] = None) -> None:
    follow = isinstance(src, int)  # descriptors cannot take follow_symlinks=False
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for xname in names:
        value = os.getxattr(src, xname, follow_symlinks=follow)
        if keep is None or keep(xname, value):
            os.setxattr(dst, xname, value, follow_symlinks=not isinstance(dst, bytes))


def _copy_meta(src_fd: int, dst_fd: int, st: os.stat_result,
               keep: Optional[Callable[[str, bytes], bool]] = None) -> None:
    os.chown(dst_fd, st.st_uid, st.st_gid)
    os.chmod(dst_fd, stat.S_IMODE(st.st_mode))
    copy_xattrs(src_fd, dst_fd, keep)
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_meta_path(sfd: int, dfd: int, name: bytes, st: os.stat_result,
                    keep: Optional[Callable[[str, bytes], bool]] = None) -> None:
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
    os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dfd)
    copy_xattrs(b"/proc/self/fd/%d/%s" % (sfd, name), b"/proc/self/fd/%d/%s" % (dfd, name), keep)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
