"""The check that stands in for re-reading a layer cloned into the new driver
(tarsplit.same_files), the shadow's fallback where nothing can be cloned, and the
tar-split reader (one json.loads per batch of lines)."""
from __future__ import annotations

import base64
import gzip
import json
import os
import shutil

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt

from ansible_collections.strata.layers.plugins.module_utils._docker import tarsplit

SPLIT = [(tarsplit.SEGMENT, b"H1", 0), (tarsplit.FILE, b"./etc/a", 3),
         (tarsplit.SEGMENT, b"H2", 0), (tarsplit.FILE, b"etc/empty", 0),
         (tarsplit.SEGMENT, b"H3", 0), (tarsplit.FILE, b"b", 5)]


def _tree(root):
    os.makedirs(os.path.join(root, "etc"))
    for name, data in (("etc/a", b"abc"), ("etc/empty", b""), ("b", b"hello")):
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(data)
    read_from = {}
    for name in (b"etc/a", b"b"):
        st = os.lstat(os.path.join(os.fsencode(root), name))
        read_from[name] = (st.st_dev, st.st_ino)
    return read_from


def test_same_inodes_pass(tmp_path):
    read_from = _tree(str(tmp_path))
    assert tarsplit.same_files(SPLIT, str(tmp_path), read_from)


def test_a_copy_with_the_same_bytes_is_not_proof(tmp_path):
    read_from = _tree(str(tmp_path))
    path = os.path.join(str(tmp_path), "b")
    shutil.copy2(path, path + ".new")
    os.replace(path + ".new", path)  # same content, another inode: re-read needed
    assert not tarsplit.same_files(SPLIT, str(tmp_path), read_from)


def test_missing_unread_or_resized_files_are_not_proof(tmp_path):
    read_from = _tree(str(tmp_path))
    assert not tarsplit.same_files(SPLIT, str(tmp_path), {b"etc/a": read_from[b"etc/a"]})
    with open(os.path.join(str(tmp_path), "etc/a"), "ab") as handle:
        handle.write(b"more")
    assert not tarsplit.same_files(SPLIT, str(tmp_path), read_from)
    os.unlink(os.path.join(str(tmp_path), "etc/a"))
    assert not tarsplit.same_files(SPLIT, str(tmp_path), read_from)


def test_cloned_stream_is_the_plain_stream(tmp_path):
    """Wherever it runs (a filesystem that clones or not), the stream through ``Clones``
    carries the plain stream's bytes, read back from the files the taker got."""
    root = str(tmp_path / "old")
    _tree(root)
    new = str(tmp_path / "new")
    os.mkdir(new)
    plain = b"".join(tarsplit.chunks(SPLIT, root))
    clones = tarsplit.Clones()
    dir_fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    out = []
    try:
        for piece in tarsplit.chunks(SPLIT, root, clones=clones):
            out.append(piece)
            for rel in (b"etc/a", b"b"):  # as the applier takes a member after its header
                if piece == {b"etc/a": b"H1", b"b": b"H3"}[rel]:
                    fd = clones.take(rel, len(b"abc" if rel == b"etc/a" else b"hello"),
                                     rel.replace(b"/", b"_"), dir_fd)
                    if fd is not None:
                        os.close(fd)
    finally:
        os.close(dir_fd)
    assert b"".join(out) == plain == b"H1abcH2H3hello"
    if clones.read_from:  # this filesystem clones: the files were made, not written
        assert sorted(os.listdir(new)) == ["b", "etc_a"]
        assert open(os.path.join(new, "etc_a"), "rb").read() == b"abc"
        st = os.lstat(os.path.join(new, "b"))
        assert clones.read_from[b"b"] == (st.st_dev, st.st_ino)


def _split_file(tmp_path, lines):
    path = str(tmp_path / "tar-split.json.gz")
    with gzip.open(path, "wb") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    return path


def test_entries_in_order_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(tarsplit, "_BATCH", 100)  # several json.loads batches
    lines, want = [], []
    for index in range(50):
        header = ("header-%d" % index).encode()
        lines.append(json.dumps({"type": 2, "payload": base64.b64encode(header).decode(),
                                 "position": 2 * index}).encode())
        want.append((tarsplit.SEGMENT, header, 0))
        name = b"dir/\xff-%d" % index  # not UTF-8: name_raw
        lines.append(json.dumps({"type": 1, "name_raw": base64.b64encode(name).decode(),
                                 "size": index, "position": 2 * index + 1}).encode())
        want.append((tarsplit.FILE, name, index))
        if index == 20:
            lines.append(b"")  # blank lines are skipped
    lines.append(json.dumps({"type": 1, "name": "plain", "size": 0}).encode())
    want.append((tarsplit.FILE, b"plain", 0))
    assert list(tarsplit.entries(_split_file(tmp_path, lines))) == want


@pytest.mark.parametrize("bad, why", [
    (b'{"type": 2, "payload": ', "line 2: not JSON"),
    (b'{"type": 7}', "line 2: unknown tar-split entry type 7"),
    (b'[1]', "line 2: a tar-split entry is a JSON object"),
    (b'{"type": 1, "name": "a"}, {"type": 1, "name": "b"}', "more than one"),
])
def test_damaged_entries_name_the_line(tmp_path, bad, why):
    path = _split_file(tmp_path, [b'{"type": 1, "name": "ok", "size": 0}', bad])
    with pytest.raises(Corrupt, match=why):
        list(tarsplit.entries(path))
