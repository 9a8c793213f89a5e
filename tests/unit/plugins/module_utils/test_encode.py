"""Deterministic layer compression (``_encode``): the same input gives the same bytes,
whatever the chunking and however often, and every form decompresses to the input with
the standard tools (gzip module, the zstd program)."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.strata.layers.plugins.module_utils import _encode
from ansible_collections.strata.layers.plugins.module_utils._encode import encode
from ansible_collections.strata.layers.plugins.module_utils._errors import Unsupported


def _pieces(data: bytes, size: int):
    return (data[i:i + size] for i in range(0, len(data), size))


def _decode(blob: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.decompress(blob)
    if kind == "zstd":
        return subprocess.run(["zstd", "-q", "-d", "-c"], input=blob, check=True,
                              capture_output=True).stdout
    return blob


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_same_bytes_whatever_the_chunking(kind):
    if kind == "zstd" and shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    data = os.urandom(3 << 20) + b"layer " * 400000 + bytes(2 << 20)
    one = b"".join(encode(_pieces(data, 1 << 20), kind))
    two = b"".join(encode(_pieces(data, 77777), kind))
    assert one == two
    assert _decode(one, kind) == data


def test_gzip_header_is_fixed_and_blocks_span_threads(monkeypatch):
    data = b"x" * (5 << 20)
    blob = b"".join(encode(iter([data]), "gzip"))
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    monkeypatch.setattr(_encode, "WORKERS", 1)
    assert b"".join(encode(iter([data]), "gzip")) == blob      # threads change nothing


def test_empty_input():
    assert gzip.decompress(b"".join(encode(iter([]), "gzip"))) == b""
    assert b"".join(encode(iter([]), "none")) == b""


def test_unknown_compression():
    with pytest.raises(Unsupported):
        encode(iter([b""]), "bzip2")


@settings(max_examples=40)
@given(st.binary(max_size=300000), st.integers(min_value=1, max_value=70000))
def test_gzip_round_trip(data, piece):
    assert gzip.decompress(b"".join(encode(_pieces(data, piece), "gzip"))) == data
