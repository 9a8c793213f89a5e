# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""COPY and ADD: a layer tar made straight from the sources, no container needed.

Sources come from the build context (``.dockerignore`` applied, nothing outside the
context), from another stage's or image's root filesystem (``--from``), or inline
(heredocs).  Docker's rules: several sources or a destination ending in ``/`` (or an
existing directory) make the destination a directory; a source directory contributes
its contents, not itself; wildcards match per path component.  ADD extracts a local
tar (plain, gzip or zstd) into the destination.

The tar holds, besides the copied entries, every parent directory of the destination
with the attributes it has in the image (or 0755 root when created), exactly as a
copy-up into a container would leave them, so the layer never resets the mode or owner
of an existing directory.  The same walk gives the content digest the build cache keys
on (paths, modes, owners, sizes, contents: not times) and the ``dir:<hex>``/``file:<hex>``
of the history line.

BuildKit's flags: ``--chmod`` octal or symbolic (``u+x``, ``go-w``, ``a=rX``, applied to
each entry's own mode); ``--exclude`` patterns (``.dockerignore`` syntax) matched
against the paths below a source directory, and against the name of a source file;
``COPY --parents`` keeps each source's path (from the context root, or from a ``/./``
pivot in the source) below the destination, its parent directories copied too.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _files as files
from ansible_collections.strata.layers.plugins.module_utils._apply import WHITEOUT_PREFIX
from ansible_collections.strata.layers.plugins.module_utils._compression import (
    DecodedStream, detect)
from ansible_collections.strata.layers.plugins.module_utils._dockerfile import (
    Copy, DockerIgnore, chmod_mode)
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound
from ansible_collections.strata.layers.plugins.module_utils._imageview import ImageView
from ansible_collections.strata.layers.plugins.module_utils._safepath import (
    Beneath, NotBeneath, resolve_beneath)
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE, ChunkReader, HeaderParser,
    encode_header, end_of_archive, padding)

_WILD = "*?["


@dataclass
class Entry:
    """One entry of the layer: ``dest`` (relative to /) and where its bytes come from."""

    dest: bytes
    mode: int                 # full st_mode
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    rdev: int = 0
    link: bytes = b""
    real: Optional[bytes] = None
    data: Optional[bytes] = None
    digest: str = ""

    @property
    def typeflag(self) -> bytes:
        kind = stat.S_IFMT(self.mode)
        return {stat.S_IFDIR: DIRTYPE, stat.S_IFLNK: SYMTYPE, stat.S_IFCHR: CHRTYPE,
                stat.S_IFBLK: BLKTYPE, stat.S_IFIFO: FIFOTYPE}.get(kind, REGTYPE)


