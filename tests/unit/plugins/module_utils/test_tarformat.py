from __future__ import annotations

import io
import tarfile

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt, InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    ChunkReader, HeaderParser, encode_header, end_of_archive, padding)


def members(data: bytes):
    chunks = [data[i:i + 7000] for i in range(0, len(data), 7000)] + [b""]
    reader = ChunkReader(iter(chunks).__next__)
    parser = HeaderParser(reader)
    out = []
    while True:
        member = parser.next()
        if member is None:
            return out, reader
        reader.read_exact(member.size + member.padding, "data")
        out.append(member)


def tar_of(fmt, *infos):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in infos:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_and_links_in_pax_and_gnu(fmt):
    name = "d/" + "x" * 300
    info = tarfile.TarInfo(name)
    info.size = 3
    link = tarfile.TarInfo("l")
    link.type = tarfile.SYMTYPE
    link.linkname = "t" * 200
    found, _reader = members(tar_of(fmt, (info, b"abc"), (link, b"")))
    assert found[0].name == name.encode() and found[0].size == 3
    assert found[1].linkname == b"t" * 200


def test_pax_xattrs_times_and_large_ids():
    info = tarfile.TarInfo("f")
    info.uid = 3_000_000
    info.pax_headers = {"SCHILY.xattr.user.k": "v", "mtime": "1700000000.5"}
    found, _reader = members(tar_of(tarfile.PAX_FORMAT, (info, b"")))
    assert found[0].uid == 3_000_000
    assert found[0].xattrs == {"user.k": b"v"}
    assert found[0].mtime_ns == 1700000000_500000000


def test_gnu_base256_numbers():
    info = tarfile.TarInfo("big")
    info.uid = 1 << 40
    found, _reader = members(tar_of(tarfile.GNU_FORMAT, (info, b"")))
    assert found[0].uid == 1 << 40


def test_bad_checksum_is_corrupt():
    data = bytearray(tar_of(tarfile.USTAR_FORMAT, (tarfile.TarInfo("f"), b"")))
    data[0] ^= 0xFF
    with pytest.raises(Corrupt, match="checksum"):
        members(bytes(data))


def test_huge_pax_header_is_refused():
    info = tarfile.TarInfo("f")
    info.pax_headers = {"comment": "x" * (2 << 20)}
    with pytest.raises(InvalidInput, match="extension header"):
        members(tar_of(tarfile.PAX_FORMAT, (info, b"")))


def test_hash_covers_the_whole_stream():
    data = tar_of(tarfile.PAX_FORMAT, (tarfile.TarInfo("a"), b""))
    _found, reader = members(data)
    while reader.read_some(1 << 20):
        pass
    import hashlib
    assert reader.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_encoded_headers_read_back_with_tarfile():
    body = b"hello"
    data = (encode_header(b"dir/", b"5", 0o755, 1, 2, 0, 1_700_000_000_000_000_000) +
            encode_header(b"dir/" + b"n" * 150, b"0", 0o4755, 0, 0, len(body),
                          1_700_000_000_250_000_000, xattrs={"user.a": b"b"}) +
            body + padding(len(body)) + end_of_archive())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        items = tar.getmembers()
        assert items[0].isdir() and items[0].uid == 1
        assert items[1].name == "dir/" + "n" * 150
        assert items[1].mode == 0o4755
        assert items[1].pax_headers["SCHILY.xattr.user.a"] == "b"
        assert tar.extractfile(items[1]).read() == body
    assert encode_header(b"a", b"0") == encode_header(b"a", b"0")


def test_hashing_behind_the_reader_sees_every_byte_of_a_reused_buffer():
    """Large chunks are hashed on a worker thread; a source that refills one buffer
    must still give the digest of the whole stream (the hash of a chunk completes
    before the next chunk is asked for)."""
    import hashlib
    import random
    from ansible_collections.strata.layers.plugins.module_utils._tarformat import ChunkReader
    data = random.Random(3).randbytes(5 * (1 << 20) + 12345)
    buf = bytearray(1 << 20)
    pos = [0]

    def source():
        size = min(len(buf), len(data) - pos[0])
        buf[:size] = data[pos[0]:pos[0] + size]
        pos[0] += size
        return memoryview(buf)[:size]

    reader = ChunkReader(source)
    while reader.read_some(1 << 16):
        pass
    assert reader.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert reader.total == len(data)
