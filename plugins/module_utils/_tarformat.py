# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tar headers, read and written by the store itself.

``TarFile.extract`` is not used anywhere: it follows links, trusts owner names and
stops silently on bad headers.  This module only *parses* (ustar, GNU long names,
PAX local and global headers, base-256 numbers, checksums verified) and *encodes*
headers; what a member does to the disk is decided by ``_apply``.

Every byte of a header (extension headers, their data and padding included) is kept
in ``Member.raw`` so the tar can be re-emitted byte for byte from the header record
(``_tarsplit``) and the layer's files.
"""
from __future__ import annotations

import base64
import hashlib
import struct
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, StoreError, Unsupported)

BLOCK = 512
MAX_EXTENSION = 1 << 20  # PAX / GNU long-name data larger than this is refused (Go caps the same)
MAX_EXTENSIONS = 8  # extension headers before one member (x, g, L, K: one each is the norm)
ZERO_BLOCK = bytes(BLOCK)

REGTYPE = b"0"
AREGTYPE = b"\0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
CONTTYPE = b"7"
PAX_LOCAL = b"x"
PAX_GLOBAL = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"

FILE_TYPES = (REGTYPE, AREGTYPE, CONTTYPE)
KNOWN_TYPES = FILE_TYPES + (LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE)
# types whose size must be 0 (a directory's is ignored, as GNU tar does)
_NO_DATA_TYPES = (LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, FIFOTYPE)


class Truncated(Corrupt):
    """The stream ended in the middle of a header or a member's data."""


Chunk = Union[bytes, bytearray, memoryview]


# A chunk this large is hashed on a worker thread while the applier writes it out
# (sha256 releases the GIL): on two cores that hides most of the hashing.
_HASH_BEHIND = 1 << 18
_POOL: List[Any] = []
_POOL_LOCK = threading.Lock()


def _hash_pool() -> Any:
    """The worker (a ThreadPoolExecutor), made on first use: modules that never read a
    large stream do not pay for concurrent.futures at start-up."""
    with _POOL_LOCK:
        if not _POOL:
            from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel
            _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="strata-sha256"))
        return _POOL[0]


class HashedSource:
    """A chunk source that hashes (sha256) what it hands out itself, on a thread of its
    own (``_compression.ReadAhead``): a ChunkReader over its ``chunk`` takes that hash
    instead of hashing every chunk a second time.  Its chunks are fresh objects, never
    reused once handed out, so views of them may be kept (``ChunkReader.stable``)."""

    def chunk(self) -> bytes:
        raise NotImplementedError

    def hashed(self) -> "hashlib._Hash":
        """The hash of every chunk handed out so far."""
        raise NotImplementedError


class ChunkReader:
    """Buffered reader over a chunk source that hashes and counts every byte it pulls.

    ``source()`` returns the next chunk (empty at end of stream); a chunk stays valid
    until the next call.  Because the tar parser drains the stream to its end, the
    hash is the digest of the whole uncompressed stream: the layer's diff_id.  A large
    chunk is hashed on a worker thread while it is parsed and written; the hash of a
    chunk is always complete before the next chunk is asked for (the source may reuse
    its buffer) and before ``hasher`` is read.
    """

    def __init__(self, source, limit: Optional[int] = None, what: str = "layer") -> None:
        self._source = source
        self._chunk: memoryview = memoryview(b"")
        self._pos = 0
        self._hasher = hashlib.sha256()
        self._hashing: Optional[Any] = None     # the Future of the last chunk's hash
        owner = getattr(source, "__self__", None)
        self._prehashed: Optional[HashedSource] = owner if isinstance(owner, HashedSource) \
            else None
        self.total = 0
        self.limit = limit
        self.what = what
        self.eof = False

    @property
    def hasher(self) -> "hashlib._Hash":
        """The hash of every byte pulled so far."""
        if self._prehashed is not None:
            return self._prehashed.hashed()
        self._hashed()
        return self._hasher

    def _hashed(self) -> None:
        if self._hashing is not None:
            hashing, self._hashing = self._hashing, None
            hashing.result()

    def _next_chunk(self) -> bool:
        if self.eof:
            return False
        self._hashed()
        data = self._source()
        if not data:
            self.eof = True
            self._chunk = memoryview(b"")
            self._pos = 0
            return False
        view = memoryview(data)
        if self._prehashed is not None:
            pass
        elif len(view) >= _HASH_BEHIND:
            self._hashing = _hash_pool().submit(self._hasher.update, view)
        else:
            self._hasher.update(view)
        self.total += len(view)
        if self.limit is not None and self.total > self.limit:
            raise InvalidInput(
                "%s is larger than max_size (%d bytes) once uncompressed; refused before "
                "anything was kept (raise max_size if the layer is legitimate)"
                % (self.what, self.limit), limit=self.limit)
        self._chunk = view
        self._pos = 0
        return True

    @property
    def stable(self) -> bool:
        """Whether the chunks handed out stay valid after the next one is pulled (a
        HashedSource's are fresh objects, never reused): views of them may be kept."""
        return self._prehashed is not None

    def available(self) -> int:
        return len(self._chunk) - self._pos

    def read_some(self, n: int) -> memoryview:
        """Up to ``n`` bytes (at least one unless at end of stream)."""
        if self._pos >= len(self._chunk) and not self._next_chunk():
            return memoryview(b"")
        end = min(len(self._chunk), self._pos + n)
        view = self._chunk[self._pos:end]
        self._pos = end
        return view

    def read_exact(self, n: int, context: str) -> bytes:
        if self.available() >= n:
            start = self._pos
            self._pos += n
            return bytes(self._chunk[start:self._pos])
        parts = bytearray()
        while len(parts) < n:
            piece = self.read_some(n - len(parts))
            if not piece:
                raise Truncated("%s: the stream ends in the middle of %s (offset %d)"
                                % (self.what, context, self.total))
            parts += piece
        return bytes(parts)