class ContextReader:
    """The build context directory, as Docker sends it (``.dockerignore`` applied)."""

    def __init__(self, root: str, ignore: DockerIgnore) -> None:
        self.root = os.fsencode(os.path.realpath(root))
        self.ignore = ignore
        self._digests: Dict[bytes, Tuple[Tuple[int, int, int], str]] = {}

    def _real(self, rel: bytes, follow_last: bool = False) -> bytes:
        # symlinks on the way are resolved inside the context, never out of it
        if not rel:
            return self.root
        try:
            return resolve_beneath(self.root, rel, follow_last)
        except NotBeneath as exc:
            raise InvalidInput("%s in the build context: %s %s" % (
                os.fsdecode(rel), os.fsdecode(exc.blocker), exc.reason)) from exc

    def visible(self, rel: bytes) -> bool:
        return not rel or not self.ignore.matches(rel.decode("utf-8", "surrogateescape"))

    def lstat(self, rel: bytes) -> Optional[os.stat_result]:
        try:
            return os.lstat(self._real(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def listdir(self, rel: bytes) -> List[bytes]:
        return sorted(os.listdir(self._real(rel, follow_last=True)))

    def digest(self, rel: bytes, st: os.stat_result) -> str:
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._digests.get(rel)
        if cached is None or cached[0] != key:
            cached = (key, files.sha256(self._real(rel)))
            self._digests[rel] = cached
        return cached[1]

    def path(self, rel: bytes) -> bytes:
        return self._real(rel)

    def where(self) -> str:
        return "the build context"


class ViewReader:
    """Another stage's or image's root filesystem (``COPY --from``)."""

    def __init__(self, view: ImageView, name: str) -> None:
        self.view = view
        self.name = name

    def visible(self, rel: bytes) -> bool:
        return True

    def lstat(self, rel: bytes) -> Optional[os.stat_result]:
        return self.view.lstat(self.view.resolve(rel.decode("utf-8", "surrogateescape"),
                                                 follow_last=False)) if rel else self.view.lstat(b"")

    def listdir(self, rel: bytes) -> List[bytes]:
        return self.view.listdir(self.view.resolve(rel.decode("utf-8", "surrogateescape")))

    def digest(self, rel: bytes, st: os.stat_result) -> str:
        return files.sha256(self.path(rel))

    def path(self, rel: bytes) -> bytes:
        found = self.view.locate(self.view.resolve(rel.decode("utf-8", "surrogateescape"),
                                                   follow_last=False))
        if found is None:
            raise NotFound("%s has no %s" % (self.name, rel.decode("utf-8", "replace")))
        return found[0]

    def where(self) -> str:
        return self.name


def _relative(path: bytes, base: bytes) -> bytes:
    return path[len(base) + 1:] if base else path


def _below(directory: bytes, name: bytes) -> bytes:
    """``name`` inside ``directory`` (``b""``: the image root)."""
    return directory + b"/" + name if directory else name


def _clean_source(pattern: str, where: str) -> bytes:
    parts: List[str] = []
    for part in pattern.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidInput("COPY/ADD source %r is outside %s (forbidden)" % (pattern, where))
            parts.pop()
            continue
        parts.append(part)
    return os.fsencode("/".join(parts))


def expand(reader: object, pattern: str) -> List[bytes]:
    """Paths of ``reader`` matching a COPY source (wildcards per component)."""
    rel = _clean_source(pattern, reader.where())  # type: ignore[attr-defined]
    if not any(c in pattern for c in _WILD):
        if reader.lstat(rel) is None or not reader.visible(rel):  # type: ignore[attr-defined]
            raise NotFound("COPY/ADD source %r is not in %s" % (pattern, reader.where()))  # type: ignore[attr-defined]
        return [rel]
    found = [b""]
    for part in rel.split(b"/"):
        nxt = []
        for base in found:
            st = reader.lstat(base)  # type: ignore[attr-defined]
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            for name in reader.listdir(base):  # type: ignore[attr-defined]
                if fnmatch.fnmatchcase(os.fsdecode(name), os.fsdecode(part)):
                    child = base + b"/" + name if base else name
                    if reader.visible(child):  # type: ignore[attr-defined]
                        nxt.append(child)
        found = nxt
    if not found:
        raise NotFound("COPY/ADD source %r matches nothing in %s" % (pattern, reader.where()))  # type: ignore[attr-defined]
    return sorted(found)


class CopyPlan:
    """Everything one COPY/ADD step writes, computed before anything is written."""

    def __init__(self, step: Copy, view: ImageView, reader: object,
                 owner: Tuple[int, int], what: str) -> None:
        self.step = step
        self.view = view
        self.reader = reader
        self.owner = owner
        self.what = what
        self.chmod = step.chmod
        self.exclude = DockerIgnore("\n".join(step.excludes), "--exclude") \
            if step.excludes else None
        self.entries: Dict[bytes, Entry] = {}
        self.archives: List[Tuple[bytes, bytes]] = []   # (dest dir, archive path): ADD tars
        self._plan()

    # ------------------------------------------------------------------ planning
    def _plan(self) -> None:
        step = self.step
        matches: List[Tuple[bytes, bytes]] = []   # (source path, its --parents pivot)
        for pattern in step.sources:
            pivot = _clean_source(pattern.split("/./", 1)[0], self.reader.where()) \
                if step.parents and "/./" in pattern else b""  # type: ignore[attr-defined]
            matches += [(rel, pivot) for rel in expand(self.reader, pattern)
                        if not self._excluded_file(rel, pivot)]
        inline = step.heredoc_files
        count = len(matches) + len(inline)
        dest = step.dest_path
        dest_rel = self.view.resolve(dest)
        dest_st = self.view.lstat(dest_rel)
        into_dir = dest.endswith("/") or count > 1 or step.parents or (
            dest_st is not None and stat.S_ISDIR(dest_st.st_mode))
        if not into_dir:
            dest_rel = self._resolve_file_dest(dest)
        for rel, pivot in matches:
            if step.parents:
                self._with_parents(rel, pivot, dest_rel)
            else:
                self._source(rel, dest_rel, into_dir)
        for item in inline:
            target = _below(dest_rel, os.fsencode(item.name)) if into_dir else dest_rel
            data = item.content.encode("utf-8")
            self._add(Entry(target, stat.S_IFREG | self._mode(0o644, False), *self.owner,
                            size=len(data), data=data, digest=hashlib.sha256(data).hexdigest()))
        if into_dir and dest_rel:
            self._ensure_dir(dest_rel, created_owner=self.owner)
        self._parents()

    def _resolve_file_dest(self, dest: str) -> bytes:
        parent, _sep, name = dest.rstrip("/").rpartition("/")
        base = self.view.resolve(parent or "/")
        return (base + b"/" if base else b"") + os.fsencode(name)

    def _source(self, rel: bytes, dest_rel: bytes, into_dir: bool) -> None:
        st = self.reader.lstat(rel)  # type: ignore[attr-defined]
        if st is None:
            raise NotFound("COPY/ADD source %s vanished" % rel.decode("utf-8", "replace"))
        if stat.S_ISDIR(st.st_mode):
            self._tree(rel, dest_rel)
            return
        name = rel.rsplit(b"/", 1)[-1]
        target = _below(dest_rel, name) if into_dir else dest_rel
        if self.step.is_add and stat.S_ISREG(st.st_mode) and self._is_archive(rel):
            self._ensure_dir(dest_rel if into_dir else target, created_owner=self.owner)
            self.archives.append((dest_rel if into_dir else target, self.reader.path(rel)))  # type: ignore[attr-defined]
            return
        self._add(self._entry(rel, st, target))

    def _excluded_file(self, rel: bytes, pivot: bytes) -> bool:
        """A source file an ``--exclude`` pattern matches: by its name, or with
        ``--parents`` by its path from the pivot (directories are filtered below, path
        by path)."""
        if self.exclude is None:
            return False
        st = self.reader.lstat(rel)  # type: ignore[attr-defined]
        if st is not None and stat.S_ISDIR(st.st_mode):
            return False
        if self.step.parents:
            return self.exclude.matches(os.fsdecode(_relative(rel, pivot)))
        return self.exclude.matches(os.fsdecode(rel.rsplit(b"/", 1)[-1]))

    def _with_parents(self, rel: bytes, pivot: bytes, dest_rel: bytes) -> None:
        """COPY --parents: ``rel`` below the destination under its path from the pivot,
        with the directories on that path copied from the source."""
        below = _relative(rel, pivot)
        parts = below.split(b"/")
        for depth in range(1, len(parts)):
            source = b"/".join(([pivot] if pivot else []) + parts[:depth])
            st = self.reader.lstat(source)  # type: ignore[attr-defined]
            target = b"/".join(p for p in (dest_rel, b"/".join(parts[:depth])) if p)
            if st is not None and target not in self.entries:
                self._add(self._entry(source, st, target))
        target = b"/".join(p for p in (dest_rel, below) if p)
        st = self.reader.lstat(rel)  # type: ignore[attr-defined]
        if st is None:
            raise NotFound("COPY/ADD source %s vanished" % rel.decode("utf-8", "replace"))
        if stat.S_ISDIR(st.st_mode):
            self._add(self._entry(rel, st, target))
            self._tree(rel, target, base=pivot)
        else:
            self._add(self._entry(rel, st, target))

    def _mode(self, mode: int, is_dir: bool) -> int:
        return chmod_mode(self.chmod, mode, is_dir) if self.chmod else stat.S_IMODE(mode)

    def _tree(self, rel: bytes, dest_rel: bytes, base: Optional[bytes] = None) -> None:
        """The contents of directory ``rel`` below ``dest_rel``; ``--exclude`` patterns
        match paths from ``base`` (default: ``rel`` itself)."""
        base = rel if base is None else base
        stack = [(rel, dest_rel)]
        while stack:
            src, dst = stack.pop()
            for name in self.reader.listdir(src):  # type: ignore[attr-defined]
                child = src + b"/" + name if src else name
                if not self.reader.visible(child):  # type: ignore[attr-defined]
                    continue
                if self.exclude is not None and self.exclude.matches(
                        os.fsdecode(_relative(child, base))):
                    continue
                st = self.reader.lstat(child)  # type: ignore[attr-defined]
                target = dst + b"/" + name if dst else name
                if st is None or stat.S_ISSOCK(st.st_mode):
                    continue
                self._add(self._entry(child, st, target))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((child, target))

    def _entry(self, rel: bytes, st: os.stat_result, target: bytes) -> Entry:
        mode = stat.S_IFMT(st.st_mode) | self._mode(st.st_mode, stat.S_ISDIR(st.st_mode))
        entry = Entry(target, mode, *self.owner, mtime_ns=st.st_mtime_ns, rdev=st.st_rdev)
        if stat.S_ISREG(st.st_mode):
            entry.size = st.st_size
            entry.real = self.reader.path(rel)  # type: ignore[attr-defined]
            entry.digest = self.reader.digest(rel, st)  # type: ignore[attr-defined]
        elif stat.S_ISLNK(st.st_mode):
            entry.link = os.readlink(self.reader.path(rel))  # type: ignore[attr-defined]
        return entry

    def _is_archive(self, rel: bytes) -> bool:
        path = self.reader.path(rel)  # type: ignore[attr-defined]
        with open(path, "rb") as handle:
            head = handle.read(512)
        kind = detect(head)
        if kind in ("gzip", "zstd"):
            return True
        return len(head) == 512 and head[257:262] == b"ustar"

    def _add(self, entry: Entry) -> None:
        if not entry.dest:
            raise InvalidInput("%s would replace the image's root directory" % self.what)
        self._refuse_whiteout_name(entry.dest)
        self.entries[entry.dest] = entry

    def _refuse_whiteout_name(self, dest: bytes) -> None:
        """A layer reads a ``.wh.NAME`` entry as deleting NAME: a copied file with such a
        name would silently delete a file of the image instead of being copied."""
        name = next((p for p in dest.split(b"/") if p.startswith(WHITEOUT_PREFIX)), None)
        if name is not None:
            raise InvalidInput(
                "%s: /%s has a whiteout name (%s), which a layer reads as deleting %s, not as "
                "a file; rename it (or exclude it with .dockerignore)"
                % (self.what, dest.decode("utf-8", "replace"), name.decode("utf-8", "replace"),
                   name[len(WHITEOUT_PREFIX):].decode("utf-8", "replace")),
                member=dest.decode("utf-8", "replace"))

    def _ensure_dir(self, rel: bytes, created_owner: Tuple[int, int]) -> None:
        if rel and rel not in self.entries:
            self._refuse_whiteout_name(rel)
            self.entries[rel] = self._dir_entry(rel, created_owner)

    def _dir_entry(self, rel: bytes, created_owner: Tuple[int, int]) -> Entry:
        """A directory as the image has it, or a new one (0755) when it has none."""
        st = self.view.lstat(rel)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return Entry(rel, st.st_mode, st.st_uid, st.st_gid, mtime_ns=st.st_mtime_ns)
        if st is not None:
            raise InvalidInput("%s: %s is a file in the image, not a directory"
                               % (self.what, "/" + rel.decode("utf-8", "replace")))
        return Entry(rel, stat.S_IFDIR | 0o755, *created_owner, mtime_ns=self.newest())

    def _parents(self) -> None:
        for dest in list(self.entries):
            parts = dest.split(b"/")[:-1]
            for depth in range(1, len(parts) + 1):
                parent = b"/".join(parts[:depth])
                if parent not in self.entries:
                    self.entries[parent] = self._dir_entry(parent, (0, 0))

    def newest(self) -> int:
        return max((e.mtime_ns for e in self.entries.values() if e.real or e.data), default=0)

    # ------------------------------------------------------------------ results
    def digest(self) -> str:
        """``dir:<hex>``, ``file:<hex>`` or ``multi:<hex>`` over what is copied (no times)."""
        hasher = hashlib.sha256()
        for dest in sorted(self.entries):
            e = self.entries[dest]
            hasher.update(b"%s\0%o\0%d\0%d\0%d\0%s\0%s\0%d\n" % (
                dest, e.mode, e.uid, e.gid, e.size, e.digest.encode(), e.link, e.rdev))
        for dest, archive in self.archives:
            hasher.update(b"archive\0%s\0%s\n" % (dest, files.sha256(archive).encode()))
        kind = "multi"
        sources = len(self.step.sources) + len(self.step.heredoc_files)
        if sources == 1 and not self.archives:
            copied = [e for e in self.entries.values() if e.real or e.data]
            kind = "file" if len(copied) == 1 and not self.step.dest_path.endswith("/") else "dir"
        elif sources == 1:
            kind = "file"
        return "%s:%s" % (kind, hasher.hexdigest())

    def tar(self) -> Iterator[bytes]:
        for dest in sorted(self.entries):
            yield from self._emit(self.entries[dest])
        for dest, archive in self.archives:
            yield from _rerooted(archive, dest, self.what)
        yield end_of_archive()

    @staticmethod
    def _emit(entry: Entry) -> Iterator[bytes]:
        flag = entry.typeflag
        name = entry.dest + b"/" if flag == DIRTYPE else entry.dest
        mtime = (entry.mtime_ns // 1_000_000_000) * 1_000_000_000
        yield encode_header(name, flag, stat.S_IMODE(entry.mode), entry.uid, entry.gid,
                            entry.size if flag == REGTYPE else 0, mtime, entry.link,
                            os.major(entry.rdev) if flag in (CHRTYPE, BLKTYPE) else 0,
                            os.minor(entry.rdev) if flag in (CHRTYPE, BLKTYPE) else 0)
        if flag != REGTYPE or not entry.size:
            return
        if entry.data is not None:
            yield entry.data
        else:
            yield from files.chunks(entry.real or b"", entry.size)
        yield padding(entry.size)


def _rerooted(archive: bytes, dest: bytes, what: str) -> Iterator[bytes]:
    """The members of a local tar, renamed below ``dest`` (ADD extracts archives).

    Names are re-rooted but not otherwise trusted: the generated stream goes through
    the same applier as any layer, which refuses escapes.  Whiteout names are refused
    here: in an ADD archive they are ordinary files to Docker, never deletions."""
    fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    shown = "%s (archive %s)" % (what, archive.decode("utf-8", "replace"))
    stream = DecodedStream(lambda n: os.read(fd, n), what=shown, owned_fd=fd)
    try:
        reader = ChunkReader(stream.chunk, what=shown)
        parser = HeaderParser(reader)
        prefix = dest + b"/" if dest else b""
        while True:
            member = parser.next()
            if member is None:
                break
            name = b"/".join(p for p in member.name.split(b"/") if p not in (b"", b"."))
            if any(p.startswith(b".wh.") for p in name.split(b"/")):
                raise InvalidInput("%s: member %r has a whiteout name, which ADD cannot "
                                   "extract" % (shown, member.display()), member=member.display())
            link = member.linkname
            if member.typeflag == LNKTYPE:
                link = prefix + link.lstrip(b"/")
            yield encode_header(prefix + name, member.typeflag, member.mode, member.uid,
                                member.gid, member.size, member.mtime_ns, link,
                                member.devmajor, member.devminor, xattrs=member.xattrs)
            left = member.size + member.padding
            while left:
                piece = reader.read_some(left)
                if not piece:
                    raise InvalidInput("%s is truncated" % shown)
                left -= len(piece)
                yield bytes(piece)
    finally:
        stream.close()


def workdir_layer(view: ImageView, path: str, owner: Tuple[int, int], now_ns: int,
                  what: str) -> Optional[Iterator[bytes]]:
    """The layer a WORKDIR leaves when its directory is missing from the image (BuildKit
    creates it, with its missing parents, 0755 and owned by the USER in effect), or None
    when the image already has it."""
    rel = view.resolve(path)
    found = view.lstat(rel)
    if found is not None and stat.S_ISDIR(found.st_mode) or not rel:
        return None
    parts = rel.split(b"/")
    entries = []
    for depth in range(1, len(parts) + 1):
        sub = b"/".join(parts[:depth])
        st = view.lstat(sub)
        if st is None:
            entries.append(Entry(sub, stat.S_IFDIR | 0o755, *owner, mtime_ns=now_ns))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(Entry(sub, st.st_mode, st.st_uid, st.st_gid, mtime_ns=st.st_mtime_ns))
        else:
            raise InvalidInput("%s: /%s is not a directory in the image, so WORKDIR %s cannot "
                               "be created" % (what, sub.decode("utf-8", "replace"), path))
    return _entries_tar(entries)


def _entries_tar(entries: List[Entry]) -> Iterator[bytes]:
    for entry in entries:
        yield from CopyPlan._emit(entry)
    yield end_of_archive()


MAX_SPEC_BYTES = 8 << 20   # a Dockerfile or .dockerignore larger than this is refused


def read_build_file(context: Optional[str], name: str, what: str,
                    limit: int = MAX_SPEC_BYTES) -> Optional[str]:
    """The text of a build input (the Dockerfile, ``.dockerignore``), None when it does
    not exist.

    A relative ``name`` is resolved inside ``context`` as every context path is (a
    symlink to ``/etc/x`` means the context's ``etc/x``) and opened component by
    component without following symlinks; an absolute ``name`` is opened as named, but
    not through a final symlink.  Only a regular file is read, at most ``limit``
    bytes, and it must be UTF-8.  Messages name the file, never quote its bytes.
    """
    try:
        fd = _open_build_file(context, name)
    except FileNotFoundError:
        return None
    except NotBeneath as exc:
        raise InvalidInput("%s: %s %s inside the build context" % (
            what, os.fsdecode(exc.blocker), exc.reason)) from exc
    except OSError as exc:
        raise InvalidInput("cannot open %s: %s" % (what, exc.strerror or exc)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput("%s is not a regular file (a %s): give a file" % (
                what, _kind(st.st_mode)))
        data = _read_limited(fd, limit, what)
    finally:
        os.close(fd)
    return _utf8(data, what)


def _open_build_file(context: Optional[str], name: str) -> int:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
    if os.path.isabs(name) or not context:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    root = os.fsencode(os.path.realpath(context))
    real = resolve_beneath(root, os.fsencode(name))
    rel = os.path.relpath(real, root)
    if rel == b".":
        raise IsADirectoryError(errno.EISDIR, "is the context directory itself")
    with Beneath(os.fsdecode(root)) as tree:
        return tree.open_file(rel, flags)


def _read_limited(fd: int, limit: int, what: str) -> bytes:
    chunks: List[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise InvalidInput("%s is larger than %d bytes: refused" % (what, limit))


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidInput("%s is not UTF-8 text: byte 0x%02x at line %d, column %d (a "
                           "Latin-1 file?); save it as UTF-8" % (
                               what, data[exc.start], line, column), line=line) from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"
