# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stored layer against its header record: content *and* metadata.

Re-emitting the tar from the header record and the driver's files proves the files'
contents (the stream hashes to the diff_id), but a header record carries the headers
themselves, so a changed mode (a setuid bit), owner, symlink target, device number or
file capability, or a file added to the layer's directory, would re-emit unchanged.
``verify_layer`` therefore parses the re-emitted stream as it hashes it and compares
every entry on disk with what its header says, and the set of entries with the set the
headers name:

- overlay family (whiteouts as devices): the layer's directory holds exactly its own
  entries, the directories they need, 0/0 devices for whiteouts and the opaque mark;
- full-copy drivers (vfs, btrfs: whiteouts as deletions): the directory is the whole
  root filesystem; the layer's own entries must be as their headers say, its whiteouts
  absent, and every other entry the same as in the parent layer's directory (which is
  verified on its own), so nothing stray can hide there either.

Times are not compared: directory times move when the applier fills them, and a file's
content is what the digest proves.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _tarsplit as tarsplit
from ansible_collections.strata.layers.plugins.module_utils._changes import (
    FUSE_MARKERS, OPAQUE_XATTRS, chunk_reader)
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, SYMTYPE, ChunkReader, HeaderParser, Member)

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
CAPABILITY = "security.capability"
_HINTS = 5
_KINDS = {DIRTYPE: stat.S_IFDIR, SYMTYPE: stat.S_IFLNK, CHRTYPE: stat.S_IFCHR,
          BLKTYPE: stat.S_IFBLK, FIFOTYPE: stat.S_IFIFO}


@dataclass
class Expected:
    """What one header says an entry on disk is."""

    kind: int
    mode: int
    uid: int
    gid: int
    link: bytes = b""
    rdev: int = 0
    hardlink: Optional[bytes] = None
    capability: Optional[bytes] = None


@dataclass
class Headers:
    """A layer's headers, by normalised path."""

    entries: Dict[bytes, Expected]
    whiteouts: Set[bytes]
    opaque: Set[bytes]


def verify_layer(split_path: str, root: str, whiteouts: str, parent_root: Optional[str],
                 parent_sound: bool = True) -> Tuple[str, int, List[str]]:
    """(digest, size) of the re-emitted tar and what on disk differs from the headers
    (``parent_root``: the parent layer's directory, for full-copy drivers; what the
    layer inherited is compared with it only when the parent itself is sound, so a
    damaged parent is not blamed on its children)."""
    digest, size, headers = read_headers(split_path, root)
    if whiteouts == "device":
        problems = list(_own_layer(root, headers))
    else:
        problems = list(_full_root(root, headers, parent_root, parent_sound))
    return digest, size, problems


def read_headers(split_path: str, root: str) -> Tuple[str, int, Headers]:
    reader = ChunkReader(chunk_reader(tarsplit.chunks(split_path, root)), what="the layer")
    parser = HeaderParser(reader)
    headers = Headers({}, set(), set())
    while True:
        member = parser.next()
        if member is None:
            break
        _skip(reader, member)
        _record(headers, member)
    while reader.read_some(1 << 20):
        pass
    return "sha256:" + reader.hasher.hexdigest(), reader.total, headers


def _skip(reader: ChunkReader, member: Member) -> None:
    left = (member.size + member.padding) if member.is_file else 0
    while left:
        piece = reader.read_some(min(left, 1 << 20))
        if not piece:
            return
        left -= len(piece)


def _normal(name: bytes) -> bytes:
    return b"/".join(p for p in name.split(b"/") if p not in (b"", b"."))


def _record(headers: Headers, member: Member) -> None:
    path = _normal(member.name)
    parent, _sep, base = path.rpartition(b"/")
    if base == OPAQUE_MARKER:
        headers.opaque.add(parent)
        return
    if base.startswith(WHITEOUT_PREFIX):
        headers.whiteouts.add((parent + b"/" if parent else b"") + base[len(WHITEOUT_PREFIX):])
        return
    kind = _KINDS.get(member.typeflag, stat.S_IFREG)
    entry = Expected(kind, member.mode & 0o7777, member.uid, member.gid,
                     capability=member.xattrs.get(CAPABILITY))
    if member.typeflag == SYMTYPE:
        entry.link = member.linkname
    elif member.typeflag in (CHRTYPE, BLKTYPE):
        entry.rdev = os.makedev(member.devmajor, member.devminor)
    elif member.typeflag == LNKTYPE:
        entry.hardlink = _normal(member.linkname)
    headers.entries[path] = entry


