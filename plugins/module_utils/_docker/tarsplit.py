# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker's ``tar-split.json.gz``: a layer's tar without its file contents.

One JSON object a line (vbatts/tar-split's storage format): ``type`` 2 is a segment
whose ``payload`` (base64) is raw tar bytes (headers, padding, the end blocks); ``type``
1 is a tar entry, ``name`` (or ``name_raw``, base64, when the name is not UTF-8) and
``size``: that many bytes of file content come from the layer's files at that path.
Entries of size 0 (directories, links, whiteouts) read nothing.

Re-emitting the segments and the file contents in order gives the layer's tar byte for
byte, which hashes to its diff_id: this is how dockerd serves ``docker save``, and how
the migration reads a layer from the old driver and verifies it under the new one.
"""
from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import gzip
import hashlib
import json
import os
import stat
import zlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt
from ansible_collections.strata.layers.plugins.module_utils._copytree import FICLONE
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import (
    _file_chunks, open_recorded)

FILE, SEGMENT = 1, 2


def _name(entry: dict) -> bytes:
    if entry.get("name_raw"):
        return base64.b64decode(entry["name_raw"])
    return str(entry.get("name") or "").encode("utf-8")


_BATCH = 1 << 20  # bytes of JSON lines decoded by one json.loads call


def entries(path: str) -> Iterator[Tuple[int, bytes, int]]:
    """(type, payload-or-name, size) in stream order."""
    try:
        with gzip.open(path, "rb") as handle:
            number = 0
            while True:
                lines = handle.readlines(_BATCH)
                if not lines:
                    return
                for number, entry in _decoded(lines, number, path):
                    kind = entry.get("type")
                    if kind == SEGMENT:
                        yield SEGMENT, binascii.a2b_base64(entry.get("payload") or b""), 0
                    elif kind == FILE:
                        yield FILE, _name(entry), int(entry.get("size") or 0)
                    else:
                        raise Corrupt("%s line %d: unknown tar-split entry type %r"
                                      % (path, number, kind))
    except (OSError, EOFError, zlib.error, ValueError, TypeError, binascii.Error) as exc:
        raise Corrupt("Docker's tar-split %s cannot be read (%s)" % (path, exc)) from exc


def _decoded(lines: List[bytes], before: int, path: str) -> List[Tuple[int, dict]]:
    """(line number, object) of a batch of lines: one ``json.loads`` for the whole batch
    (the per-line call was a third of the parse); line by line only to name the line at
    fault."""
    numbered = [(before + index, line) for index, line in enumerate(lines, 1) if line.strip()]
    try:
        objects = json.loads(b"[" + b",".join(line for _n, line in numbered) + b"]")
    except ValueError:
        objects = []
        for number, line in numbered:
            try:
                objects.append(json.loads(line))
            except ValueError as exc:
                raise Corrupt("%s line %d: not JSON (%s)" % (path, number, exc)) from exc
    if len(objects) != len(numbered):  # a line holding two values ("1,2")
        raise Corrupt("%s: a line holds more than one tar-split entry" % path)
    for (number, _line), entry in zip(numbered, objects):
        if not isinstance(entry, dict):
            raise Corrupt("%s line %d: a tar-split entry is a JSON object, not %s"
                          % (path, number, type(entry).__name__))
    return [(number, entry) for (number, _line), entry in zip(numbered, objects)]


def chunks(split: "Union[str, Sequence[Tuple[int, bytes, int]]]", files_root: str,
           chunk: int = 1 << 20, clones: "Optional[Clones]" = None) -> Iterator[bytes]:
    """The layer's tar, re-emitted from ``files_root`` (a generator).  ``split`` is the
    tar-split file, or its ``entries`` already read (a second pass need not parse the
    JSON again).  With ``clones`` (given to the applier as its shadow too), each file
    the applier creates is a reflink clone of the old one and the stream reads its data
    from that new file: the bytes hashed are the new file's own and none are written."""
    with Beneath(files_root) as tree:
        if clones is None:
            for kind, value, size in (entries(split) if isinstance(split, str) else split):
                if kind == SEGMENT:
                    if value:
                        yield value
                elif size:
                    yield from _file_chunks(tree, _clean(value), size, chunk)
            return
        try:
            yield from _cloning(tree, split if not isinstance(split, str)
                                else list(entries(split)), chunk, clones)
        finally:
            clones.close()


def _cloning(tree: Beneath, split: Sequence[Tuple[int, bytes, int]], chunk: int,
             clones: "Clones") -> Iterator[bytes]:
    """``chunks`` through ``clones``: a file is opened (and offered to the applier)
    *before* the segment holding its header is given out, because the applier creates
    the file as soon as it has parsed the header."""
    for index, (kind, value, size) in enumerate(split):
        if kind == SEGMENT:
            after = split[index + 1] if index + 1 < len(split) else None
            if after is not None and after[0] == FILE and after[2] and clones.enabled:
                clones.offer(_clean(after[1]), open_recorded(tree, _clean(after[1]), after[2]))
            if value:
                yield value
        elif size:
            fd = clones.made(_clean(value))
            if fd is None:  # not cloned: read the old file, the applier writes the data
                clones.drop(_clean(value))
                yield from _file_chunks(tree, _clean(value), size, chunk)
            else:
                yield from _read_new(fd, _clean(value), size, chunk)


def _read_new(fd: int, name: bytes, size: int, chunk: int) -> Iterator[bytes]:
    shown = name.decode("utf-8", "backslashreplace")
    try:
        left, offset = size, 0
        while left:
            data = os.pread(fd, min(chunk, left), offset)
            if not data:
                raise Corrupt("layer file %s shrank while being read" % shown, member=shown)
            left -= len(data)
            offset += len(data)
            yield data
    finally:
        os.close(fd)


class Clones:
    """The applier's shadow for a layer re-emitted from the old driver's files: the file
    the applier would create at a member's name is made as a reflink clone of the old
    file (no data written), and the stream reads the member's data back from that new
    file.  On a filesystem that cannot clone it turns off at the first file (the applier
    then writes the data it reads from the old file).  ``read_from`` gets each cloned
    file's (device, inode), for ``same_files``."""

    def __init__(self) -> None:
        self.enabled = True
        self.read_from: Dict[bytes, Tuple[int, int]] = {}
        self._old: Dict[bytes, int] = {}
        self._new: Dict[bytes, int] = {}

    def offer(self, rel: bytes, src: int) -> None:
        old = self._old.pop(rel, None)
        if old is not None:
            os.close(old)
        self._old[rel] = src

    def take(self, rel: bytes, size: int, name: bytes, dir_fd: int) -> Optional[int]:
        """Called by the applier instead of creating ``name``: the clone, or None."""
        src = self._old.pop(rel, None)
        if src is None:
            return None
        try:
            if not self.enabled or os.fstat(src).st_size != size:
                return None
            dst = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                          os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                fcntl.ioctl(dst, FICLONE, src)
            except OSError as exc:
                os.close(dst)
                os.unlink(name, dir_fd=dir_fd)
                if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                    self.enabled = False
                    return None
                raise
            st = os.fstat(dst)
            self.read_from[rel] = (st.st_dev, st.st_ino)
            self._new[rel] = os.dup(dst)
            return dst
        finally:
            os.close(src)

    def made(self, rel: bytes) -> Optional[int]:
        return self._new.pop(rel, None)

    def drop(self, rel: bytes) -> None:
        src = self._old.pop(rel, None)
        if src is not None:
            os.close(src)

    def close(self) -> None:
        for fd in list(self._old.values()) + list(self._new.values()):
            os.close(fd)
        self._old.clear()
        self._new.clear()


def _clean(name: bytes) -> bytes:
    """A member name as a path below the layer (``./etc/x`` -> ``etc/x``)."""
    return b"/".join(p for p in name.split(b"/") if p not in (b"", b"."))


def digest(split: "Union[str, Sequence[Tuple[int, bytes, int]]]",
           files_root: str) -> Tuple[str, int]:
    """sha256 digest and size of the re-emitted tar."""
    hasher = hashlib.sha256()
    total = 0
    for data in chunks(split, files_root):
        hasher.update(data)
        total += len(data)
    return "sha256:" + hasher.hexdigest(), total


def same_files(split: Sequence[Tuple[int, bytes, int]], files_root: str,
               read_from: Dict[bytes, Tuple[int, int]]) -> bool:
    """Whether every file the tar-split names with data is, under ``files_root``, the
    very inode whose data was read (and hashed) as it was applied, at its recorded size.

    Then re-emitting the tar from ``files_root`` would read those same inodes, which
    nothing has written since (the applier took the clones without writing), and hash to
    the same digest: this check stands in for that second read.  False (not proven: a
    file was copied instead of cloned, or is not where it should be) sends the caller to
    the full re-read."""
    with Beneath(files_root) as tree:
        for kind, value, size in split:
            if kind != FILE or not size:
                continue
            name = _clean(value)
            want = read_from.get(name)
            if want is None:
                return False
            parent, _sep, base = name.rpartition(b"/")
            try:
                st = os.lstat(base, dir_fd=tree.dir_fd(parent))
            except (OSError, NotBeneath):
                return False
            if (st.st_dev, st.st_ino) != want or st.st_size != size \
                    or not stat.S_ISREG(st.st_mode):
                return False
    return True
