"""``Beneath``: directory descriptors below a root, down from the nearest cached ancestor,
never through a symlink."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _safepath
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath


def _ino(fd: int) -> int:
    return os.fstat(fd).st_ino


@pytest.fixture
def counted_opens(monkeypatch):
    """The names ``Beneath`` opens, in order."""
    opened = []
    real = os.open

    def counting(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None:
            opened.append(path)
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(_safepath.os, "open", counting)
    return opened


def test_each_level_is_opened_once_from_the_nearest_cached_ancestor(tmp_path, counted_opens):
    os.makedirs(str(tmp_path / "a" / "b" / "c" / "d"))
    with Beneath(str(tmp_path)) as tree:
        fd = tree.dir_fd(b"a/b")
        assert _ino(fd) == os.stat(str(tmp_path / "a" / "b")).st_ino
        assert counted_opens == [b"a", b"b"]
        fd = tree.dir_fd(b"a/b/c/d")  # from a/b, which the cache holds
        assert _ino(fd) == os.stat(str(tmp_path / "a" / "b" / "c" / "d")).st_ino
        assert counted_opens == [b"a", b"b", b"c", b"d"]
        assert tree.dir_fd(b"a/b/c") is not None and len(counted_opens) == 4


def test_a_chain_deeper_than_the_cache_parents_first_is_one_open_a_level(tmp_path,
                                                                         counted_opens):
    depth = 300  # more than the cache holds (128)
    os.makedirs(os.path.join(str(tmp_path), *["d"] * depth))
    with Beneath(str(tmp_path)) as tree:
        for level in range(1, depth + 1):
            tree.dir_fd(b"/".join([b"d"] * level))
    assert len(counted_opens) == depth


def test_missing_levels_are_made_by_create(tmp_path):
    made = []

    def create(parent_fd, name, rel):
        made.append(rel)
        os.mkdir(name, 0o755, dir_fd=parent_fd)

    with Beneath(str(tmp_path)) as tree:
        tree.dir_fd(b"x/y/z", create=create)
    assert made == [b"x", b"x/y", b"x/y/z"]
    assert os.path.isdir(str(tmp_path / "x" / "y" / "z"))


def test_a_symlink_in_the_middle_is_refused_and_named(tmp_path):
    os.makedirs(str(tmp_path / "outside" / "inner"))
    os.makedirs(str(tmp_path / "root" / "a"))
    os.symlink(str(tmp_path / "outside"), str(tmp_path / "root" / "a" / "link"))
    with Beneath(str(tmp_path / "root")) as tree:
        with pytest.raises(NotBeneath) as info:
            tree.dir_fd(b"a/link/inner")
    assert info.value.blocker == b"a/link"
    assert info.value.reason == "is a symlink"