# ---------------------------------------------------------------------- comparing

def _join(root: bytes, rel: bytes) -> bytes:
    return root + b"/" + rel if rel else root


def _lstat(path: bytes) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _walk(root: bytes) -> Iterator[Tuple[bytes, os.stat_result]]:
    """Every entry below ``root`` (not itself), pre-order, without recursion."""
    stack = [b""]
    while stack:
        rel = stack.pop()
        for name in sorted(os.listdir(_join(root, rel)), reverse=True):
            child = rel + b"/" + name if rel else name
            st = os.lstat(_join(root, child))
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)


def _show(rel: bytes) -> str:
    return "/" + rel.decode("utf-8", "backslashreplace")


def _differs(root: bytes, rel: bytes, st: os.stat_result, want: Expected,
             headers: Headers) -> Optional[str]:
    """How the entry on disk differs from its header, or None."""
    if want.hardlink is not None:
        target = _lstat(_join(root, want.hardlink))
        if target is None or (target.st_dev, target.st_ino) != (st.st_dev, st.st_ino):
            return "is no longer a hard link to %s" % _show(want.hardlink)
        want = headers.entries.get(want.hardlink, want)
        if want.hardlink is not None:
            return None
    if stat.S_IFMT(st.st_mode) != want.kind:
        return "is a %s, its header says %s" % (_kind(st.st_mode), _kind(want.kind))
    found = []
    if want.kind != stat.S_IFLNK and stat.S_IMODE(st.st_mode) != want.mode:
        found.append("mode %04o (header %04o)" % (stat.S_IMODE(st.st_mode), want.mode))
    if (st.st_uid, st.st_gid) != (want.uid, want.gid):
        found.append("owner %d:%d (header %d:%d)" % (st.st_uid, st.st_gid, want.uid, want.gid))
    if want.kind == stat.S_IFLNK and os.readlink(_join(root, rel)) != want.link:
        found.append("link target %r (header %r)" % (os.readlink(_join(root, rel)), want.link))
    if want.kind in (stat.S_IFCHR, stat.S_IFBLK) and st.st_rdev != want.rdev:
        found.append("device %d:%d (header %d:%d)" % (
            os.major(st.st_rdev), os.minor(st.st_rdev), os.major(want.rdev), os.minor(want.rdev)))
    if want.kind == stat.S_IFREG and _capability(_join(root, rel)) != want.capability:
        found.append("file capabilities differ from the header's")
    return ", ".join(found) or None


def _capability(path: bytes) -> Optional[bytes]:
    try:
        return os.getxattr(path, CAPABILITY, follow_symlinks=False)
    except OSError:
        return None


def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink", stat.S_IFCHR: "character device",
            stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(
                stat.S_IFMT(mode), "regular file")


def _ancestors(paths: Iterator[bytes]) -> Set[bytes]:
    out: Set[bytes] = set()
    for path in paths:
        while b"/" in path:
            path = path.rpartition(b"/")[0]
            if path in out:
                break
            out.add(path)
    return out


