"""DecodedStream read ahead on a worker (ReadAhead): the same bytes, digests and errors
as the stream read inline, and a worker that is stopped before the file is closed."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import threading

import pytest

from ansible_collections.strata.layers.plugins.module_utils._compression import (
    AHEAD, CHUNK, DecodedStream, ReadAhead, open_file)
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt, InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._tarformat import ChunkReader


def _payload() -> bytes:
    # a tar-looking head is not needed: the stream is told plain unless it is gzip
    return os.urandom(3 * CHUNK + 12345)


def _drain(reader: ChunkReader) -> bytes:
    out = bytearray()
    while True:
        piece = reader.read_some(1 << 16)
        if not piece:
            return bytes(out)
        out += piece


def _zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-1", "-c"], input=data, capture_output=True,
                          check=True).stdout


@pytest.mark.parametrize("compress", ["plain", "gzip", "zstd"])
def test_read_ahead_gives_the_same_bytes_and_digests(tmp_path, compress):
    if compress == "zstd" and shutil.which("zstd") is None:
        pytest.skip("the zstd program is not installed")
    data = _payload()
    path = tmp_path / "layer"
    packers = {"plain": lambda d: d, "gzip": lambda d: gzip.compress(d, 1), "zstd": _zstd}
    path.write_bytes(packers[compress](data))
    digests = []
    for ahead in (False, True):
        stream = open_file(str(path), read_ahead=ahead)
        try:
            reader = ChunkReader(stream.chunk)
            assert _drain(reader) == data
            stream.drain_raw()
            digests.append((reader.hasher.hexdigest(), stream.compressed_digest()))
        finally:
            stream.close()
    assert digests[0] == digests[1]
    assert digests[1][0] == hashlib.sha256(data).hexdigest()
    if compress != "plain":
        assert digests[1][1] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_reader_hash_covers_only_what_was_handed_out(tmp_path):
    data = _payload()
    path = tmp_path / "layer"
    path.write_bytes(data)
    stream = open_file(str(path), read_ahead=True)
    try:
        reader = ChunkReader(stream.chunk)
        first = reader.read_some(CHUNK)
        # the worker has read further, the hash says what the reader pulled
        assert reader.hasher.hexdigest() == hashlib.sha256(bytes(first)).hexdigest()
    finally:
        stream.close()


def test_a_corrupt_gzip_stream_fails_where_it_is_read(tmp_path):
    packed = bytearray(gzip.compress(_payload(), 1))
    packed[len(packed) // 2:len(packed) // 2 + 64] = bytes(64)
    path = tmp_path / "layer.gz"
    path.write_bytes(bytes(packed))
    stream = open_file(str(path), read_ahead=True)
    try:
        with pytest.raises(Corrupt, match="gzip"):
            _drain(ChunkReader(stream.chunk))
        assert stream.chunk() == b""        # the error ends the stream
    finally:
        stream.close()


def test_a_file_changed_while_read_is_refused(tmp_path):
    path = tmp_path / "layer"
    path.write_bytes(_payload())
    stream = open_file(str(path), read_ahead=True)
    try:
        with open(path, "ab") as handle:
            handle.write(b"more")
        with pytest.raises(InvalidInput, match="changed while it was being read"):
            _drain(ChunkReader(stream.chunk))
    finally:
        stream.close()


def test_close_mid_stream_stops_the_worker_before_the_file_closes(tmp_path):
    path = tmp_path / "layer"
    path.write_bytes(os.urandom((AHEAD + 4) * CHUNK))
    before = {t.ident for t in threading.enumerate()}
    stream = open_file(str(path), read_ahead=True)
    workers = [t for t in threading.enumerate() if t.ident not in before]
    assert [t.name for t in workers] == ["strata-read-ahead"]
    assert stream.chunk()
    stream.close()
    assert not workers[0].is_alive()


def test_a_source_error_is_raised_by_chunk_once_earlier_chunks_are_taken():
    calls = []

    def source() -> bytes:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return b"x" * 10

    ahead = ReadAhead(source, "test")
    try:
        assert ahead.chunk() == b"x" * 10
        assert ahead.chunk() == b"x" * 10
        with pytest.raises(OSError, match="Input/output"):
            ahead.chunk()
        assert ahead.hashed().hexdigest() == hashlib.sha256(b"x" * 20).hexdigest()
    finally:
        ahead.close()


def test_plain_stream_without_read_ahead_starts_no_thread(tmp_path):
    path = tmp_path / "layer"
    path.write_bytes(b"y" * 1000)
    before = threading.active_count()
    with open(path, "rb") as handle:
        stream = DecodedStream(handle.read)
        assert threading.active_count() == before
        assert stream.chunk() == b"y" * 512
