"""Property tests (hypothesis) for the tar applier and the import path.

1. Any byte string fed to the applier (ChunkReader + Applier, and Store.ingest_layer)
   either imports or fails with a StoreError subclass: never another exception type,
   never a write outside the layer root, never a partial layer left in the store.
   Inputs are pure random bytes and valid tars (hostile ones included) mutated: bit
   flips, truncations, spliced headers, header fields rewritten with a correct
   checksum, random PAX records.
2. Round trip: a random valid layer (files, directories, symlinks, hardlinks, FIFOs,
   devices; random modes and owners; unicode, invalid UTF-8 and long names; PAX, GNU
   and ustar formats written by tarfile) imports, re-emits byte-identical from its
   header record, and its diff_id is the sha256 of the input.

Examples per property: 150 by default (CI); STRATA_HYPOTHESIS_EXAMPLES=5000 for a long run.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import secrets
import stat
import tarfile
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ansible_collections.strata.layers.plugins.module_utils._apply import (
    WHITEOUT_DELETE, WHITEOUT_DEVICE, Applier)
from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree
from ansible_collections.strata.layers.plugins.module_utils._compression import DecodedStream
from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._tarformat import ChunkReader
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import TarSplitWriter, emit
from tests.support import hostile
from tests.support.tars import LayerTar
from tests.unit.plugins.module_utils.test_hostile_corpus import leftovers, snapshot

EXAMPLES = int(os.environ.get("STRATA_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])
ESCAPE = "/tmp/strata-hypothesis-escape"  # seeds aim here by climbing with ../


# ---------------------------------------------------------------------------- seeds

def seeds(sentinel: str) -> List[bytes]:
    """Valid tars, benign and hostile, that the mutations start from."""
    up = "../" * hostile.UP
    return [
        LayerTar().dir("etc").file("etc/passwd", b"root:x:0:0\n").symlink("bin", "usr/bin")
        .hardlink("etc/passwd2", "etc/passwd").fifo("run/p").device("dev/null", 1, 3).bytes(),
        LayerTar(tarfile.GNU_FORMAT).file("x" * 150 + "/y" * 30, b"long").symlink(
            "l" * 120, "t" * 130).bytes(),
        LayerTar().file("f", b"data" * 300, xattrs={"user.a": "b"}).whiteout("gone")
        .dir("o").opaque("o").file("o/new", b"n").bytes(),
        LayerTar().symlink("evil", sentinel).file("evil/pwned", b"p").bytes(),
        LayerTar().file(up + ESCAPE.lstrip("/"), b"p").bytes(),
        LayerTar().symlink("s", "/etc/shadow").hardlink("h", "s").dir("d").bytes(),
        LayerTar().file("inherited-link/pwned", b"p").bytes(),  # through the root's symlink
        hostile.tar(hostile.pax([(b"path", b"p" * 300)]), hostile.entry("short", b"x")),
        hostile.tar(hostile.gnu_long(b"K", up + "etc/shadow"), hostile.header("h", b"1")),
        hostile.tar(hostile.header("g", raw={"size": hostile.base256(1 << 40)})),
        bytes(1024),
    ]


def header_offsets(data: bytes) -> List[int]:
    """Offsets of the 512-byte blocks that look like tar headers (good checksum)."""
    found = []
    for offset in range(0, len(data) - 511, 512):
        block = data[offset:offset + 512]
        if block.strip(b"\0") and block[148:156].strip(b" \0").isdigit():
            found.append(offset)
    return found


def rechecksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


FIELDS = list(hostile._FIELDS.items())
INTERESTING = [b"", b"0", b"7777777", b"\x80" + b"\xff" * 11, b"\xff" * 12, b"../" * 30,
               b"/etc/shadow", b".wh..wh..opq", b".wh...", b"\0", b"5", b"S", b"x", b"g",
               b"L", b"K", b"1", b"2", b"3", b"4", b"6", b"7", b"V"]
PAX_KEYS = [b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"atime",
            b"SCHILY.xattr.user.k", b"SCHILY.xattr.trusted.overlay.opaque",
            b"SCHILY.xattr.security.capability", b"SCHILY.xattr.system.posix_acl_access",
            b"SCHILY.xattr.", b"LIBARCHIVE.xattr.user.k", b"GNU.sparse.major", b"hdrcharset",
            b"SCHILY.devmajor", b"SCHILY.devminor", b"comment"]
PAX_VALUES = st.one_of(
    st.sampled_from([b"", b"0", b"-1", b"1.5", b"99999999999999999999999", b"a\0b",
                     b"../" * 40 + b"tmp/strata-hypothesis-escape", b"/etc/shadow", b"y",
                     b"BINARY", b"1e9", b"\xff\xfe", b".wh..wh..opq"]),
    st.binary(max_size=40))


@st.composite
def mutated(draw, pool: List[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(pool)))
    for _step in range(draw(st.integers(1, 4))):
        # field rewrites and PAX records get past the checksum: they reach the applier
        data = draw(st.sampled_from([flip, truncate, splice, rewrite_field, rewrite_field,
                                     rewrite_field, insert_pax, insert_pax]))(draw, data, pool)
    return bytes(data)


def flip(draw, data: bytearray, pool) -> bytearray:
    if data:
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] ^= 1 << draw(st.integers(0, 7))
    return data


def truncate(draw, data: bytearray, pool) -> bytearray:
    return data[:draw(st.integers(0, len(data)))]


def splice(draw, data: bytearray, pool) -> bytearray:
    """A header block of another seed inserted at a block boundary."""
    other = draw(st.sampled_from(pool))
    heads = header_offsets(other)
    if not heads:
        return data
    start = draw(st.sampled_from(heads))
    at = draw(st.integers(0, len(data) // 512)) * 512
    return data[:at] + other[start:start + 512] + data[at:]


def rewrite_field(draw, data: bytearray, pool) -> bytearray:
    """One field of one header replaced, the checksum made right again (so the parser
    gets past it and the applier sees the hostile value)."""
    heads = header_offsets(bytes(data))
    if not heads:
        return data
    offset = draw(st.sampled_from(heads))
    name, (start, end) = draw(st.sampled_from(FIELDS))
    if name == "chksum":
        return data
    value = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(max_size=end - start)))
    block = bytearray(data[offset:offset + 512])
    block[start:end] = value[:end - start].ljust(end - start, b"\0")
    rechecksum(block)
    data[offset:offset + 512] = block
    return data


def insert_pax(draw, data: bytearray, pool) -> bytearray:
    records = draw(st.lists(st.tuples(st.sampled_from(PAX_KEYS), PAX_VALUES), min_size=1,
                            max_size=4))
    kind = draw(st.sampled_from([b"x", b"x", b"g"]))
    heads = header_offsets(bytes(data)) or [0]
    at = draw(st.sampled_from(heads))
    return data[:at] + hostile.pax(records, kind) + data[at:]


def any_bytes(pool: List[bytes], compressed: bool = True):
    """Random bytes, mutated tars and (for the store, which decompresses) gzipped ones."""
    plain = st.one_of(st.binary(max_size=3000), mutated(pool))
    if not compressed:
        return plain
    return st.one_of(plain, mutated(pool).map(lambda d: gzip.compress(d, mtime=0)))


# ---------------------------------------------------------------------------- world

@pytest.fixture
def arena(tmp_path):
    """A sentinel next to the roots, and a place for one root per example."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret").write_bytes(b"safe")
    assert not os.path.lexists(ESCAPE)
    yield tmp_path, str(sentinel)
    assert not os.path.lexists(ESCAPE)
    remove_tree(str(tmp_path))


