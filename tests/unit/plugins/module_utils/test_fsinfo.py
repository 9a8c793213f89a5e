"""``walk_dirs`` and ``allocated_bytes`` on it: the bytes ``du`` finds, hardlinks once, deep
trees with a bounded number of descriptors, and every descriptor closed."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _fsinfo
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import (
    OPEN_LEVELS, allocated_bytes, walk_dirs)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def _du(root: str) -> int:
    """``du``'s allocated bytes under ``root`` (its own directory left out, as
    ``allocated_bytes`` leaves it out)."""
    out = subprocess.run(["du", "-s", "-B1", root], check=True, capture_output=True).stdout
    return int(out.split()[0]) - os.lstat(root).st_blocks * 512


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path / "tree")
    deep = os.path.join(root, *["d"] * (OPEN_LEVELS + 10))
    os.makedirs(deep)
    os.makedirs(os.path.join(root, "wide", "a"))
    _write(os.path.join(deep, "bottom"), b"b" * 20000)
    _write(os.path.join(root, "wide", "a", "data"), b"x" * 70000)
    os.link(os.path.join(root, "wide", "a", "data"), os.path.join(root, "wide", "again"))
    _write(os.fsencode(os.path.join(root, "wide")) + b"/caf\xe9", b"not UTF-8" * 1000)
    os.symlink("a/data", os.path.join(root, "wide", "link"))
    os.mkfifo(os.path.join(root, "wide", "fifo"))
    return root


def test_allocated_bytes_is_what_du_finds(tree):
    before = _open_fds()
    assert allocated_bytes(tree) == _du(tree) > 90000
    assert _open_fds() == before


def test_known_directories_are_taken_as_given(tree):
    """A directory the caller measured counts its figure; an inode it lists is not
    counted again elsewhere."""
    wide = os.path.realpath(os.path.join(tree, "wide"))
    data = os.lstat(os.path.join(wide, "a", "data"))
    known = {os.path.join(wide, "a"): (12345, {(data.st_dev, data.st_ino)})}
    # "wide/again" is the known inode: left out; "wide/a" counts 12345 for its contents
    expected = _du(tree) - _du(os.path.join(wide, "a")) + 12345
    assert allocated_bytes(tree, known) == expected


def test_missing_or_not_a_directory_counts_nothing(tmp_path):
    assert allocated_bytes(str(tmp_path / "absent")) == 0
    _write(str(tmp_path / "file"), b"x" * 5000)
    assert allocated_bytes(str(tmp_path / "file")) == 0


def test_walk_dirs_bounds_the_descriptors_it_holds(tree):
    """Each directory visited once, with its relative path; never more than
    ``OPEN_LEVELS`` descriptors open (besides the one being read)."""
    seen, most = [], [0]
    before = len(_open_fds())

    def visit(rel, fd, data):
        seen.append((rel, data))
        most[0] = max(most[0], len(_open_fds()) - before)
        with os.scandir(fd) as entries:
            return [(e.name, len(seen)) for e in entries if e.is_dir(follow_symlinks=False)]

    walk_dirs(tree, visit, data="top")
    walked = {rel for rel, _data in seen}
    expected = {os.path.relpath(p, tree) if p != tree else ""
                for p, _dirs, _files in os.walk(tree)}
    assert walked == expected and len(seen) == len(expected)
    assert seen[0] == ("", "top")
    assert most[0] <= OPEN_LEVELS + 2  # the levels, the one visited, scandir's own
    assert len(_open_fds()) == before


def test_walk_dirs_closes_everything_when_a_visit_fails(tree):
    before = _open_fds()

    def visit(rel, fd, _data):
        if rel.count("/") == OPEN_LEVELS + 3:
            raise RuntimeError("visit failed")
        with os.scandir(fd) as entries:
            return [(e.name, None) for e in entries if e.is_dir(follow_symlinks=False)]

    with pytest.raises(RuntimeError, match="visit failed"):
        walk_dirs(tree, visit)
    assert _open_fds() == before


def test_walk_dirs_raises_for_a_missing_top_unless_tolerant(tmp_path):
    with pytest.raises(FileNotFoundError):
        walk_dirs(str(tmp_path / "absent"), lambda rel, fd, data: [])
    walk_dirs(str(tmp_path / "absent"), lambda rel, fd, data: [], tolerant=True)


def test_walk_dirs_never_follows_a_link_swapped_in_below_the_open_levels(tmp_path):
    """Below ``OPEN_LEVELS`` a directory is opened from the deepest open one by a
    relative path: a directory of that path turned into a link meanwhile (as a running
    container can do to its own files) fails the open instead of leading outside."""
    top = tmp_path / "top"
    deep = os.path.join(str(top), *["d"] * (OPEN_LEVELS + 3))
    os.makedirs(deep)
    outside = tmp_path / "outside"
    os.makedirs(os.path.join(str(outside), "d", "d", "d"))
    _write(os.path.join(str(outside), "d", "d", "d", "secret"), b"s" * 9000)
    swapped = os.path.join(str(top), *["d"] * OPEN_LEVELS)  # the first level not kept open
    seen = []

    def visit(rel, fd, _data):
        if rel.count("/") == OPEN_LEVELS - 1:  # that level: closed once visited
            shutil.rmtree(swapped)
            os.symlink(str(outside / "d"), swapped)
            return [("d", None)]
        with os.scandir(fd) as listing:
            entries = list(listing)
        seen.extend(e.name for e in entries)
        return [(e.name, None) for e in entries if e.is_dir(follow_symlinks=False)]

    with pytest.raises(OSError) as info:
        walk_dirs(str(top), visit)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert "secret" not in seen


@pytest.fixture(params=["openat2", "per component"])
def opener(request, monkeypatch):
    """Both ways ``_open_below`` opens a deep directory: ``openat2`` (this kernel has it)
    and the fallback of kernels without it, one ``openat`` per component."""
    if request.param == "per component":
        monkeypatch.setitem(_fsinfo._openat2_state, "works", False)
    return request.param


def test_a_link_swapped_in_below_the_open_levels_is_refused_either_way(tmp_path, opener):
    top, outside = tmp_path / "top", tmp_path / "outside"
    os.makedirs(os.path.join(str(top), *["d"] * (OPEN_LEVELS + 3)))
    os.makedirs(os.path.join(str(outside), "d", "d"))
    swapped = os.path.join(str(top), *["d"] * (OPEN_LEVELS + 1))
    shutil.rmtree(swapped)
    os.symlink(str(outside / "d"), swapped)
    anchor = os.open(os.path.join(str(top), *["d"] * OPEN_LEVELS), os.O_RDONLY)
    try:
        for rel in ("d/d/d", b"d"):  # through the link, and the link itself
            with pytest.raises(OSError) as info:
                _fsinfo._open_below(anchor, rel)
            assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    finally:
        os.close(anchor)


def test_a_directory_below_the_open_levels_is_one_call_with_openat2(tmp_path, monkeypatch):
    """A chain deeper than ``OPEN_LEVELS``: with ``openat2`` each directory past them is
    opened with one call from the deepest open level (not one per component, which made
    a walk of a 2000-deep chain quadratic), and the walk sees every level."""
    depth = OPEN_LEVELS + 40
    os.makedirs(os.path.join(str(tmp_path), *["d"] * depth))
    calls = []
    real = _fsinfo._openat2
    monkeypatch.setattr(_fsinfo, "_openat2", lambda at, rel: calls.append(rel) or real(at, rel))
    seen = []

    def visit(rel, fd, _data):
        seen.append(rel)
        with os.scandir(fd) as listing:
            return [(e.name, None) for e in listing if e.is_dir(follow_symlinks=False)]

    walk_dirs(str(tmp_path), visit)
    assert len(seen) == depth + 1
    assert len(calls) == depth  # every directory below the top: one call each
    assert max(rel.count(b"/") for rel in calls) > 0  # past the open levels: several components


def test_a_path_below_the_open_levels_longer_than_path_max_is_walked(tmp_path):
    """A container can nest long names past PATH_MAX below the open levels: one
    ``openat2`` of that path would fail (ENAMETOOLONG); those directories are opened one
    component at a time instead, and every byte is counted."""
    fd = os.open(str(tmp_path), os.O_RDONLY)
    try:  # made by descriptors: the whole path is longer than PATH_MAX
        for _level in range(OPEN_LEVELS + 30):  # 30 * 201 bytes below the open levels
            os.mkdir("n" * 200, dir_fd=fd)
            below = os.open("n" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = below
        data = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(data, b"x" * 5000)
        os.close(data)
    finally:
        os.close(fd)
    seen = []

    def visit(rel, fd, _data):
        seen.append(rel)
        with os.scandir(fd) as listing:
            return [(e.name, None) for e in listing if e.is_dir(follow_symlinks=False)]

    walk_dirs(str(tmp_path), visit, live=True)
    assert len(seen) == OPEN_LEVELS + 31
    assert allocated_bytes(str(tmp_path)) >= 5000
