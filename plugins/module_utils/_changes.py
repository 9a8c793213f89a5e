# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's changes, as Docker sees them: sizes and layer tars.

Two ways to find them, one per driver family:

* ``UpperDiff``: an overlay upper directory *is* the diff (native diff): 0/0
  character devices become ``.wh.NAME`` entries, ``trusted.overlay.opaque=y``
  directories get a ``.wh..wh..opq`` entry, overlay's own attributes are dropped;
* ``TreeDiff``: walk-and-compare of a full copy against the image's root (vfs,
  btrfs): added or modified entries are emitted, deleted ones as whiteouts.

Both yield a tar stream (deterministic: names sorted, times truncated to seconds as
Docker does) and can total the bytes Docker's ``size`` column shows (files added or
modified, hardlinks once, whiteouts and directories zero).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import (
    Callable, Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple)

from ansible_collections.strata.layers.plugins.module_utils import _files as files
from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import first_link, walk_dirs
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE, encode_header, end_of_archive,
    padding)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
WHITEOUT_PREFIX = b".wh."
# fuse-overlayfs marks opaque directories with the xattr (when root) and these entries
FUSE_MARKERS = (b".wh..wh..opq", b".wh..opq")
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
# XFS also lists a file's POSIX ACLs under its own names (trusted.SGI_ACL_FILE and
# _DEFAULT) besides system.posix_acl_*, which the stream carries
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.",
                   "security.selinux", "trusted.SGI_ACL_")


def _typeflag(mode: int) -> bytes:
    if stat.S_ISREG(mode):
        return REGTYPE
    if stat.S_ISDIR(mode):
        return DIRTYPE
    if stat.S_ISLNK(mode):
        return SYMTYPE
    if stat.S_ISCHR(mode):
        return CHRTYPE
    if stat.S_ISBLK(mode):
        return BLKTYPE
    return FIFOTYPE