def inherited_root(path: str, sentinel: str) -> None:
    """A root as a full-copy driver stages it: a parent's files, one symlink escaping."""
    os.makedirs(os.path.join(path, "etc"))
    with open(os.path.join(path, "etc", "passwd"), "wb") as handle:
        handle.write(b"old\n")
    os.makedirs(os.path.join(path, "o", "sub"))
    os.symlink(sentinel, os.path.join(path, "inherited-link"))


def chunked(data: bytes, size: int):
    pieces = [data[i:i + size] for i in range(0, len(data), size)] + [b""]
    return iter(pieces).__next__


def outside(base: str) -> dict:
    """The arena without the example's root (everything the applier must not touch)."""
    return {k: v for k, v in snapshot(base, True).items() if not k.startswith(b"ex-")}


# ---------------------------------------------------------------------------- property 1

@SETTINGS
@given(data=st.data())
def test_any_bytes_import_or_fail_with_a_store_error(arena, data):
    base, sentinel = arena
    pool = seeds(sentinel)
    raw = data.draw(any_bytes(pool, compressed=False), label="input")
    mode = data.draw(st.sampled_from([WHITEOUT_DEVICE, WHITEOUT_DELETE]), label="whiteouts")
    chunk = data.draw(st.sampled_from([1, 7, 512, 4096, 1 << 20]), label="chunk")
    before = outside(str(base))
    root = os.path.join(str(base), "ex-" + secrets.token_hex(4))
    os.mkdir(root)
    inherited_root(root, sentinel)
    split = TarSplitWriter(root + ".split")
    try:
        Applier(root, mode, split, "fuzz layer").apply(ChunkReader(chunked(raw, chunk)))
        event("imported")
    except StoreError as exc:
        event("refused: %s" % type(exc).__name__)
        assert "fuzz layer" in str(exc)
    finally:
        split.abort()
        remove_tree(root)
        os.unlink(root + ".split")
    assert outside(str(base)) == before


