# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The safe tar applier: one pass over a layer stream that extracts it into a layer
directory, computes its diff_id and size, and records its headers.

Confinement rules (each refusal names the member at fault):

* names are normalised; absolute names, ``..`` components and NUL bytes are refused;
* every path is opened component by component with ``O_NOFOLLOW`` (``_safepath``):
  a member that would be written through a symlink is refused, whoever made it;
* a hardlink must point at a non-directory this same layer already created;
* symlink targets are stored verbatim: they are data, never followed here;
* ``trusted.*`` and overlay/fuse-overlayfs ``user.*`` attributes are refused: a layer
  must not smuggle in the whiteouts, opaque marks or redirects of the driver;
  ``security.capability`` and POSIX ACLs are applied, other ``security.*`` skipped;
* each path may be named once (directories may repeat, their metadata is updated);
  a path may not be both added and whited out by one layer; ``.wh..wh.*`` names other
  than the opaque marker (AUFS internals) are refused;
* owners are the numeric uid/gid of the header (owner names are ignored).

Whiteouts are converted to what the driver needs: ``device`` drivers (overlay2,
fuse-overlayfs) get 0/0 character devices and ``trusted.overlay.opaque=y``;
``delete`` drivers (vfs, btrfs), whose layer directory starts as a copy of its
parent, get the deletions applied.