def _xattrs(path: bytes) -> Dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for name in names:
        if name.startswith(_SKIPPED_XATTRS):
            continue
        out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def _refuse_whiteout_name(rel: bytes) -> None:
    """A file the container made whose name is a whiteout name (``.wh.NAME``) would be
    read by every layer consumer as deleting NAME: refused, never turned into one."""
    name = rel.rsplit(b"/", 1)[-1]
    if name.startswith(WHITEOUT_PREFIX):
        shown = rel.decode("utf-8", "replace")
        raise InvalidInput(
            "the container's changes hold /%s, whose name is a whiteout name (.wh.*): a layer "
            "would read it as deleting %s instead of keeping the file. Rename or remove it in "
            "the container, then run again" % (shown, name[len(WHITEOUT_PREFIX):].decode(
                "utf-8", "replace")), member=shown)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _Emitter:
    """Tar bytes for entries of a tree (shared by both diff kinds)."""

    def __init__(self, root: str, exact_times: bool = False,
                 shadow: Optional[Shadow] = None) -> None:
        self.root = os.fsencode(root)
        self.exact_times = exact_times
        self.shadow = shadow
        self.links: Dict[Tuple[int, int], bytes] = {}
        self.size = 0
        self.sized: Set[Tuple[int, int]] = set()
        self.allocated = 0  # st_blocks of every entry seen (as ``allocated_bytes``)
        self.linked: Set[Tuple[int, int]] = set()

    def allocate(self, st: os.stat_result) -> None:
        if st.st_nlink > 1 and not first_link(st, self.linked):
            return
        self.allocated += st.st_blocks * 512

    def full(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def count(self, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode) or (st.st_nlink > 1 and not first_link(st, self.sized)):
            return
        self.size += st.st_size

    def entry(self, rel: bytes, st: os.stat_result, with_data: bool = True) -> Iterator[bytes]:
        _refuse_whiteout_name(rel)
        path = self.full(rel)
        # Docker truncates to seconds (commit); a migration keeps every nanosecond
        mtime = st.st_mtime_ns if self.exact_times else (st.st_mtime_ns // 1_000_000_000) * 1_000_000_000
        mode = stat.S_IMODE(st.st_mode)
        name = rel + b"/" if stat.S_ISDIR(st.st_mode) else rel
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            if key in self.links:
                yield encode_header(rel, LNKTYPE, mode, st.st_uid, st.st_gid, 0, mtime,
                                    linkname=self.links[key])
                return
            self.links[key] = rel
        flag = _typeflag(st.st_mode)
        link = os.readlink(path) if flag == SYMTYPE else b""
        size = st.st_size if flag == REGTYPE else 0
        dev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if flag in (CHRTYPE, BLKTYPE) else (0, 0)
        clone = None
        if size and with_data and self.shadow is not None:
            # the data comes from a private clone, which the new layer then takes
            clone = self.shadow.clone(path, rel)
        if clone is not None:
            try:
                size = os.fstat(clone).st_size
                yield encode_header(name, flag, mode, st.st_uid, st.st_gid, size, mtime, link,
                                    dev[0], dev[1], xattrs=_xattrs(path))
            except BaseException:
                os.close(clone)
                raise
            yield from files.fd_chunks(clone, size, path)
            yield padding(size)
            return
        yield encode_header(name, flag, mode, st.st_uid, st.st_gid, size, mtime, link,
                            dev[0], dev[1], xattrs=_xattrs(path))
        if size and with_data:
            yield from files.chunks(path, size)
            yield padding(size)

    @staticmethod
    def whiteout(rel: bytes, st: Optional[os.stat_result] = None) -> bytes:
        parent, _sep, name = rel.rpartition(b"/")
        wh = (parent + b"/" if parent else b"") + b".wh." + name
        return encode_header(wh, REGTYPE, 0o600, 0, 0, 0, 0)

    @staticmethod
    def opaque(rel: bytes) -> bytes:
        return encode_header(rel + b"/.wh..wh..opq", REGTYPE, 0o600, 0, 0, 0, 0)


def _listdir(path: bytes) -> List[bytes]:
    return sorted(os.listdir(path))


def _join(rel: bytes, name: bytes) -> bytes:
    return rel + b"/" + name if rel else name


class _Listing(NamedTuple):
    """One directory of a walk, with the names not visited yet.

    The walks keep a stack of these instead of recursing: the applier accepts paths up
    to PATH_MAX, directories nested ~2000 deep, deeper than Python's recursion limit.
    ``here``/``there``: the names in the container and in its image (``TreeDiff``)."""

    rel: bytes
    names: Iterator[bytes]
    here: FrozenSet[bytes] = frozenset()
    there: FrozenSet[bytes] = frozenset()


class UpperDiff:
    """Native diff of an overlay upper directory.

    ``markers``: the upper is fuse-overlayfs's, whose opaque marker files are its own
    bookkeeping (skipped); under kernel overlay a file of that name is the container's,
    and is refused like any other whiteout name rather than silently left out."""

    def __init__(self, upper: str, exact_times: bool = False,
                 shadow: Optional[Shadow] = None, markers: bool = True) -> None:
        self.upper = upper
        self.exact_times = exact_times
        self.shadow = shadow
        self.markers = FUSE_MARKERS if markers else ()

    def size(self) -> int:
        """Every entry of the upper but whiteouts (and fuse-overlayfs's markers), walked
        by directory descriptors (``walk_dirs``) as the container may be running: what
        it removes meanwhile is left out, a directory it turns into a link is not
        followed."""
        emitter = _Emitter(self.upper)
        markers = self.markers

        def visit(_rel: bytes, fd: int, _data: None) -> List[Tuple[bytes, None]]:
            below: List[Tuple[bytes, None]] = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    st = _live_stat(entry)
                    if st is None:
                        continue
                    name = os.fsencode(entry.name)
                    if stat.S_ISDIR(st.st_mode):
                        below.append((name, None))
                    if not _is_whiteout(st) and name not in markers:
                        emitter.count(st)
            return below

        walk_dirs(emitter.root, visit, live=True)
        return emitter.size

    def tar(self) -> Iterator[bytes]:
        emitter = _Emitter(self.upper, self.exact_times, self.shadow)
        yield from self._tree(emitter)
        yield end_of_archive()

    def _tree(self, emitter: _Emitter) -> Iterator[bytes]:
        """Every entry, a directory before its children (pre-order, names sorted)."""
        stack = [_Listing(b"", iter(_listdir(emitter.full(b""))))]
        while stack:
            name = next(stack[-1].names, None)
            if name is None:
                stack.pop()
                continue
            if name in self.markers:
                continue  # fuse-overlayfs's own opaque markers: the xattr says it all
            child = _join(stack[-1].rel, name)
            st = os.lstat(emitter.full(child))
            yield from self._entry(emitter, child, st)
            if stat.S_ISDIR(st.st_mode):
                stack.append(_Listing(child, iter(_listdir(emitter.full(child)))))

    @staticmethod
    def _entry(emitter: _Emitter, rel: bytes, st: os.stat_result) -> Iterator[bytes]:
        path = emitter.full(rel)
        if _is_whiteout(st):
            yield emitter.whiteout(rel, st)
            return
        if stat.S_ISDIR(st.st_mode):
            _refuse_redirect(path, rel)
        yield from emitter.entry(rel, st)
        if stat.S_ISDIR(st.st_mode) and _opaque(path):
            yield emitter.opaque(rel)


def _opaque(path: bytes) -> bool:
    for xattr in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, xattr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _refuse_redirect(path: bytes, rel: bytes) -> None:
    try:
        os.getxattr(path, "trusted.overlay.redirect", follow_symlinks=False)
    except OSError:
        return
    raise Unsupported("directory %s of the container was renamed with overlay redirect_dir "
                      "on; its changes cannot be read as a native diff"
                      % rel.decode("utf-8", "replace"))


class BaseTree:
    """The diff base of a ``TreeDiff``, read one directory at a time: each directory's
    entries (``lstat``), and on demand a directory's xattrs or a symlink's target.

    ``keep``: remember what was read, so that the containers sharing one base (an
    image's top layer) read it once per ``store_info`` instead of once each; the base
    is a layer, which nothing changes under the store's lock. Not kept (a commit, a
    migration: one walk), memory stays bounded by one directory."""

    def __init__(self, root: Optional[str], keep: bool = False) -> None:
        self.root = None if root is None else os.fsencode(root)
        self.keep = keep
        self._dirs: Dict[bytes, Optional[Dict[bytes, os.stat_result]]] = {}
        self._named: Dict[bytes, Optional[Dict[str, os.stat_result]]] = {}
        self._xattrs: Dict[bytes, Dict[str, bytes]] = {}
        self._links: Dict[bytes, bytes] = {}

    def path(self, rel: bytes) -> bytes:
        if self.root is None:   # callers ask only when entries() found a base
            raise StoreError("internal error: a diff without a base has no base path")
        return self.root + b"/" + rel if rel else self.root

    def entries(self, rel: bytes) -> Optional[Dict[bytes, os.stat_result]]:
        """Directory ``rel``'s entries, name -> lstat (None: not a directory here)."""
        if rel in self._dirs:
            return self._dirs[rel]
        found = None if self.root is None else self._read(rel)
        if self.keep:
            self._dirs[rel] = found
        return found

    def allocated(self) -> Optional[Tuple[int, Set[Tuple[int, int]]]]:
        """What the base allocates below its root, as ``allocated_bytes`` counts it
        (hardlinks once), with its inodes of several links: from the directories read,
        when every one was (kept, the root and each subdirectory of a read directory);
        else None. A diff base is a layer or an init layer, unchanged under the lock."""
        if not self.keep or self._dirs.get(b"") is None:
            return None
        total, linked = 0, set()
        for rel, found in self._dirs.items():
            for name, st in (found or {}).items():
                if stat.S_ISDIR(st.st_mode) and _join(rel, name) not in self._dirs:
                    return None
                if st.st_nlink > 1 and not first_link(st, linked):
                    continue
                total += st.st_blocks * 512
        return total, linked

    def named(self, rel: bytes) -> Optional[Dict[str, os.stat_result]]:
        """``entries(rel)`` keyed by the names as ``os.scandir`` of a descriptor gives
        them (str)."""
        if rel in self._named:
            return self._named[rel]
        found = self.entries(rel)
        if found is not None:
            found = {os.fsdecode(name): st for name, st in found.items()}
        if self.keep:
            self._named[rel] = found
        return found

    def _read(self, rel: bytes) -> Optional[Dict[bytes, os.stat_result]]:
        """One open of the directory (a link followed, as ``isdir`` would), each entry
        an ``fstatat`` of its name in it rather than an ``lstat`` of its full path."""
        path = self.path(rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            if os.path.isdir(path):
                raise
            return None
        found = {}
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        found[os.fsencode(entry.name)] = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
        finally:
            os.close(fd)
        return found

    def xattrs(self, rel: bytes) -> Dict[str, bytes]:
        if rel in self._xattrs:
            return self._xattrs[rel]
        found = _xattrs(self.path(rel))
        if self.keep:
            self._xattrs[rel] = found
        return found

    def readlink(self, rel: bytes) -> bytes:
        if rel in self._links:
            return self._links[rel]
        found = os.readlink(self.path(rel))
        if self.keep:
            self._links[rel] = found
        return found


class InitBase(BaseTree):
    """A container's init layer as its diff base, read mostly from the image's top layer.

    ``populate`` only ever creates the init entries (and missing parents) in a faithful
    copy of the top layer, so every directory that holds no init entry and is none is
    the same, entry for entry and attribute for attribute, in both: those are read from
    ``image`` (one ``BaseTree`` the containers on that image share) and only the few
    ``touched`` ones (each entry's parents, each directory entry itself) from the init
    layer.  An entry's own attributes (xattrs, link target) come from the tree its
    parent's listing came from."""

    def __init__(self, root: str, image: BaseTree, touched: FrozenSet[bytes]) -> None:
        super().__init__(root, keep=True)
        self.image = image
        self.touched = touched

    def _own(self, rel: bytes) -> bool:
        return rel in self.touched

    def _owner_of(self, rel: bytes) -> bool:
        return rel.rpartition(b"/")[0] in self.touched

    def entries(self, rel: bytes) -> Optional[Dict[bytes, os.stat_result]]:
        return super().entries(rel) if self._own(rel) else self.image.entries(rel)

    def named(self, rel: bytes) -> Optional[Dict[str, os.stat_result]]:
        return super().named(rel) if self._own(rel) else self.image.named(rel)

    def xattrs(self, rel: bytes) -> Dict[str, bytes]:
        return super().xattrs(rel) if self._owner_of(rel) else self.image.xattrs(rel)

    def readlink(self, rel: bytes) -> bytes:
        return super().readlink(rel) if self._owner_of(rel) else self.image.readlink(rel)

    def allocated(self) -> Optional[Tuple[int, Set[Tuple[int, int]]]]:
        return None  # never read whole


def touched_dirs(entries: Sequence[str]) -> Optional[FrozenSet[bytes]]:
    """The directories (relative, ``b""`` the root) the init ``entries`` (``"dir/"`` or
    ``"file"``) can change or create: every entry's parents, and a directory entry
    (None: an entry with a ``..``, which this does not follow)."""
    touched = {b""}
    for entry in entries:
        parts = [p for p in os.fsencode(entry).split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            return None
        if not parts:
            continue
        upto = len(parts) if entry.endswith("/") else len(parts) - 1
        for end in range(1, upto + 1):
            touched.add(b"/".join(parts[:end]))
    return frozenset(touched)


class TreeDiff:
    """Walk-and-compare of a full copy (``root``) against its image (``base``).

    The parent directories of every change are emitted too (with their attributes),
    as an overlay copy-up would put them in an upper directory: applied anywhere, the
    tar then reproduces the parents' modes and owners instead of defaults.

    ``base_tree``: a ``BaseTree`` of ``base`` shared with other diffs against the same
    base (``store_info``); by default one of its own that keeps nothing.
    """

    def __init__(self, base: Optional[str], root: str, exact_times: bool = False,
                 shadow: Optional[Shadow] = None, base_tree: Optional[BaseTree] = None) -> None:
        self.base = base
        self.root = root
        self.exact_times = exact_times
        self.shadow = shadow
        self.base_tree = base_tree if base_tree is not None else BaseTree(base)
        # after size(): what the walk saw ``root`` allocate, and its inodes with several
        # links, so that ``on_disk`` need not walk the copy again
        self.allocated: Optional[int] = None
        self.linked: Set[Tuple[int, int]] = set()

    def size(self) -> int:
        """The bytes ``_changes`` would count, found in any order: unsorted, no parents
        kept, a directory's own attributes never compared (a directory counts 0 bytes
        whether changed or not; only the entries below it can count).

        Walked by directory descriptors (``walk_dirs``): each entry an ``fstatat`` of its
        name in its open directory, not an ``lstat`` of a path the kernel resolves from
        the root again."""
        emitter = _Emitter(self.root)

        def visit(rel: bytes, fd: int, compare: bool) -> List[Tuple[bytes, bool]]:
            olds = self.base_tree.named(rel) if compare else None
            return self._count_dir(emitter, rel, fd, olds or {})

        walk_dirs(emitter.root, visit, data=True, live=True)
        self.allocated, self.linked = emitter.allocated, emitter.linked
        return emitter.size

    def _count_dir(self, emitter: _Emitter, rel: bytes, fd: int,
                   olds: Dict[str, os.stat_result]) -> List[Tuple[bytes, bool]]:
        """Count the changed files of directory ``rel`` (open as ``fd``); its
        subdirectories' names, each with whether the image has a directory there to
        compare with. (``emitter.allocate`` and ``_stat_differs`` written out: this
        loop runs once per file of every copy.)"""
        below = []
        prefix = rel + b"/" if rel else b""
        linked, isdir, isreg = emitter.linked, stat.S_ISDIR, stat.S_ISREG
        blocks = 0
        with os.scandir(fd) as entries:  # names as str: an fd has no bytes path
            for entry in entries:
                st = _live_stat(entry)  # fstatat(fd, name)
                if st is None:
                    continue
                if st.st_nlink == 1 or first_link(st, linked):
                    blocks += st.st_blocks
                old = olds.get(entry.name)
                if isdir(st.st_mode):
                    below.append((os.fsencode(entry.name),
                                  old is not None and isdir(old.st_mode)))
                elif (old is None or old.st_mtime_ns != st.st_mtime_ns
                      or old.st_size != st.st_size or old.st_mode != st.st_mode
                      or old.st_uid != st.st_uid or old.st_gid != st.st_gid):
                    emitter.count(st)
                elif not isreg(st.st_mode):
                    name = prefix + os.fsencode(entry.name)
                    # None: removed meanwhile, a deletion counts nothing
                    if _differs(old, st, emitter.full(name), self.base_tree, name,
                                at=(fd, entry.name)):
                        emitter.count(st)
        emitter.allocated += blocks * 512
        return below

    def tar(self) -> Iterator[bytes]:
        emitter = _Emitter(self.root, self.exact_times, self.shadow)
        yield from self._changes(emitter, count_only=False)
        yield end_of_archive()

    @staticmethod
    def _flush(emitter: _Emitter, pending: List[Tuple[bytes, os.stat_result]],
               count_only: bool) -> Iterator[bytes]:
        """Emit the not yet emitted ancestors of a change, outermost first."""
        for rel, st in pending:
            if not count_only:
                yield from emitter.entry(rel, st)
        pending.clear()

    def _listing(self, emitter: _Emitter, rel: bytes, compare: bool
                 ) -> Tuple[_Listing, Dict[bytes, os.stat_result]]:
        """Directory ``rel``: compared with the image's, or added as a whole; with the
        image's entries (name -> lstat)."""
        here = frozenset(_listdir(emitter.full(rel)))
        old = self.base_tree.entries(rel) if compare else None
        old = old if old is not None else {}
        there = frozenset(old)
        return _Listing(rel, iter(sorted(here | there)), here, there), old

    def _changes(self, emitter: _Emitter, count_only: bool) -> Iterator[bytes]:
        """Changed entries, pre-order, each after its not yet emitted ancestors
        (``pending``: unchanged directories on the way down, dropped on the way up
        when nothing below them changed)."""
        pending: List[Tuple[bytes, os.stat_result]] = []
        stack = [self._listing(emitter, b"", compare=True)]
        while stack:
            level, olds = stack[-1]
            name = next(level.names, None)
            if name is None:
                stack.pop()
                if pending and pending[-1][0] == level.rel:
                    pending.pop()  # nothing changed below it: not emitted after all
                continue
            child = _join(level.rel, name)
            if name not in level.here:
                yield from self._flush(emitter, pending, count_only)
                if not count_only:
                    yield emitter.whiteout(child)
                continue
            st = os.lstat(emitter.full(child))
            emitter.allocate(st)
            old = olds.get(name)
            yield from self._entry(emitter, child, st, old, pending, count_only)
            if stat.S_ISDIR(st.st_mode):
                compare = old is not None and stat.S_ISDIR(old.st_mode)
                stack.append(self._listing(emitter, child, compare))

    def _entry(self, emitter: _Emitter, rel: bytes, st: os.stat_result,
               old: Optional[os.stat_result], pending: List[Tuple[bytes, os.stat_result]],
               count_only: bool) -> Iterator[bytes]:
        """One entry that exists in the container (``old``: the image's, or None)."""
        if old is None or _differs(old, st, emitter.full(rel), self.base_tree, rel):
            yield from self._flush(emitter, pending, count_only)
            emitter.count(st)
            if not count_only:
                yield from emitter.entry(rel, st)
        elif stat.S_ISDIR(st.st_mode):
            pending.append((rel, st))


def _stat_differs(old: os.stat_result, new: os.stat_result) -> bool:
    """What ``_differs`` compares first, for anything but a directory: a regular file
    that agrees on these has not changed (a symlink or device may still have)."""
    return (old.st_mtime_ns != new.st_mtime_ns or old.st_size != new.st_size
            or old.st_mode != new.st_mode or old.st_uid != new.st_uid
            or old.st_gid != new.st_gid)


def _live_stat(entry: "os.DirEntry[str]") -> Optional[os.stat_result]:
    """The entry's own ``lstat`` (``fstatat`` in its open directory), or None when it is
    gone: a running container removed it since its directory was read."""
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None


def _differs(old: os.stat_result, new: os.stat_result, new_path: bytes,
             base: BaseTree, rel: bytes, at: Optional[Tuple[int, str]] = None
             ) -> Optional[bool]:
    """Whether the entry at ``new_path`` (its lstat ``new``) differs from the image's
    (``old``).  ``at``: the entry's open directory and name, for a tree that may change
    while it is read: a link's target is read there, never through a path; None when
    the link is gone meanwhile, and a link replaced by another kind of entry differs."""
    # st_mode holds the type too: a different type is a different mode
    if (old.st_mode, old.st_uid, old.st_gid) != (new.st_mode, new.st_uid, new.st_gid):
        return True
    if stat.S_ISDIR(new.st_mode):
        return old.st_mtime_ns != new.st_mtime_ns or _xattrs(new_path) != base.xattrs(rel)
    if old.st_size != new.st_size or old.st_mtime_ns != new.st_mtime_ns:
        return True
    if stat.S_ISREG(new.st_mode):
        return False
    if stat.S_ISLNK(new.st_mode):
        if at is None:
            return os.readlink(new_path) != base.readlink(rel)
        try:
            target = os.fsencode(os.readlink(at[1], dir_fd=at[0]))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no longer a link
                raise
            return True
        return target != base.readlink(rel)
    if stat.S_ISCHR(new.st_mode) or stat.S_ISBLK(new.st_mode):
        return old.st_rdev != new.st_rdev
    return False


def chunk_reader(chunks: Iterator[bytes]) -> "Callable[[int], bytes]":
    """A raw ``read(n)`` over generated chunks (empty chunks are not end of stream)."""
    def read(_size: int = 0) -> bytes:
        for chunk in chunks:
            if chunk:
                return chunk
        return b""
    return read
