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
import gzip
import hashlib
import json
import os
import stat
import zlib
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt
from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import _file_chunks

FILE, SEGMENT = 1, 2


def _name(entry: dict) -> bytes:
    if entry.get("name_raw"):
        return base64.b64decode(entry["name_raw"])
    return str(entry.get("name") or "").encode("utf-8")


def entries(path: str) -> Iterator[Tuple[int, bytes, int]]:
    """(type, payload-or-name, size) in stream order."""
    try:
        with gzip.open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                entry = json.loads(line)
                kind = entry.get("type")
                if kind == SEGMENT:
                    yield SEGMENT, base64.b64decode(entry.get("payload") or b""), 0
                elif kind == FILE:
                    yield FILE, _name(entry), int(entry.get("size") or 0)
                else:
                    raise Corrupt("%s line %d: unknown tar-split entry type %r"
                                  % (path, number, kind))
    except (OSError, EOFError, zlib.error, ValueError, binascii.Error) as exc:
        raise Corrupt("Docker's tar-split %s cannot be read (%s)" % (path, exc)) from exc


def chunks(split: "Union[str, Sequence[Tuple[int, bytes, int]]]", files_root: str,
           chunk: int = 1 << 20, shadow: Optional[Shadow] = None,
           read_from: Optional[Dict[bytes, Tuple[int, int]]] = None) -> Iterator[bytes]:
    """The layer's tar, re-emitted from ``files_root`` (a generator).  ``split`` is the
    tar-split file, or its ``entries`` already read (a second pass need not parse the
    JSON again).  With a ``shadow``, each file is first cloned (reflink) and its data
    read from the clone, which the applier then takes as the new layer's file: the bytes
    hashed are the new file's own and none are written; ``read_from`` gets each cloned
    file's (device, inode) for ``same_files``."""
    with Beneath(files_root) as tree:
        if shadow is None:
            for kind, value, size in (entries(split) if isinstance(split, str) else split):
                if kind == SEGMENT:
                    if value:
                        yield value
                elif size:
                    yield from _file_chunks(tree, _clean(value), size, chunk)
            return
        yield from _cloning(tree, split if not isinstance(split, str) else list(entries(split)),
                            chunk, shadow, {} if read_from is None else read_from)


def _cloning(tree: Beneath, split: Sequence[Tuple[int, bytes, int]], chunk: int,
             shadow: Shadow, read_from: Dict[bytes, Tuple[int, int]]) -> Iterator[bytes]:
    """``chunks`` through a shadow: a file is cloned *before* the segment holding its
    header is given out, because the applier takes the clone as soon as it has parsed
    the header."""
    clones: dict = {}
    try:
        for index, (kind, value, size) in enumerate(split):
            if kind == SEGMENT:
                after = split[index + 1] if index + 1 < len(split) else None
                if after is not None and after[0] == FILE and after[2] and shadow.enabled:
                    clones[index + 1] = _clone(tree, _clean(after[1]), after[2], shadow)
                if value:
                    yield value
            elif size:
                fd = clones.pop(index, None)
                if fd is None:  # this filesystem cannot clone: read (and write) as usual
                    yield from _file_chunks(tree, _clean(value), size, chunk)
                else:
                    st = os.fstat(fd)
                    read_from[_clean(value)] = (st.st_dev, st.st_ino)
                    yield from _read_clone(fd, _clean(value), size, chunk)
    finally:
        for fd in clones.values():
            if fd is not None:
                os.close(fd)


def _clone(tree: Beneath, name: bytes, size: int, shadow: Shadow) -> Optional[int]:
    shown = name.decode("utf-8", "backslashreplace")
    try:
        src = tree.open_file(name)
    except (OSError, NotBeneath) as exc:
        raise Corrupt("layer file %s is missing or unreadable (%s)" % (shown, exc),
                      member=shown) from exc
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise Corrupt("layer file %s changed on disk (%d bytes, %d recorded)"
                          % (shown, st.st_size, size), member=shown)
        return shadow.clone_fd(src, name)
    finally:
        os.close(src)


def _read_clone(fd: int, name: bytes, size: int, chunk: int) -> Iterator[bytes]:
    shown = name.decode("utf-8", "backslashreplace")
    try:
        left = size
        while left:
            data = os.read(fd, min(chunk, left))
            if not data:
                raise Corrupt("layer file %s shrank while being read" % shown, member=shown)
            left -= len(data)
            yield data
    finally:
        os.close(fd)


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