The layer's data reaches the disk while it is applied: for ``layer_import``'s streams
(read ahead, see ``ChunkReader.stable``), an ``EarlyFlush`` worker starts a ``syncfs``
of the layer's filesystem each time ``EarlyFlush.EVERY`` bytes of files were written,
so the one the store makes after the apply (before the layer's record is written) has
little left to wait for.  It changes only when the flush is done, not what is durable.
"""
from __future__ import annotations

import ctypes
import errno
import os
import queue
import stat
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    libc, remove_tree, wrap_os_error)
from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath
from ansible_collections.strata.layers.plugins.module_utils._sparse import HOLE, SparseWriter
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, SYMTYPE, ChunkReader, HeaderParser, Member,
    Truncated)
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import TarSplitWriter

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
META_PREFIX = b".wh..wh."
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

K_DIR, K_IMPLICIT, K_FILE, K_OTHER, K_WHITEOUT = 1, 2, 3, 4, 5
MAX_NAME = 4095
MAX_COMPONENT = 255
MAX_EMBEDDED = 1 << 20

WHITEOUT_DEVICE = "device"
WHITEOUT_DELETE = "delete"

_REFUSED_XATTR_PREFIXES = ("trusted.", "user.overlay.", "user.fuseoverlayfs.",
                           "user.containers.")
_APPLIED_SYSTEM_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_XATTR_NAMESPACES = ("user.", "security.", "system.", "trusted.")
_INPUT_ERRNOS = (errno.EINVAL, errno.ENAMETOOLONG, errno.ERANGE, errno.E2BIG)


@dataclass
class ApplyResult:
    """What one pass over a layer stream found."""

    diff_id: str
    tar_size: int
    size: int
    entries: int


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


class Applier:
    """Applies one layer tar to ``root`` (a staged layer directory of a driver)."""

    def __init__(self, root: str, whiteouts: str, split: Optional[TarSplitWriter],
                 what: str = "layer", shadow: Optional[Shadow] = None) -> None:
        """``shadow``: clones of the stream's files (a commit's) to take instead of
        writing their data."""
        self.root = root
        self.shadow = shadow
        self.whiteouts = whiteouts
        self.split = split
        self.what = what
        self.seen: Dict[bytes, int] = {}
        self.opaque: Set[bytes] = set()
        self.dir_times: Dict[bytes, Tuple[int, int]] = {}
        self.size = 0
        self.entries = 0
        self.mtime_max = 0
        self._root_user = os.geteuid() == 0
        self._euid, self._egid = os.geteuid(), os.getegid()
        self._umask = _umask()
        # a set-group-ID directory gives new files its group, not the process's, and a
        # default ACL gives them its mode, not the umask's: once the layer root or any
        # directory of the tree may have either, every file gets its fchown and fchmod
        # (a full-copy driver's tree is inherited and not looked at: always there)
        self._inherits = whiteouts != WHITEOUT_DEVICE or _passes_down(root)
        self._tree = Beneath(root)
        self._member: Optional[Member] = None
        self._behind: Optional[WriteBehind] = None
        self._flush: Optional[EarlyFlush] = None
        self._dirtied = 0

    # ------------------------------------------------------------------ driving
    def apply(self, reader: ChunkReader) -> ApplyResult:
        reader.what = self.what
        parser = HeaderParser(reader)
        # the streams read ahead are layer_import's, whose layer is synced right after
        early = reader.stable
        try:
            while True:
                member = parser.next()
                if member is None:
                    break
                self._member = member
                self.entries += 1
                if member.mtime_ns > self.mtime_max:
                    self.mtime_max = member.mtime_ns
                if self.split is not None:
                    self.split.raw(member.raw)
                self._apply_member(reader, member)
                if early and member.is_file:
                    self._dirty(member.size)
            self._member = None
            self._settle_behind()
            self._settle_flush()
            self._trailer(reader, parser.end_block)
            self._finish_dirs()
        except NotBeneath as exc:
            raise self._refuse("would be written through %s, which %s"
                               % (_show(exc.blocker), exc.reason)) from exc
        except OSError as exc:
            raise self._os_error(exc) from exc
        except (ValueError, OverflowError) as exc:
            # a NUL inside a PAX link target or xattr name, a uid, device number or time
            # the kernel's types cannot hold: the tar's fault, not the store's
            raise self._refuse("has a value this system cannot take (%s)" % exc) from exc
        finally:
            if self._behind is not None:
                self._behind.stop()
            if self._flush is not None:
                self._flush.stop()
            self._tree.close()
        return ApplyResult(diff_id="sha256:" + reader.hasher.hexdigest(), tar_size=reader.total,
                           size=self.size, entries=self.entries)

    def _refuse(self, reason: str, cls: type = InvalidInput) -> StoreError:
        if self._member is None:
            return cls("%s: %s" % (self.what, reason))
        name = self._member.display()
        return cls("%s: tar member %r %s; nothing was imported" % (self.what, name, reason),
                   member=name)

    def _os_error(self, exc: OSError) -> StoreError:
        if self._member is not None and exc.errno in _INPUT_ERRNOS:
            # the kernel refused a value of the tar: an ACL it cannot parse, a link
            # target longer than PATH_MAX, an attribute name or value out of range
            return self._refuse("has a value the filesystem refuses (%s)" % exc.strerror)
        where = "member %r" % self._member.display() if self._member else "the layer"
        err = wrap_os_error(exc, "writing %s of %s" % (where, self.what))
        if self._member is not None:
            err.details["member"] = self._member.display()
        return err

    def _trailer(self, reader: ChunkReader, end_block: bytes) -> None:
        if self.split is not None and end_block:
            self.split.raw(end_block)
        while True:
            piece = reader.read_some(1 << 20)
            if not piece:
                return
            if bytes(piece).strip(b"\0"):
                raise Corrupt("%s: data follows the end-of-archive marker at offset %d (a "
                              "second archive or garbage); refused" % (self.what, reader.total))
            if self.split is not None:
                self.split.raw(piece)

    # ------------------------------------------------------------------ members
    def _normalize(self, member: Member) -> bytes:
        raw = member.name
        if b"\0" in raw:
            raise self._refuse("has a NUL byte in its name")
        if raw.startswith(b"/"):
            raise self._refuse("has an absolute name; layer members must be relative")
        parts = raw.split(b"/")
        if b"" in parts or b"." in parts:
            parts = [p for p in parts if p not in (b"", b".")]
        if b".." in parts:
            raise self._refuse("escapes the layer root with '..'")
        path = b"/".join(parts)
        if len(path) > MAX_NAME or (len(path) > MAX_COMPONENT and
                                    max(map(len, parts)) > MAX_COMPONENT):
            raise self._refuse("has a name longer than the filesystem allows (%d bytes, or a "
                               "component over %d)" % (MAX_NAME, MAX_COMPONENT))
        if WHITEOUT_PREFIX in path:
            for part in parts[:-1]:
                if part.startswith(WHITEOUT_PREFIX):
                    raise self._refuse("lies below a whiteout name")
        return path

    def _apply_member(self, reader: ChunkReader, member: Member) -> None:
        path = self._normalize(member)
        base = path.rpartition(b"/")[2]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(path, base)
            self._embed_payload(reader, member)
            return
        if not path:
            if member.typeflag != DIRTYPE:
                raise self._refuse("names the layer root but is not a directory")
            self._dir_metadata(self._tree.root_fd, None, b"", member)
            self._embed_payload(reader, member)
            return
        kind = self.seen.get(path)
        if member.typeflag == DIRTYPE:
            self._directory(path, kind, member)
            self._embed_payload(reader, member)
            return
        if kind is not None:
            raise self._refuse(self._conflict(kind))
        parent, _sep, name = path.rpartition(b"/")
        pfd = self._parent(parent)
        self._clear_inherited(pfd, name, path)
        if member.is_file:
            self._regular(reader, pfd, name, path, member)
            self.seen[path] = K_FILE
            return
        if member.typeflag == LNKTYPE:
            self._hardlink(pfd, name, member)
        elif member.typeflag == SYMTYPE:
            os.symlink(member.linkname, name, dir_fd=pfd)
            # Docker's layer size (a walk of the layer's directory with lstat) counts a
            # symlink as the length of its target
            self.size += len(member.linkname)
            self._owner(pfd, name, None, member, symlink=True)
            self._xattrs(pfd, name, None, member)
            os.utime(name, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)
        else:
            self._special(pfd, name, member)
        self.seen[path] = K_OTHER

    @staticmethod
    def _conflict(kind: int) -> str:
        if kind == K_WHITEOUT:
            return "re-adds a path this layer also whites out"
        if kind in (K_DIR, K_IMPLICIT):
            return "replaces a directory this layer already created"
        return "names a path a second time (duplicate entry)"

    def _parent(self, parent: bytes) -> int:
        return self._tree.dir_fd(parent, create=self._implicit_dir, on_open=self._saw_dir)

    def _saw_dir(self, rel: bytes) -> None:
        self.seen.setdefault(rel, K_IMPLICIT)

    def _implicit_dir(self, parent_fd: int, name: bytes, rel: bytes) -> None:
        if self.seen.get(rel) == K_WHITEOUT:
            raise self._refuse("lies below a path this layer whites out")
        os.mkdir(name, 0o755, dir_fd=parent_fd)

    def _clear_inherited(self, pfd: int, name: bytes, path: bytes) -> None:
        """Remove what a full-copy layer inherited at ``path`` before replacing it."""
        if self.whiteouts != WHITEOUT_DELETE:
            return
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._tree.invalidate(path)
            remove_tree(_proc_path(pfd, name))
        else:
            os.unlink(name, dir_fd=pfd)

    def _directory(self, path: bytes, kind: Optional[int], member: Member) -> None:
        if kind is not None and kind not in (K_DIR, K_IMPLICIT):
            raise self._refuse(self._conflict(kind) if kind == K_WHITEOUT
                               else "replaces a file this layer already created with a directory")
        parent, _sep, name = path.rpartition(b"/")
        pfd = self._parent(parent)
        try:
            st: Optional[os.stat_result] = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            # only a full-copy layer can get here: it inherited a non-directory
            os.unlink(name, dir_fd=pfd)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=pfd)
        self.seen[path] = K_DIR
        fd = self._tree.dir_fd(path)
        self._dir_metadata(fd, pfd, path, member)

    def _dir_metadata(self, fd: int, pfd: Optional[int], path: bytes, member: Member) -> None:
        if member.mode & stat.S_ISGID or "system.posix_acl_default" in member.xattrs:
            self._inherits = True
        self._owner(pfd, None, fd, member)
        os.chmod(fd, member.mode)
        self._xattrs(pfd, None, fd, member)
        self.dir_times[path] = self._times(member)

    def _regular(self, reader: ChunkReader, pfd: int, name: bytes, path: bytes,
                 member: Member) -> None:
        # a commit's file already cloned by the change stream: the data is read (hashed,
        # recorded) but not written again
        fd = None if self.shadow is None else self.shadow.take(path, member.size, name, pfd)
        write = fd is None
        if fd is None:
            # created with its final permission bits (the staging tree is private to the
            # store): when the umask leaves them whole, no fchmod is needed
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, member.mode & 0o777, dir_fd=pfd)
        if write and member.size >= HOLE and not member.xattrs and reader.stable:
            self._write_behind(reader, fd, path, member)
            return
        try:
            # runs of zeros become holes: a sparse file stays sparse through a commit
            # or a migration instead of taking its full size.  A file smaller than one
            # hole window can have none: its data is written as it comes (most files of
            # a layer; no seek, no copy)
            writer = SparseWriter(fd) if write and member.size >= HOLE else None
            for view in self._data(reader, path, member):
                if writer is not None:
                    writer.write(view)
                elif write:
                    _write_all(fd, view)
            if writer is not None:
                writer.finish()
            self._file_metadata(fd, member, created=write)
        finally:
            os.close(fd)
        self._padding(reader, member)

    def _data(self, reader: ChunkReader, path: bytes, member: Member) -> Iterator[memoryview]:
        """The member's data as the stream gives it (its place noted in the header
        record); Truncated when the stream ends inside it."""
        left = member.size
        if left and self.split is not None:
            self.split.file(path, left)
        while left:
            view = reader.read_some(left)
            if not view:
                raise Truncated("%s: the stream ends inside the data of member %r"
                                % (self.what, member.display()), member=member.display())
            left -= len(view)
            yield view

    def _padding(self, reader: ChunkReader, member: Member) -> None:
        self.size += member.size
        pad = member.padding
        if pad:
            data = reader.read_exact(pad, "the padding of member %r" % member.display()) \
                if reader.available() < pad else reader.read_exact(pad, "")
            if self.split is not None:
                self.split.raw(data)

    def _write_behind(self, reader: ChunkReader, fd: int, path: bytes, member: Member) -> None:
        """A large file's data, owner, mode, times and close go to the WriteBehind
        worker (``fd`` with them) while this thread parses the next members."""
        if self._behind is None:
            self._behind = WriteBehind(self._finish_behind)
        behind = self._behind
        try:
            self._raise_behind()
            for view in self._data(reader, path, member):
                behind.write(fd, view, member)
        except BaseException:
            behind.abandon(fd, member)
            raise
        behind.finish(fd, member)
        self._padding(reader, member)

    def _finish_behind(self, fd: int, member: Member) -> None:
        """On the worker: a file the applier created, all its data written."""
        self._file_metadata(fd, member, created=True)

    def _raise_behind(self) -> None:
        """The worker's first error, raised here as if the member it stopped at failed."""
        failed = self._behind.failed if self._behind is not None else None
        if failed is not None:
            self._member = failed[0]
            raise failed[1]

    def _settle_behind(self) -> None:
        """Every file handed to the worker written and closed (before directory times
        are set and before the layer is synced)."""
        if self._behind is not None:
            self._behind.stop()
            self._raise_behind()

    def _dirty(self, size: int) -> None:
        """Count a file's pages handed to the kernel; every ``EarlyFlush.EVERY`` bytes,
        start a flush of the filesystem on the worker."""
        self._dirtied += (size + 4095) & ~4095
        if self._dirtied < EarlyFlush.EVERY:
            return
        self._dirtied = 0
        if self._flush is None:
            self._flush = EarlyFlush(self._tree.root_fd)
        self._flush.start()

    def _settle_flush(self) -> None:
        """The flushes done; the first one's error raised (a failed writeback is seen once
        by syncfs: the store's own syncfs after the apply might not see it again)."""
        if self._flush is not None:
            self._flush.stop()
            if self._flush.failed is not None:
                raise self._flush.failed

    def _file_metadata(self, fd: int, member: Member, created: bool) -> None:
        """Owner, mode, attributes and times of a file this applier just wrote.

        A file it created already has the owner and mode the kernel gave it: the
        process's ids and the creation mode less the umask (unless a set-group-ID
        directory or a default ACL passed something else down).  When those are the
        member's, the fchown and fchmod are left out (two system calls a file)."""
        given = created and not self._inherits
        if not (given and member.uid == self._euid and member.gid == self._egid):
            self._owner(None, None, fd, member)
        if not (given and member.mode == member.mode & 0o777 & ~self._umask):
            os.chmod(fd, member.mode)
        if member.xattrs:
            self._xattrs(None, None, fd, member)
        os.utime(fd, ns=self._times(member))

    def _hardlink(self, pfd: int, name: bytes, member: Member) -> None:
        target = member.linkname
        if b"\0" in target:
            raise self._refuse("is a hardlink to an invalid name")
        # an absolute link name is taken relative to the layer root, as GNU tar (which
        # strips the leading '/') and Docker's extraction (joined to the root) read it
        parts = [p for p in target.split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            raise self._refuse("is a hardlink that escapes the layer root with '..'")
        target = b"/".join(parts)
        if self.seen.get(target) not in (K_FILE, K_OTHER):
            raise self._refuse("is a hardlink to %r, which is not a file this layer created "
                               "before it" % _show(target))
        tparent, _sep, tname = target.rpartition(b"/")
        # opening the target's directory may evict (close) pfd from the descriptor
        # cache, and the kernel would hand its number to another directory: hold a copy
        own = os.dup(pfd)
        try:
            tfd = self._tree.dir_fd(tparent)
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=own, follow_symlinks=False)
        finally:
            os.close(own)

    def _special(self, pfd: int, name: bytes, member: Member) -> None:
        if member.typeflag == FIFOTYPE:
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            if not self._root_user:
                raise self._refuse("is a device node, which only root can create")
            kind = stat.S_IFCHR if member.typeflag == CHRTYPE else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
        self._owner(pfd, name, None, member)
        os.chmod(name, member.mode, dir_fd=pfd)
        self._xattrs(pfd, name, None, member)
        os.utime(name, ns=self._times(member), dir_fd=pfd, follow_symlinks=False)

    # ------------------------------------------------------------------ whiteouts
    def _whiteout(self, path: bytes, base: bytes) -> None:
        parent = path.rpartition(b"/")[0]
        if base == OPAQUE_MARKER:
            self._opaque(parent)
            return
        if base.startswith(META_PREFIX):
            raise self._refuse("is an AUFS metadata entry (.wh..wh.*), which layers may not carry")
        target = base[len(WHITEOUT_PREFIX):]
        if target in (b"", b".", b".."):
            raise self._refuse("is a whiteout of %r, which names no file" % _show(target))
        victim = parent + b"/" + target if parent else target
        kind = self.seen.get(victim)
        if kind == K_WHITEOUT:
            return
        if kind is not None:
            raise self._refuse("whites out %r, which this layer also adds" % _show(victim))
        pfd = self._parent(parent)
        if self.whiteouts == WHITEOUT_DEVICE:
            os.mknod(target, stat.S_IFCHR | 0, os.makedev(0, 0), dir_fd=pfd)
        else:
            self._clear_inherited(pfd, target, victim)
        self.seen[victim] = K_WHITEOUT

    def _opaque(self, directory: bytes) -> None:
        if not directory:
            raise self._refuse("marks the layer root opaque, which no driver can represent")
        kind = self.seen.get(directory)
        if kind == K_WHITEOUT:
            raise self._refuse("marks opaque a directory this layer whites out")
        fd = self._tree.dir_fd(directory, create=self._implicit_dir, on_open=self._saw_dir)
        self.seen.setdefault(directory, K_IMPLICIT)
        self.opaque.add(directory)
        if self.whiteouts == WHITEOUT_DEVICE:
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        else:
            self._prune_inherited(directory)

    def _prune_inherited(self, directory: bytes) -> None:
        """Full-copy drivers: drop everything below ``directory`` this layer did not add
        (without recursion: the layer's own directories may nest 2000 deep)."""
        pending = [directory]
        while pending:
            current = pending.pop()
            fd = self._tree.dir_fd(current)
            for name in os.listdir(fd):
                rel = current + b"/" + os.fsencode(name)
                kind = self.seen.get(rel)
                if kind is None:
                    self._tree.invalidate(rel)
                    remove_tree(_proc_path(fd, os.fsencode(name)))
                elif kind in (K_DIR, K_IMPLICIT):
                    pending.append(rel)

    def _embed_payload(self, reader: ChunkReader, member: Member) -> None:
        """Keep in the header record the data of a member that is not a file on disk."""
        if not member.size:
            return
        if member.size > MAX_EMBEDDED:
            raise self._refuse("carries %d bytes of data though it is not a regular file"
                               % member.size)
        data = reader.read_exact(member.size + member.padding, "member data")
        if self.split is not None:
            self.split.raw(data)

    # ------------------------------------------------------------------ metadata
    @staticmethod
    def _times(member: Member) -> Tuple[int, int]:
        atime = member.atime_ns if member.atime_ns is not None else member.mtime_ns
        return atime, member.mtime_ns

    def _owner(self, pfd: Optional[int], name: Optional[bytes], fd: Optional[int],
               member: Member, symlink: bool = False) -> None:
        if not self._root_user:
            return
        if fd is not None:
            os.chown(fd, member.uid, member.gid)
        else:
            os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)

    def _xattrs(self, pfd: Optional[int], name: Optional[bytes], fd: Optional[int],
                member: Member) -> None:
        for xname, value in member.xattrs.items():
            if not xname.startswith(_XATTR_NAMESPACES):
                raise self._refuse("carries the extended attribute %r, which is in no "
                                   "namespace Linux knows" % xname)
            if xname.startswith(_REFUSED_XATTR_PREFIXES):
                raise self._refuse("carries the extended attribute %s, which a layer may not "
                                   "set (it would steer the storage driver)" % xname)
            if xname.startswith("security.") and xname != "security.capability":
                continue
            if xname.startswith("system.") and xname not in _APPLIED_SYSTEM_XATTRS:
                continue
            try:
                if fd is not None:
                    os.setxattr(fd, xname, value)
                else:
                    os.setxattr(_proc_path(pfd, name), xname, value,  # type: ignore[arg-type]
                                follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EPERM) and xname.startswith("user."):
                    continue  # user.* is not allowed on symlinks and devices: as tar does
                raise

    def _finish_dirs(self) -> None:
        """Directory times, once nothing more is created in them.  Setting a directory's
        times changes nothing in its parent, so any order would do: names sorted put a
        directory right after its parent, whose descriptor the cache still holds (one
        open each, where deepest first reopened a deep chain from its top every time)."""
        for path in sorted(self.dir_times):
            fd = self._tree.dir_fd(path) if path else self._tree.root_fd
            os.utime(fd, ns=self.dir_times[path])


