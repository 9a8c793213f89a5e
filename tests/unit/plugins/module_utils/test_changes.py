"""``TreeDiff.size``: the walk by directory descriptors counts what the ordered walk of the
tar counts, allocates what ``allocated_bytes`` finds, and leaves no descriptor open; the
size walks of a running container (``TreeDiff``, ``UpperDiff``) leave out what it
removes meanwhile and never follow a link it swaps in."""
from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _changes, _fsinfo
from ansible_collections.strata.layers.plugins.module_utils._changes import (
    BaseTree, TreeDiff, UpperDiff, _Emitter, touched_dirs)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import allocated_bytes


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _ordered(diff: TreeDiff) -> int:
    emitter = _Emitter(diff.root)
    for _chunk in diff._changes(emitter, count_only=True):
        pass
    return emitter.size


def _open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def _copy(base: str, root: str) -> None:
    shutil.copytree(base, root, symlinks=True)  # copy2: times, modes and xattrs kept


@pytest.fixture
def trees(tmp_path):
    """A base with names that are not UTF-8, a symlink, a link pair and a subtree; a
    full copy of it (as vfs makes one) with some of each changed."""
    base, root = str(tmp_path / "base"), str(tmp_path / "root")
    os.makedirs(os.path.join(base, "dir", "sub"))
    for name in (b"caf\xe9", b"same\xff", b"plain"):
        _write(os.path.join(os.fsencode(base), b"dir", name), name * 10)
    os.symlink("plain", os.path.join(base, "dir", "link"))
    os.symlink("plain", os.path.join(base, "dir", "retargeted"))
    _write(os.path.join(base, "dir", "sub", "kept"), b"k" * 300)
    _copy(base, root)
    raw = os.fsencode(root)
    _write(os.path.join(raw, b"dir", b"caf\xe9"), b"changed, not UTF-8")       # 18 bytes
    _write(os.path.join(raw, b"dir", b"new\xfe"), b"n" * 1000)                # 1000
    os.unlink(os.path.join(root, "dir", "retargeted"))
    os.symlink("other", os.path.join(root, "dir", "retargeted"))              # 5
    st = os.lstat(os.path.join(base, "dir", "retargeted"))
    os.utime(os.path.join(root, "dir", "retargeted"), ns=(st.st_atime_ns, st.st_mtime_ns),
             follow_symlinks=False)  # same mtime and size: only its target differs
    os.mkdir(os.path.join(root, "added"))
    _write(os.path.join(root, "added", "one"), b"1" * 70)                     # 70
    os.link(os.path.join(root, "added", "one"), os.path.join(root, "added", "two"))
    return base, root


def test_size_counts_what_the_ordered_walk_counts(trees):
    base, root = trees
    diff = TreeDiff(base, root)
    before = _open_fds()
    assert diff.size() == 18 + 1000 + 5 + 70 == _ordered(TreeDiff(base, root))
    assert diff.allocated == allocated_bytes(root)
    assert _open_fds() == before


def test_size_with_a_shared_base_tree_is_the_same(trees):
    """The base read once for several containers (``keep``) gives each the same size."""
    base, root = trees
    shared = BaseTree(base, keep=True)
    assert [TreeDiff(base, root, base_tree=shared).size() for _run in range(2)] == [1093, 1093]
    assert TreeDiff(base, base, base_tree=shared).size() == 0


def test_size_walks_deeper_than_the_descriptors_it_keeps_open(tmp_path):
    """Past ``OPEN_LEVELS`` levels the walk opens each directory from the deepest one
    still open: at most that many descriptors, and the same count."""
    base, root = str(tmp_path / "base"), str(tmp_path / "root")
    deep = os.path.join(*["d"] * (_fsinfo.OPEN_LEVELS * 2 + 5))
    os.makedirs(os.path.join(base, deep))
    _write(os.path.join(base, deep, "old"), b"o")
    _copy(base, root)
    _write(os.path.join(root, deep, "new"), b"n" * 33)
    _write(os.path.join(root, os.path.dirname(deep), "mid"), b"m" * 7)
    before = _open_fds()
    diff = TreeDiff(base, root)
    assert diff.size() == 40 == _ordered(TreeDiff(base, root))
    assert diff.allocated == allocated_bytes(root)
    assert _open_fds() == before


class _FailingBase(BaseTree):
    """A stand-in base that fails at one directory: nothing on a real tree makes the walk
    fail at a chosen depth as root (permissions do not stop it)."""

    def named(self, rel):
        if rel.count(b"/") == 20:
            raise OSError(5, "stand-in failure", rel)
        return super().named(rel)


def test_size_closes_every_descriptor_when_the_walk_fails(tmp_path):
    base, root = str(tmp_path / "base"), str(tmp_path / "root")
    for branch in ("a", "b"):
        os.makedirs(os.path.join(base, branch, *["d"] * 30))
    _copy(base, root)
    before = _open_fds()
    with pytest.raises(OSError, match="stand-in failure"):
        TreeDiff(base, root, base_tree=_FailingBase(base)).size()
    assert _open_fds() == before


