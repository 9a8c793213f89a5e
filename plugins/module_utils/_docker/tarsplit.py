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
import zlib
from typing import Iterator, Sequence, Tuple, Union

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath
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
           chunk: int = 1 << 20) -> Iterator[bytes]:
    """The layer's tar, re-emitted from ``files_root`` (a generator).  ``split`` is the
    tar-split file, or its ``entries`` already read (a second pass need not parse the
    JSON again)."""
    with Beneath(files_root) as tree:
        for kind, value, size in (entries(split) if isinstance(split, str) else split):
            if kind == SEGMENT:
                if value:
                    yield value
                continue
            if size:
                yield from _file_chunks(tree, _clean(value), size, chunk)


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