class WriteBehind:
    """A worker thread that writes the data of large files, then gives them their
    owner, mode and times and closes them, in the order they were handed over.

    Only for files of at least one hole window (64 KiB; their writes are long stretches
    without the GIL) from a reader whose chunks stay valid (read ahead: the views
    queued here are never overwritten), without extended attributes (whose checks
    name the member at fault, on the applier's thread).  The queue holds at most
    ``DEPTH`` chunks: memory stays bounded whatever the file sizes.  After the first
    error nothing more is written (descriptors are still closed); the applier raises
    it at its next hand-over or at the end."""

    DEPTH = 8

    def __init__(self, finish: Any) -> None:
        self._finish = finish
        self._jobs: "queue.Queue[Any]" = queue.Queue(self.DEPTH)
        self._writer: Optional[SparseWriter] = None
        self.failed: Optional[Tuple[Member, BaseException]] = None
        self._thread = threading.Thread(target=self._run, name="strata-write-behind",
                                        daemon=True)
        self._thread.start()

    def write(self, fd: int, view: memoryview, member: Member) -> None:
        self._jobs.put((fd, view, member, False))

    def finish(self, fd: int, member: Member) -> None:
        self._jobs.put((fd, None, member, True))

    def abandon(self, fd: int, member: Member) -> None:
        self._jobs.put((fd, None, member, False))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fd, view, member, complete = job
            if view is not None:
                self._data(fd, view, member)
            else:
                self._close(fd, member, complete)

    def _data(self, fd: int, view: memoryview, member: Member) -> None:
        if self.failed is not None:
            return
        try:
            if self._writer is None:
                self._writer = SparseWriter(fd)
            self._writer.write(view)
        except BaseException as exc:  # pylint: disable=broad-except  # raised by the applier
            self._writer = None
            self.failed = (member, exc)

    def _close(self, fd: int, member: Member, complete: bool) -> None:
        writer, self._writer = self._writer, None
        try:
            if complete and self.failed is None:
                if writer is not None:
                    writer.finish()
                self._finish(fd, member)
        except BaseException as exc:  # pylint: disable=broad-except  # raised by the applier
            self.failed = (member, exc)
        finally:
            os.close(fd)