@dataclass
class Member:
    """One tar entry, as parsed (names are raw bytes, never decoded)."""

    name: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    atime_ns: Optional[int] = None
    xattrs: Dict[str, bytes] = field(default_factory=dict)
    raw: bytes = b""
    offset: int = 0

    def display(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")

    @property
    def is_file(self) -> bool:
        return self.typeflag in FILE_TYPES

    @property
    def padding(self) -> int:
        return (-self.size) % BLOCK


def _parse_number(field_bytes: bytes, name: str, member: str, signed: bool = False) -> int:
    if field_bytes and field_bytes[0] & 0x80:
        # GNU base-256: big-endian two's complement, top bit is the marker.
        value = int.from_bytes(bytes([field_bytes[0] & 0x7F]) + field_bytes[1:], "big")
        if field_bytes[0] & 0x40:
            value -= 1 << (len(field_bytes) * 8 - 1)
        if value < 0 and not signed:
            raise Corrupt("tar member %s has a negative %s" % (member, name), member=member)
        return value
    text = field_bytes.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as exc:
        raise Corrupt("tar member %s has an invalid %s field %r" % (member, name, text),
                      member=member) from exc


# The ustar header in one precompiled layout: name, mode, uid, gid, size, mtime, chksum,
# typeflag, linkname, magic+version, uname, gname, devmajor, devminor, prefix.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_NUMERIC = (1, 2, 3, 4, 5, 12, 13)   # mode, uid, gid, size, mtime, devmajor, devminor
_EXTENSION_TYPES = (PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK)
_NUMERIC_NAMES = ("mode", "uid", "gid", "size", "mtime", "devmajor", "devminor")


def _numbers(fields: Tuple[bytes, ...], hint: Callable[[], str]) -> List[int]:
    """The seven numeric fields of a header, parsed once.  Plain octal (the norm) takes
    one ``int`` each; anything else (base-256, blanks, garbage) goes through
    ``_parse_number``, which gives the same values and the same errors."""
    try:
        return [int(fields[i].split(b"\0", 1)[0] or b"0", 8) for i in _NUMERIC]
    except ValueError:
        member = hint()
        return [_parse_number(fields[i], name, member, signed=name == "mtime")
                for i, name in zip(_NUMERIC, _NUMERIC_NAMES)]


def checksum_ok(block: bytes) -> bool:
    stored = block[148:156]
    try:
        want = int(stored.split(b"\0", 1)[0].strip(b" \0") or b"-1", 8)
    except ValueError:
        return False
    # the checksum field counts as eight spaces
    unsigned = sum(block) - sum(stored) + 8 * 32
    if want == unsigned:
        return True
    signed = sum((b - 256 if b > 127 else b) for b in block[:148] + block[156:]) + 8 * 32
    return want == signed


def parse_pax(data: bytes, member_hint: str) -> Dict[bytes, bytes]:
    records: Dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise Corrupt("malformed PAX header before %s" % member_hint, member=member_hint)
        try:
            length = int(data[pos:space])
        except ValueError as exc:
            raise Corrupt("malformed PAX record length before %s" % member_hint,
                          member=member_hint) from exc
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1:end] != b"\n":
            raise Corrupt("malformed PAX record before %s" % member_hint, member=member_hint)
        keyvalue = data[space + 1:end - 1]
        key, sep, value = keyvalue.partition(b"=")
        if not sep or not key:
            raise Corrupt("malformed PAX record %r before %s" % (keyvalue[:40], member_hint),
                          member=member_hint)
        records[key] = value
        pos = end
    return records