@pytest.fixture(params=hostile.DRIVERS)
def fuzz_store(request, arena):
    base, sentinel = arena
    store = Store(str(base / "store"))
    with store.write("test", init=False):
        store.initialize(request.param)
        store.ingest_layer(lambda: DecodedStream(io.BytesIO(hostile.GOOD).read), None, "base")
    return store, str(base), sentinel, request.param


@SETTINGS
@given(data=st.data())
def test_any_bytes_through_the_store_leave_no_partial_layer(fuzz_store, data):
    store, base, sentinel, driver = fuzz_store
    raw = data.draw(any_bytes(seeds(sentinel)), label="input")
    before = snapshot(store.root)
    outside_before = {k: v for k, v in snapshot(base, True).items() if not k.startswith(b"store")}
    try:
        with store.write("fuzz"):
            store.ingest_layer(lambda: DecodedStream(io.BytesIO(raw).read, what="fuzz layer"),
                               None, "fuzz layer")
        event("imported")
    except StoreError as exc:
        event("refused: %s" % type(exc).__name__)
        assert "fuzz layer" in str(exc)
        assert snapshot(store.root) == before
    assert leftovers(store.root, driver) == []
    assert {k: v for k, v in snapshot(base, True).items()
            if not k.startswith(b"store")} == outside_before


# ---------------------------------------------------------------------------- property 2

NAME_CHARS = st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",))
RAW_BYTE_NAMES = st.binary(min_size=1, max_size=8).map(
    lambda b: b.replace(b"/", b"_").replace(b"\0", b"_").decode("utf-8", "surrogateescape"))
COMPONENT = st.one_of(st.text(NAME_CHARS, min_size=1, max_size=12),
                      st.text(NAME_CHARS, min_size=40, max_size=60),
                      RAW_BYTE_NAMES).filter(
    lambda n: n not in (".", "..") and not n.startswith(".wh.") and
    len(n.encode("utf-8", "surrogateescape")) <= 255)