class EarlyFlush:
    """A worker thread that flushes the layer's filesystem (``syncfs``) while the
    applier goes on, each time it is started (at most one flush at a time; starts
    during a flush make one more after it).  The kernel does the writeback in its own
    threads and this one waits outside the GIL: the disk works while the layer is
    still being applied, instead of in one flush at the end.  An error is kept for the
    applier to raise; the flush is only ever earlier than the store's, never instead
    of it."""

    EVERY = 64 << 20

    def __init__(self, root_fd: int) -> None:
        self._fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
        self._syncfs = libc().syncfs
        self._wanted = threading.Event()
        self._stopping = False
        self.failed: Optional[OSError] = None
        self._thread = threading.Thread(target=self._run, name="strata-early-flush",
                                        daemon=True)
        self._thread.start()

    def start(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        """Wait for a flush under way (none is started after it); idempotent."""
        if self._thread.is_alive():
            self._stopping = True
            self._wanted.set()
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            if self._syncfs(self._fd) != 0 and self.failed is None:
                err = ctypes.get_errno()
                self.failed = OSError(err, os.strerror(err))


def _passes_down(root: str) -> bool:
    """Whether ``root`` may give new entries a group or mode of its own (set-group-ID,
    or a default ACL; when the attribute cannot be read, assume it may)."""
    if os.stat(root).st_mode & stat.S_ISGID:
        return True
    try:
        os.getxattr(root, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP)
    return True


def _umask() -> int:
    """The process's umask, from /proc (setting and restoring it would race with other
    threads creating files); when /proc does not say, the fullest mask, so that every
    file gets its fchmod."""
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path naming ``name`` in the directory open as ``dir_fd`` (for calls without dir_fd)."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)