def test_a_base_read_whole_allocates_what_allocated_bytes_finds(trees):
    """``BaseTree.allocated``: from the directories the size walk read, when it read them
    all; a base with a directory the container removed (not read) has no figure."""
    base, root = trees
    shared = BaseTree(base, keep=True)
    TreeDiff(base, root, base_tree=shared).size()
    allocated, linked = shared.allocated()
    assert allocated == allocated_bytes(base)
    assert all(os.lstat(base).st_dev == dev for dev, _ino in linked)
    assert BaseTree(base).allocated() is None  # nothing kept: nothing to give
    shutil.rmtree(os.path.join(root, "dir", "sub"))
    partial = BaseTree(base, keep=True)
    TreeDiff(base, root, base_tree=partial).size()
    assert partial.allocated() is None


def test_the_directories_init_entries_touch():
    """Each entry's parents and each directory entry, the root always; ``.`` and empty
    components dropped; an entry with ``..`` gives None (the whole init layer is read)."""
    assert touched_dirs(["dev/", "dev/pts/", "etc/hosts", "srv//app/./"]) == frozenset(
        {b"", b"dev", b"dev/pts", b"etc", b"srv", b"srv/app"})
    assert touched_dirs(["/"]) == frozenset({b""})
    assert touched_dirs(["a/../etc/"]) is None


def _mutating_walk(monkeypatch, change):
    """``walk_dirs`` as ``_changes`` calls it, with ``change()`` run right after the top
    directory's visit: what a running container does while ``store_info`` walks it."""
    real = _changes.walk_dirs

    def walk(top, visit, data=None, **kw):
        def visit_then_change(rel, fd, given):
            below = visit(rel, fd, given)
            if not rel:
                change()
            return below
        real(top, visit_then_change, data, **kw)

    monkeypatch.setattr(_changes, "walk_dirs", walk)


def _live_tree(top: str, outside: str) -> None:
    for name in ("gone", "swapped", "kept"):
        os.makedirs(os.path.join(top, name))
        _write(os.path.join(top, name, "f"), b"x" * 100)
    os.makedirs(outside)
    _write(os.path.join(outside, "f"), b"secret" * 1000)


def _gone_and_swapped(top: str, outside: str):
    def change():
        shutil.rmtree(os.path.join(top, "gone"))
        shutil.rmtree(os.path.join(top, "swapped"))
        os.symlink(outside, os.path.join(top, "swapped"))
    return change


def test_upper_size_of_a_running_container_leaves_out_what_goes_meanwhile(
        tmp_path, monkeypatch):
    """A directory removed, or swapped for a link, after its parent was read: skipped
    (Docker's size walk ignores what disappears), the link never followed."""
    upper, outside = str(tmp_path / "upper"), str(tmp_path / "outside")
    _live_tree(upper, outside)
    _mutating_walk(monkeypatch, _gone_and_swapped(upper, outside))
    before = _open_fds()
    assert UpperDiff(upper).size() == 100       # kept/f only: no 6000 bytes from outside
    assert _open_fds() == before


def test_copy_size_of_a_running_container_leaves_out_what_goes_meanwhile(tmp_path,
                                                                         monkeypatch):
    base, root = str(tmp_path / "base"), str(tmp_path / "root")
    outside = str(tmp_path / "outside")
    os.makedirs(base)
    _live_tree(root, outside)
    _mutating_walk(monkeypatch, _gone_and_swapped(root, outside))
    assert TreeDiff(base, root).size() == 100


def test_an_entry_removed_after_its_directory_was_read_counts_nothing(tmp_path):
    _write(str(tmp_path / "f"), b"x")
    with os.scandir(str(tmp_path)) as listing:
        entries = list(listing)
    os.unlink(str(tmp_path / "f"))
    assert _changes._live_stat(entries[0]) is None


def test_a_link_replaced_by_a_file_while_it_is_compared_is_a_change(tmp_path, monkeypatch):
    """``sed -i`` on a link in a running container replaces it with a file between the
    walk's ``fstatat`` and its ``readlink``: counted as changed, not an error (and the
    target is read in the open directory, never through a path)."""
    base, root = str(tmp_path / "base"), str(tmp_path / "root")
    os.makedirs(os.path.join(base, "etc"))
    os.symlink("target", os.path.join(base, "etc", "link"))
    _copy(base, root)
    link = os.path.join(root, "etc", "link")
    stale = os.lstat(link)  # what the walk saw: the image's link, unchanged
    os.unlink(link)
    _write(link, b"now a file")
    real = _changes._live_stat
    monkeypatch.setattr(_changes, "_live_stat",
                        lambda entry: stale if entry.name == "link" else real(entry))
    assert TreeDiff(base, root).size() == stale.st_size
