# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The header record of a layer: enough to re-emit its tar byte for byte.

Like containers/storage's tar-split, the record keeps every byte of the tar that is
*not* file content (headers, extension headers, padding, the end marker and what
follows it) and, for each regular file, only its path inside the layer and its size.
Re-emitting reads the file contents back from the driver's copy of the layer; the
result hashes to the layer's diff_id unless the stored files were changed (which is
exactly what ``store_check`` wants to detect).

Format (gzip-compressed): the line ``strata-tar-split/1``, then records:
``S <varint len> <bytes>`` raw bytes, ``F <varint len> <path> <varint size>`` file
content, ``E`` end.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import stat
import zlib
from typing import BinaryIO, Callable, Iterator, Tuple, Union

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath

MAGIC = b"strata-tar-split/1\n"
_FLUSH_AT = 1 << 16
# records are compressed in batches this large, at level 1: per-call overhead and
# deflate effort were a tenth of an import's time, and headers compress well anyway
_COMPRESS_AT = 1 << 20
_LEVEL = 1
Sink = Callable[[Union[bytes, memoryview]], object]
_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class TarSplitWriter:
    """Streams records into a gzip file; raw bytes are coalesced between files."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._z = zlib.compressobj(_LEVEL, zlib.DEFLATED, 31)
        self._pending = bytearray()
        self._records = bytearray()
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self._records += data
        if len(self._records) >= _COMPRESS_AT:
            self._compress()

    def _compress(self) -> None:
        out = self._z.compress(self._records)
        self._records.clear()
        if out:
            _write_all(self._fd, out)

    def raw(self, data: Union[bytes, memoryview]) -> None:
        self._pending += data
        if len(self._pending) >= _FLUSH_AT:
            self._flush_raw()

    def _flush_raw(self) -> None:
        if self._pending:
            self._records += b"S" + _varint(len(self._pending))
            self._write(self._pending)
            self._pending.clear()

    def file(self, path: bytes, size: int) -> None:
        self._flush_raw()
        self._write(b"F" + _varint(len(path)) + path + _varint(size))

    def close(self) -> None:
        """Finish the record and fsync it (the record dir is renamed into place later)."""
        if self._fd < 0:
            return
        self._flush_raw()
        self._write(b"E")
        self._compress()
        _write_all(self._fd, self._z.flush())
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: Union[bytes, memoryview]) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_varint(handle: BinaryIO) -> int:
    shift = 0
    value = 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise Corrupt("header record ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7


def records(path: str) -> Iterator[Tuple[str, Union[bytes, Tuple[bytes, int]]]]:
    """Yields ("S", raw bytes) and ("F", (path, size)) in stream order."""
    try:
        with gzip.open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                raise Corrupt("%s is not a strata header record" % path)
            while True:
                kind = handle.read(1)
                if kind == b"S":
                    length = _read_varint(handle)
                    data = handle.read(length)
                    if len(data) != length:
                        raise Corrupt("header record %s is truncated" % path)
                    yield "S", data
                elif kind == b"F":
                    name = handle.read(_read_varint(handle))
                    yield "F", (name, _read_varint(handle))
                elif kind == b"E":
                    return
                else:
                    raise Corrupt("header record %s is truncated or damaged" % path)
    except (OSError, EOFError, zlib.error) as exc:
        raise Corrupt("header record %s cannot be read (%s)" % (path, exc)) from exc


def file_entries(path: str) -> Iterator[Tuple[bytes, int]]:
    for kind, value in records(path):
        if kind == "F":
            yield value  # type: ignore[misc]


def chunks(split_path: str, layer_root: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The layer's tar, re-emitted, as chunks (a generator: nothing is buffered).

    Raises Corrupt when a file named by the record is missing, is not a regular file or
    has another size than recorded: the stored layer no longer matches its diff_id."""
    with Beneath(layer_root) as tree:
        for kind, value in records(split_path):
            if kind == "S":
                yield value  # type: ignore[misc]
                continue
            name, size = value  # type: ignore[misc]
            yield from _file_chunks(tree, name, size, chunk)


def emit(split_path: str, layer_root: str, sink: Sink,
         chunk: int = 1 << 20) -> Tuple[str, int]:
    """Write the layer's tar to ``sink``; return (sha256 digest, size) of what was written."""
    hasher = hashlib.sha256()
    total = 0
    for data in chunks(split_path, layer_root, chunk):
        hasher.update(data)
        sink(data)
        total += len(data)
    return "sha256:" + hasher.hexdigest(), total


def open_recorded(tree: Beneath, name: bytes, size: int) -> int:
    """A descriptor of layer file ``name``, still the regular file of ``size`` bytes its
    header record names (Corrupt when it is missing, replaced or resized)."""
    shown = name.decode("utf-8", "backslashreplace")
    try:
        fd = tree.open_file(name)
    except (OSError, NotBeneath) as exc:
        raise Corrupt("layer file %s is missing or unreadable (%s)" % (shown, exc),
                      member=shown) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        os.close(fd)
        raise Corrupt("layer file %s changed on disk (%d bytes, %d recorded)"
                      % (shown, st.st_size, size), member=shown)
    return fd


def _file_chunks(tree: Beneath, name: bytes, size: int, chunk: int) -> Iterator[bytes]:
    shown = name.decode("utf-8", "backslashreplace")
    fd = open_recorded(tree, name, size)
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
