"""The check that stands in for re-reading a layer cloned into the new driver
(tarsplit.same_files), and the shadow's fallback where nothing can be cloned."""
from __future__ import annotations

import os
import shutil

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
