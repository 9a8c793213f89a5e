"""The check that stands in for re-reading a layer cloned into the new driver
(tarsplit.same_files), and the shadow's fallback where nothing can be cloned."""
from __future__ import annotations

import os
import shutil

from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow
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


def test_shadowed_stream_is_the_plain_stream(tmp_path):
    """Wherever it runs (a filesystem that clones or not), the stream through a shadow
    carries the same bytes as the plain one; the clones it made are counted."""
    root = str(tmp_path / "old")
    _tree(root)
    plain = b"".join(tarsplit.chunks(SPLIT, root))
    shadow = Shadow()
    shadow.open(str(tmp_path / "shadow"))
    read_from = {}
    try:
        shadowed = b"".join(tarsplit.chunks(SPLIT, root, shadow=shadow, read_from=read_from))
        assert shadowed == plain == b"H1abcH2H3hello"
        assert len(read_from) == shadow.cloned  # 2 on btrfs or xfs, 0 where none clone
    finally:
        shadow.close()
    assert not os.path.exists(str(tmp_path / "shadow"))