def _pax_time_ns(value: bytes, member: str) -> int:
    try:
        text = value.decode("ascii")
        negative = text.startswith("-")
        whole, _sep, frac = text.lstrip("-").partition(".")
        ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
        return -ns if negative else ns
    except ValueError as exc:
        raise Corrupt("tar member %s has an invalid PAX time %r" % (member, value),
                      member=member) from exc


def _pax_int(value: bytes, key: str, member: str) -> int:
    try:
        number = int(value.decode("ascii"))
    except ValueError as exc:
        raise Corrupt("tar member %s has an invalid PAX %s %r" % (member, key, value),
                      member=member) from exc
    if number < 0:
        raise Corrupt("tar member %s has a negative PAX %s" % (member, key), member=member)
    return number


class HeaderParser:
    """Reads members one at a time from a ChunkReader (payloads are left to the caller)."""

    def __init__(self, reader: ChunkReader) -> None:
        self.reader = reader
        self.globals: Dict[bytes, bytes] = {}
        self.index = 0
        self.end_block = b""

    def next(self) -> Optional[Member]:
        """The next member, or None at the end-of-archive marker (or a clean EOF)."""
        try:
            return self._next()
        except StoreError as exc:
            if self.reader.what in exc.msg:
                raise
            # field and PAX parsers know the member, not the stream: add the input's name
            raise type(exc)("%s: %s" % (self.reader.what, exc.msg), **exc.details) from exc

    def _next(self) -> Optional[Member]:
        # raw collects the extension headers before the member; for the common member
        # without any (one header block), the block itself is its raw bytes
        raw = bytearray()
        pax: Dict[bytes, bytes] = {}
        longname: Optional[bytes] = None
        longlink: Optional[bytes] = None
        extensions = 0
        reader = self.reader
        start = reader.total - reader.available()
        self.end_block = b""
        while True:
            if reader.available() == 0 and not reader._next_chunk():
                if raw:
                    raise Truncated("%s: the stream ends after an extension header "
                                    "(offset %d)" % (reader.what, reader.total))
                return None
            block = reader.read_exact(BLOCK, "a tar header")
            if block == ZERO_BLOCK:
                if raw:
                    raise Corrupt("%s: a zero block follows an extension header (offset %d)"
                                  % (reader.what, start))
                self.end_block = block
                return None
            if not checksum_ok(block):
                raise Corrupt("%s: tar header of entry #%d at offset %d has a bad checksum "
                              "(not a tar stream, or corrupt)"
                              % (reader.what, self.index + 1,
                                 reader.total - reader.available() - BLOCK))
            typeflag = block[156:157]
            if typeflag not in _EXTENSION_TYPES:
                self.index += 1
                if raw:
                    raw += block
                    return self._member(block, bytes(raw), pax, longname, longlink, start)
                return self._member(block, block, pax, longname, longlink, start)
            raw += block
            hint = "entry #%d" % (self.index + 1)
            # an extension header: its data, then the next header
            extensions += 1
            if extensions > MAX_EXTENSIONS:
                # each header is kept (raw) until its member comes: bound their number
                raise InvalidInput("%s: %s follows more than %d extension headers in a "
                                   "row: refused" % (self.reader.what, hint, MAX_EXTENSIONS),
                                   member=hint)
            size = _parse_number(block[124:136], "size", hint)
            if size > MAX_EXTENSION:
                raise InvalidInput("%s: extension header of %s is %d bytes (limit %d): "
                                   "refused" % (self.reader.what, hint, size, MAX_EXTENSION),
                                   member=hint)
            padded = size + ((-size) % BLOCK)
            data = self.reader.read_exact(padded, "an extension header")
            raw += data
            data = data[:size]
            if typeflag == PAX_LOCAL:
                pax.update(parse_pax(data, hint))
            elif typeflag == PAX_GLOBAL:
                # parsed and bounded, applied to no member (as Docker's reader)
                self.globals.update(parse_pax(data, hint))
                if sum(len(k) + len(v) for k, v in self.globals.items()) > MAX_EXTENSION:
                    raise InvalidInput("%s: the PAX global headers up to %s hold more than "
                                       "%d bytes: refused" % (self.reader.what, hint,
                                                              MAX_EXTENSION), member=hint)
            elif typeflag == GNU_LONGNAME:
                longname = data.split(b"\0", 1)[0]
            else:
                longlink = data.split(b"\0", 1)[0]

    def _member(self, block: bytes, raw: bytes, pax: Dict[bytes, bytes],
                longname: Optional[bytes], longlink: Optional[bytes], offset: int) -> Member:
        # read as Go's archive/tar (Docker's reader) reads it, so the files are the ones
        # Docker puts on disk for the same diff_id: a PAX global header applies to no
        # member (Docker ignores them), a GNU long name or link wins over a PAX path or
        # linkpath, an old-style file whose name ends in "/" is a directory, and a
        # directory carries no data whatever size its header declares
        fields = _USTAR.unpack(block)
        merged = pax
        name = fields[0].split(b"\0", 1)[0]
        if fields[9][:6] == b"ustar\0":
            prefix = fields[14].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        if merged and b"path" in merged:
            name = merged[b"path"]
        if longname is not None:
            name = longname
        typeflag = fields[7]
        if typeflag == AREGTYPE and name.endswith(b"/"):
            typeflag = DIRTYPE
        if merged or typeflag not in KNOWN_TYPES:
            self._refuse_type(name, typeflag, merged)
        linkname = fields[8].split(b"\0", 1)[0]
        if merged and b"linkpath" in merged:
            linkname = merged[b"linkpath"]
        if longlink is not None:
            linkname = longlink
        mode, uid, gid, size, mtime, devmajor, devminor = _numbers(
            fields, lambda: name.decode("utf-8", "backslashreplace"))
        member = Member(name=name, typeflag=typeflag, mode=mode & 0o7777, uid=uid, gid=gid,
                        size=size, mtime_ns=mtime * 1_000_000_000, linkname=linkname, raw=raw,
                        offset=offset, devmajor=devmajor, devminor=devminor)
        if merged:
            self._apply_pax(member, merged, name.decode("utf-8", "backslashreplace"))
        if typeflag == DIRTYPE:
            member.size = 0   # what follows the header is the next header (as in Go)
        if member.size and typeflag in _NO_DATA_TYPES:
            hint = name.decode("utf-8", "backslashreplace")
            raise Corrupt("tar member %s (type %s) declares %d bytes of data"
                          % (hint, member.typeflag.decode(), member.size), member=hint)
        return member

    @staticmethod
    def _refuse_type(name: bytes, typeflag: bytes, merged: Dict[bytes, bytes]) -> None:
        """Sparse files (GNU.sparse PAX keys or type S) and types a layer cannot hold."""
        hint = name.decode("utf-8", "backslashreplace")
        for key in merged:
            if key.startswith(b"GNU.sparse."):
                raise Unsupported("tar member %s is a sparse file (GNU.sparse PAX headers), "
                                  "which layers cannot hold; re-create the tar without "
                                  "--sparse" % hint, member=hint)
        if typeflag == b"S":
            raise Unsupported("tar member %s is a GNU sparse file, which layers cannot hold; "
                              "re-create the tar without --sparse" % hint, member=hint)
        if typeflag not in KNOWN_TYPES:
            raise InvalidInput("tar member %s has type %r, which a layer cannot hold"
                               % (hint, typeflag.decode("latin-1")), member=hint)

    @staticmethod
    def _apply_pax(member: Member, pax: Dict[bytes, bytes], hint: str) -> None:
        for key, value in pax.items():
            if key == b"size":
                member.size = _pax_int(value, "size", hint)
            elif key == b"uid":
                member.uid = _pax_int(value, "uid", hint)
            elif key == b"gid":
                member.gid = _pax_int(value, "gid", hint)
            elif key == b"mtime":
                member.mtime_ns = _pax_time_ns(value, hint)
            elif key == b"atime":
                member.atime_ns = _pax_time_ns(value, hint)
            elif key.startswith(b"SCHILY.xattr."):
                member.xattrs[key[len(b"SCHILY.xattr."):].decode("utf-8", "surrogateescape")] = value
            elif key.startswith(b"LIBARCHIVE.xattr."):
                xname = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr."):])
                try:
                    decoded = base64.b64decode(value + b"=" * (-len(value) % 4))
                except ValueError as exc:
                    raise Corrupt("tar member %s has an undecodable xattr" % hint,
                                  member=hint) from exc
                member.xattrs[xname.decode("utf-8", "surrogateescape")] = decoded
            elif key == b"SCHILY.devmajor":
                member.devmajor = _pax_int(value, key.decode(), hint)
            elif key == b"SCHILY.devminor":
                member.devminor = _pax_int(value, key.decode(), hint)


