"""SparseWriter: the same bytes, with windows of zeros left as holes, whatever the pieces."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.strata.layers.plugins.module_utils._sparse import HOLE, SparseWriter


def write_pieces(path: str, data: bytes, cuts) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writer = SparseWriter(fd)
        start = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            writer.write(data[start:cut])
            start = cut
        writer.finish()
    finally:
        os.close(fd)


def test_zeros_become_holes_across_odd_pieces(tmp_path):
    data = b"head" + bytes(64 * HOLE) + b"tail" + bytes(8 * HOLE)
    path = str(tmp_path / "f")
    write_pieces(path, data, range(513, len(data), 1 << 20))    # a tar header's shift
    with open(path, "rb") as handle:
        assert handle.read() == data
    assert os.lstat(path).st_blocks * 512 < 4 * HOLE


@settings(max_examples=60)
@given(st.lists(st.sampled_from([b"\0" * HOLE, b"x", b"\0" * 100, b"y" * 3000]), max_size=12),
       st.lists(st.integers(min_value=0, max_value=12 * HOLE), max_size=6))
def test_any_content_in_any_pieces_reads_back_the_same(tmp_path_factory, parts, cuts):
    data = b"".join(parts)
    path = str(tmp_path_factory.mktemp("s") / "f")
    write_pieces(path, data, [c for c in cuts if c <= len(data)])
    with open(path, "rb") as handle:
        assert handle.read() == data
