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
from typing import Dict, Iterator, List, Optional, Tuple

FICLONE = 0x40049409
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeCopier:
    """Copies one tree; counts files and bytes; remembers whether reflinks worked."""

    def __init__(self, reflink: bool = True) -> None:
        self.reflink = reflink
        self.files = 0
        self.bytes = 0
        self._links: Dict[Tuple[int, int], bytes] = {}
        self._dst_root = -1

    def copy(self, src: str, dst: str, into: bool = False) -> None:
        """Create ``dst`` (which must not exist) as a copy of directory ``src``;
        ``into``: ``dst`` is an empty directory already (a new btrfs subvolume) that
        takes ``src``'s contents and attributes."""
        if not into:
            os.mkdir(dst, 0o700)
        sfd = os.open(src, _DIR_FLAGS)
        dfd = os.open(dst, _DIR_FLAGS)
        self._dst_root = dfd
        try:
            self._copy_dir(sfd, dfd, b"")
            _copy_meta(sfd, dfd, os.fstat(sfd))
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
                    _copy_meta(sfd, dfd, st)
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
            _copy_meta_path(sfd, dfd, name, st)
        if st.st_nlink > 1:
            self._links[key] = rel + name

    def _copy_file(self, sfd: int, dfd: int, name: bytes, st: os.stat_result) -> None:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                self._copy_data(src, dst, st.st_size)
                _copy_meta(src, dst, st)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.files += 1
        self.bytes += st.st_size

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
        # only the data extents: a sparse file's holes stay holes in the copy
        for start, end in _data_extents(src, size):
            _copy_range(src, dst, start, end)
        os.ftruncate(dst, size)


def _data_extents(fd: int, size: int) -> Iterator[Tuple[int, int]]:
    """(start, end) of each data extent of ``fd`` (SEEK_DATA / SEEK_HOLE); the whole
    file where the filesystem cannot tell."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:        # only a hole is left
                return
            if exc.errno != errno.EINVAL:
                raise
            yield pos, size                     # no SEEK_DATA here: copy it all
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    while start < end:
        try:
            done = os.copy_file_range(src, dst, end - start, start, start)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            os.lseek(dst, start, os.SEEK_SET)
            done = os.sendfile(dst, src, start, end - start)
        if done == 0:
            break
        start += done


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


def copy_xattrs(src: "int | bytes", dst: "int | bytes") -> None:
    follow = isinstance(src, int)  # descriptors cannot take follow_symlinks=False
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for xname in names:
        os.setxattr(dst, xname, os.getxattr(src, xname, follow_symlinks=follow),
                    follow_symlinks=not isinstance(dst, bytes))


def _copy_meta(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    os.chown(dst_fd, st.st_uid, st.st_gid)
    os.chmod(dst_fd, stat.S_IMODE(st.st_mode))
    copy_xattrs(src_fd, dst_fd)
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_meta_path(sfd: int, dfd: int, name: bytes, st: os.stat_result) -> None:
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
    os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dfd)
    copy_xattrs(b"/proc/self/fd/%d/%s" % (sfd, name), b"/proc/self/fd/%d/%s" % (dfd, name))
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)


class Shadow:
    """Private reflink copies of a container's changed files, made as its change stream
    reads them (commit, a build's RUN step).

    The stream reads a file's data from its copy, never from the container, and the new
    layer then takes that copy (linked into place) instead of writing the same bytes
    again: the layer's data is the stream's by construction, even if the container is
    written to meanwhile, and on btrfs and xfs the commit writes no data at all.  A
    filesystem that cannot clone (ext4) turns the shadow off at the first file, and
    the stream is read and written as usual.  The directory lives in the import's
    record directory, which a failed or killed import removes."""

    def __init__(self) -> None:
        self.path = ""
        self.dir_fd = -1
        self.enabled = True
        self.cloned = 0     # clones made (their names in the directory)
        self._names: Dict[bytes, bytes] = {}

    def open(self, directory: str) -> None:
        os.mkdir(directory, 0o700)
        self.path = directory
        self.dir_fd = os.open(directory, _DIR_FLAGS)

    def close(self) -> None:
        """Remove the clones no member took, and the directory."""
        if self.dir_fd >= 0:
            # listed afresh: btrfs does not show a descriptor opened before the entries
            for name in os.listdir(os.fsencode(self.path)):
                os.unlink(name, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = -1
            os.rmdir(self.path)
        self._names.clear()

    def clone(self, path: bytes, rel: bytes) -> Optional[int]:
        """A read descriptor on a private clone of the regular file at ``path``, kept for
        the member ``rel``; None when there is no shadow or the filesystem cannot
        clone (the caller reads ``path`` itself)."""
        if not self.enabled or self.dir_fd < 0:
            return None
        src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return self.clone_fd(src, rel)
        finally:
            os.close(src)

    def clone_fd(self, src: int, rel: bytes) -> Optional[int]:
        """``clone`` of the file open at ``src`` (the caller opened it safely)."""
        if not self.enabled or self.dir_fd < 0:
            return None
        name = b"%d" % self.cloned
        dst = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                      os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
        try:
            fcntl.ioctl(dst, FICLONE, src)
        except OSError as exc:
            os.close(dst)
            os.unlink(name, dir_fd=self.dir_fd)
            if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                self.enabled = False
                return None
            raise
        self._names[rel] = name
        self.cloned += 1
        return dst

    def take(self, rel: bytes, size: int, name: bytes, dir_fd: int) -> Optional[int]:
        """Link the clone kept for member ``rel`` (``size`` bytes) as ``name`` in
        ``dir_fd``, and return a descriptor on it; None when there is none, or when it
        could not make exactly the file that creating ``name`` would (then nothing is
        left at ``name`` and the caller writes the member's data itself)."""
        shadow = self._names.pop(rel, None)
        if shadow is None or _has_default_acl(dir_fd):
            return None     # a file created there would inherit an ACL a link does not
        fd = os.open(shadow, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            if os.fstat(fd).st_size != size:
                return None
            try:
                os.link(shadow, name, src_dir_fd=self.dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
                taken, fd = fd, -1
                return taken
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise           # as creating it would
                if exc.errno != errno.EXDEV:
                    return None
            # no hardlink across btrfs subvolumes: clone the clone (no data copied)
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                fcntl.ioctl(dst, FICLONE, fd)
            except OSError:
                os.close(dst)
                os.unlink(name, dir_fd=dir_fd)
                return None
            return dst
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(shadow, dir_fd=self.dir_fd)


def _has_default_acl(dir_fd: int) -> bool:
    try:
        os.getxattr(dir_fd, "system.posix_acl_default")
    except OSError:
        return False
    return True