def _own_layer(root_str: str, headers: Headers) -> Iterator[str]:
    """An overlay layer directory: exactly the layer's entries (and what they need)."""
    root = os.fsencode(root_str)
    yield from _root_dir(root, headers)
    needed = _ancestors(iter(list(headers.entries) + list(headers.whiteouts) +
                             [o + b"/x" for o in headers.opaque if o]))
    for rel, st in _walk(root):
        want = headers.entries.get(rel)
        if want is not None:
            problem = _differs(root, rel, st, want, headers)
            if problem:
                yield "%s %s" % (_show(rel), problem)
        elif rel in headers.whiteouts:
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                yield "%s should be a whiteout but is a %s" % (_show(rel), _kind(st.st_mode))
        elif rel.rpartition(b"/")[2] in FUSE_MARKERS and rel.rpartition(b"/")[0] in headers.opaque:
            continue
        elif not (rel in needed and stat.S_ISDIR(st.st_mode)):
            yield "%s is not in the layer's headers (added after the import)" % _show(rel)
    for rel in sorted(headers.whiteouts):
        if _lstat(_join(root, rel)) is None:
            yield "the whiteout of %s is missing" % _show(rel)
    for rel in sorted(headers.opaque):
        if not _is_opaque(_join(root, rel)):
            yield "%s lost its opaque mark" % _show(rel)


def _root_dir(root: bytes, headers: Headers) -> Iterator[str]:
    """The layer's root directory as its header (if the tar had one) says."""
    if b"" in headers.entries:
        problem = _differs(root, b"", os.lstat(root), headers.entries[b""], headers)
        if problem:
            yield "the layer's root directory %s" % problem


def _is_opaque(path: bytes) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return any(os.path.lexists(path + b"/" + m) for m in FUSE_MARKERS)


def _full_root(root_str: str, headers: Headers, parent_str: Optional[str],
               parent_sound: bool) -> Iterator[str]:
    """A full-copy layer: its own entries as their headers say, its whiteouts gone, and
    everything else as the parent layer has it."""
    root = os.fsencode(root_str)
    parent = os.fsencode(parent_str) if parent_str else None
    yield from _root_dir(root, headers)
    for rel, st in _walk(root):
        want = headers.entries.get(rel)
        if want is not None:
            problem = _differs(root, rel, st, want, headers)
            if problem:
                yield "%s %s" % (_show(rel), problem)
            continue
        problem = _inherited(root, parent, rel, st, headers) if parent_sound else None
        if problem:
            yield "%s %s" % (_show(rel), problem)
    for rel in sorted(headers.whiteouts):
        if _lstat(_join(root, rel)) is not None:
            yield "%s is deleted by the layer but present" % _show(rel)


def _inherited(root: bytes, parent: Optional[bytes], rel: bytes, st: os.stat_result,
               headers: Headers) -> Optional[str]:
    """An entry the layer does not name: it must be the parent's, unchanged (or a
    directory the layer's own entries need)."""
    below_opaque = any(rel.startswith(o + b"/") or not o for o in headers.opaque)
    before = None if parent is None or below_opaque else _lstat(_join(parent, rel))
    if before is None:
        if stat.S_ISDIR(st.st_mode) and _needed(rel, headers):
            return None
        return "is neither in the layer's headers nor in its parent layer (added after the " \
               "import)"
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(before.st_mode):
        return "is a %s, the parent layer has a %s" % (_kind(st.st_mode), _kind(before.st_mode))
    if (st.st_mode, st.st_uid, st.st_gid) != (before.st_mode, before.st_uid, before.st_gid):
        return "mode or owner differ from the parent layer's (%04o %d:%d, parent %04o %d:%d)" % (
            stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, stat.S_IMODE(before.st_mode),
            before.st_uid, before.st_gid)
    if stat.S_ISLNK(st.st_mode) and os.readlink(_join(root, rel)) != \
            os.readlink(_join(parent, rel)):  # type: ignore[arg-type]
        return "link target differs from the parent layer's"
    if stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) != \
            (before.st_size, before.st_mtime_ns):
        return "size or time differ from the parent layer's (changed after the import)"
    if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != before.st_rdev:
        return "device number differs from the parent layer's"
    return None


def _needed(rel: bytes, headers: Headers) -> bool:
    prefix = rel + b"/"
    return any(p.startswith(prefix) for p in headers.entries) or \
        any(p.startswith(prefix) for p in headers.whiteouts)


def summary(problems: List[str]) -> str:
    more = " and %d more" % (len(problems) - _HINTS) if len(problems) > _HINTS else ""
    return "; ".join(problems[:_HINTS]) + more