@st.composite
def layer_tree(draw) -> Tuple[int, List[tarfile.TarInfo], List[bytes]]:
    """A random valid layer as tarfile members (and their contents)."""
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    dirs = [""]
    for _step in range(draw(st.integers(0, 6))):
        parent = draw(st.sampled_from(dirs))
        path = (parent + "/" if parent else "") + draw(COMPONENT)
        if path not in dirs:
            dirs.append(path)
    taken = set(dirs)
    members: List[tarfile.TarInfo] = []
    contents: List[bytes] = []
    files: List[str] = []
    for path in dirs[1:]:
        members.append(_info(draw, path, tarfile.DIRTYPE, fmt))
        contents.append(b"")
    for _step in range(draw(st.integers(0, 12))):
        parent = draw(st.sampled_from(dirs))
        path = (parent + "/" if parent else "") + draw(COMPONENT)
        if path in taken:
            continue
        taken.add(path)
        kind = draw(st.sampled_from(["file", "file", "symlink", "hardlink", "fifo", "device"]))
        if kind == "hardlink" and not files:
            kind = "file"
        info = _info(draw, path, {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
                                  "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                                  "device": tarfile.CHRTYPE}[kind], fmt)
        data = b""
        if kind == "file":
            data = draw(st.binary(max_size=3000))
            info.size = len(data)
            files.append(path)
        elif kind == "symlink":
            info.linkname = draw(st.text(NAME_CHARS | st.just("/"), min_size=1, max_size=120))
        elif kind == "hardlink":
            info.linkname = draw(st.sampled_from(files))
        elif kind == "device":
            info.devmajor, info.devminor = draw(st.integers(0, 255)), draw(st.integers(0, 255))
        members.append(info)
        contents.append(data)
    return fmt, members, contents


def _info(draw, path: str, kind: bytes, fmt: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = draw(st.integers(0, 0o7777))
    top = 0o7777777 if fmt == tarfile.USTAR_FORMAT else 1 << 31
    info.uid, info.gid = draw(st.integers(0, top)), draw(st.integers(0, top))
    info.uname = draw(st.sampled_from(["", "root", "nobody", "\u00fcser"]))
    times = st.integers(0, 8 ** 11 - 1)
    if fmt == tarfile.PAX_FORMAT:  # sub-second and large times only PAX can hold
        # (as decimals: tarfile would write 5e-324, which no PAX reader takes)
        times = st.one_of(times, st.tuples(st.integers(0, 2 ** 34), st.integers(1, 999)).map(
            lambda t: t[0] + t[1] / 1000))
    info.mtime = draw(times)
    if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
        info.pax_headers = {"SCHILY.xattr.user.fuzz": draw(st.text(max_size=30))}
    return info


def build(fmt: int, members: List[tarfile.TarInfo], contents: List[bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as out:
        for info, data in zip(members, contents):
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


@pytest.fixture(params=hostile.DRIVERS)
def round_trip_store(request, tmp_path):
    store = Store(str(tmp_path / "store"))
    with store.write("test", init=False):
        store.initialize(request.param)
    yield store
    remove_tree(str(tmp_path))


@SETTINGS
@given(tree=layer_tree())
def test_random_layers_re_emit_byte_identical(round_trip_store, tree):
    store = round_trip_store
    fmt, members, contents = tree
    try:
        data = build(fmt, members, contents)
    except ValueError:
        assume(False)  # a name or number this tar format cannot hold: not a layer
    with store.write("round trip"):
        record, _imported, digests = store.ingest_layer(
            lambda: DecodedStream(io.BytesIO(data).read), None, "random layer")
    assert record.diff_id == digests["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    out = io.BytesIO()
    digest, size = emit(store.layers.split_path(record.chain_id),
                        store.driver.layer_files(record.chain_id), out.write)
    assert out.getvalue() == data
    assert (digest, size) == (record.diff_id, len(data))
    files = store.driver.layer_files(record.chain_id)
    for info in members:
        st_ = os.lstat(os.path.join(files, info.name))
        if not info.islnk() and not info.issym():
            assert stat.S_IMODE(st_.st_mode) == info.mode, info.name
        if not info.islnk():
            assert (st_.st_uid, st_.st_gid) == (info.uid, info.gid), info.name