# ---------------------------------------------------------------------------- encoding

def _octal(value: int, width: int) -> Optional[bytes]:
    text = b"%0*o" % (width - 1, value)
    if len(text) > width - 1 or value < 0:
        return None
    return text + b"\0"


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length = len(str(length).encode()) + len(body)
    return str(length).encode() + body


def _finish_header(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _ustar_block(name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int,
                 mtime: int, linkname: bytes, devmajor: int, devminor: int) -> bytes:
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = _octal(mode, 8) or b"0000000\0"
    block[108:116] = _octal(uid, 8) or b"0000000\0"
    block[116:124] = _octal(gid, 8) or b"0000000\0"
    block[124:136] = _octal(size, 12) or b"00000000000\0"
    block[136:148] = _octal(max(mtime, 0), 12) or b"00000000000\0"
    block[156:157] = typeflag
    block[157:157 + len(linkname)] = linkname
    block[257:265] = b"ustar\x0000"
    block[329:337] = _octal(devmajor, 8) or b"0000000\0"
    block[337:345] = _octal(devminor, 8) or b"0000000\0"
    return _finish_header(block)


def encode_header(name: bytes, typeflag: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0,
                  size: int = 0, mtime_ns: int = 0, linkname: bytes = b"",
                  devmajor: int = 0, devminor: int = 0,
                  xattrs: Optional[Dict[str, bytes]] = None) -> bytes:
    """Header bytes for one member: ustar when it fits, a PAX header before it when not.

    Deterministic (same input, same bytes), so layers the store writes itself (commit,
    COPY) have stable diff ids.  Times are whole seconds unless sub-second precision
    needs a PAX record.
    """
    pax: List[Tuple[bytes, bytes]] = []
    mtime = mtime_ns // 1_000_000_000
    if mtime_ns % 1_000_000_000 or mtime < 0 or _octal(mtime, 12) is None:
        seconds, frac = divmod(mtime_ns, 1_000_000_000)
        text = b"%d" % seconds if not frac else (b"%d.%09d" % (seconds, frac)).rstrip(b"0")
        pax.append((b"mtime", text))
    if len(name) > 100:
        pax.append((b"path", name))
        name = name[:100]
    if len(linkname) > 100:
        pax.append((b"linkpath", linkname))
        linkname = linkname[:100]
    for key, value in (("uid", uid), ("gid", gid)):
        if _octal(value, 8) is None:
            pax.append((key.encode(), b"%d" % value))
    if _octal(size, 12) is None:
        pax.append((b"size", b"%d" % size))
    for xname in sorted(xattrs or {}):
        pax.append((b"SCHILY.xattr." + xname.encode("utf-8", "surrogateescape"),
                    (xattrs or {})[xname]))
    out = b""
    if pax:
        data = b"".join(_pax_record(k, v) for k, v in pax)
        pax_name = (b"PaxHeaders/" + name.rsplit(b"/", 1)[-1])[:100]
        out = _ustar_block(pax_name, PAX_LOCAL, 0o644, 0, 0, len(data), 0, b"", 0, 0)
        out += data + bytes((-len(data)) % BLOCK)
    return out + _ustar_block(name, typeflag, mode, uid, gid, size, max(mtime, 0),
                              linkname, devmajor, devminor)


def end_of_archive() -> bytes:
    return ZERO_BLOCK * 2


def padding(size: int) -> bytes:
    return bytes((-size) % BLOCK)
