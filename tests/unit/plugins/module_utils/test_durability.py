"""The order of the durability calls of an import and of a container create.

Crash safety rests on an order no kill -9 test can see (a killed process loses nothing
the kernel has; a power cut loses what was not flushed): layer data flushed (syncfs)
before the record that makes the layer addressable is renamed into ``layers/``, and
every metadata file written as temp file + fsync + rename + fsync of its directory.

The calls are recorded by WRAPPING ``os.fsync``, ``os.rename``, ``os.replace``,
``os.unlink`` and ``syncfs`` / ``fsync_dir`` as each engine module sees them (they
import them by name): this is one of the few places where a wrapper is the only way to
observe the real thing, and it is not a mock: every real call still happens, on a real
store, with its real effect; the wrapper only notes it first.
"""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils import (
    _atomic, _containers, _migrate, _recovery, _store)
from tests.support import ops
from tests.support.tars import LayerTar, write


class Calls:
    """The recorded calls, in order: (what, path[, destination])."""

    def __init__(self) -> None:
        self.seen = []

    def index(self, what: str, *paths: str, start: int = 0) -> int:
        for number in range(start, len(self.seen)):
            if self.seen[number][0] == what and self.seen[number][1:1 + len(paths)] == paths:
                return number
        raise AssertionError("no %s %s after call %d in:\n%s" % (what, paths, start, self))

    def of(self, what: str) -> list:
        return [(n, c) for n, c in enumerate(self.seen) if c[0] == what]

    def __str__(self) -> str:
        return "\n".join("%3d %s" % (n, c) for n, c in enumerate(self.seen))


def _path(value) -> str:
    return os.fsdecode(value) if isinstance(value, (str, bytes)) else str(value)


@pytest.fixture
def calls(monkeypatch):
    """Wrap (never replace) the durability calls; see the module docstring."""
    record = Calls()
    real = {name: getattr(os, name) for name in ("fsync", "rename", "replace", "unlink")}
    real_syncfs, real_fsync_dir = _atomic.syncfs, _atomic.fsync_dir

    def fsync(fd):
        try:
            record.seen.append(("fsync", os.readlink("/proc/self/fd/%d" % fd)))
        except OSError:
            record.seen.append(("fsync", "fd %d" % fd))
        return real["fsync"](fd)

    def two(name):
        def wrapper(src, dst, *args, **kwargs):
            record.seen.append((name, _path(src), _path(dst)))
            return real[name](src, dst, *args, **kwargs)
        return wrapper

    def unlink(path, *args, **kwargs):
        record.seen.append(("unlink", _path(path)))
        return real["unlink"](path, *args, **kwargs)

    def syncfs(path):
        record.seen.append(("syncfs", _path(path)))
        return real_syncfs(path)

    def fsync_dir(path):
        record.seen.append(("fsync_dir", _path(path)))
        return real_fsync_dir(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", two("rename"))
    monkeypatch.setattr(os, "replace", two("replace"))
    monkeypatch.setattr(os, "unlink", unlink)
    for module in (_atomic, _store, _migrate):
        monkeypatch.setattr(module, "syncfs", syncfs)
    for module in (_atomic, _recovery, _containers, _migrate):
        monkeypatch.setattr(module, "fsync_dir", fsync_dir)
    return record


@pytest.fixture
def root(store_root, busybox_tar):
    ops.run_here("migrate", {"data_root": store_root, "driver": "overlay2"})
    ops.run_here("import", {"data_root": store_root, "src": busybox_tar, "tag": ["bb:1"]})
    yield store_root
    ops.unmount_and_remove(store_root)


def assert_metadata_writes_are_durable(calls: Calls, root: str) -> int:
    """Every os.replace under the store: a temp name in the same directory, fsync'ed
    before, its directory fsync'ed right after.  Returns how many were checked."""
    checked = 0
    for number, (_what, src, dst) in calls.of("replace"):
        if not dst.startswith(root + "/"):
            continue
        assert os.path.dirname(src) == os.path.dirname(dst), (src, dst)
        assert os.path.basename(src).startswith(_atomic.TEMP_PREFIX), src
        synced = [n for n, c in calls.of("fsync") if c[1] == src and n < number]
        assert synced, "%s replaced %s without an fsync first:\n%s" % (src, dst, calls)
        assert calls.seen[number + 1] == ("fsync_dir", os.path.dirname(dst)), (
            "no fsync of %s right after replacing %s:\n%s" % (os.path.dirname(dst), dst, calls))
        checked += 1
    return checked


def assert_renames_are_durable(calls: Calls, root: str) -> int:
    """Every record renamed into place under the store: its new directory fsync'ed
    right after."""
    checked = 0
    for number, (_what, src, dst) in calls.of("rename"):
        parent = os.path.dirname(dst)
        if os.path.basename(parent) in ("layers", "images", "containers") and \
                os.path.dirname(parent) == root:
            assert calls.seen[number + 1] == ("fsync_dir", parent), calls
            checked += 1
    return checked


def test_import_syncs_layer_data_before_its_record_appears(root, calls, tmp_path):
    src = write(tmp_path / "app.tar", LayerTar().dir("app").file("app/data", b"d" * 70000)
                .bytes())
    del calls.seen[:]
    result = ops.run_here("import", {"data_root": root, "src": src, "parent": "bb:1",
                                     "tag": ["app:1"]})
    chain = result["layers"][-1]["chain_id"]
    hexa = chain[len("sha256:"):]
    record = os.path.join(root, "layers", hexa)
    driver_dir = os.path.join(root, "overlay2", "layers", hexa)
    marks = os.path.join(root, "incomplete")
    # 1. the mark is durable before the driver's directory gets its final name
    mark = next(n for n, c in calls.of("replace") if os.path.dirname(c[2]) == marks)
    placed = next(n for n, c in calls.of("rename") if c[2] == driver_dir)
    assert mark < placed
    # 2. the data is flushed once it is in place, before the record makes it visible
    flushed = calls.index("syncfs", os.path.join(root, "overlay2"), start=placed)
    visible = next(n for n, c in calls.of("rename") if c[2] == record)
    assert placed < flushed < visible, str(calls)
    # 3. the record's files were made durable in its staging dir before that: the
    #    header record (fsync'ed as it is closed) and layer.json (temp + fsync + rename)
    staged = calls.seen[visible][1]
    assert calls.index("fsync", os.path.join(staged, "tar-split.gz")) < visible
    written = next(n for n, c in calls.of("replace")
                   if c[2] == os.path.join(staged, "layer.json"))
    assert written < visible
    # 4. the mark goes last, and its removal is made durable
    gone = next(n for n, c in calls.of("unlink") if os.path.dirname(c[1]) == marks)
    assert gone > visible and calls.seen[gone + 1] == ("fsync_dir", marks)
    # 5. every metadata write and record rename of the import followed the rule
    assert assert_metadata_writes_are_durable(calls, root) >= 5   # mark x3, layer.json, tags...
    assert assert_renames_are_durable(calls, root) == 2           # the layer and the image


def test_container_create_syncs_its_directories_before_its_record_appears(root, calls):
    del calls.seen[:]
    made = ops.run_here("container", {"data_root": root, "name": "c1", "image": "bb:1"})
    cid = made["id"]
    record = os.path.join(root, "containers", cid)
    driver_dir = os.path.join(root, "overlay2", "containers", cid)
    marks = os.path.join(root, "incomplete")
    mark = next(n for n, c in calls.of("replace") if os.path.dirname(c[2]) == marks)
    synced = calls.index("fsync_dir", driver_dir, start=mark)
    parent = calls.index("fsync_dir", os.path.dirname(driver_dir), start=synced)
    visible = next(n for n, c in calls.of("rename") if c[2] == record)
    assert mark < synced < parent < visible, str(calls)
    staged = calls.seen[visible][1]
    written = next(n for n, c in calls.of("replace")
                   if c[2] == os.path.join(staged, "container.json"))
    assert written < visible
    gone = next(n for n, c in calls.of("unlink") if os.path.dirname(c[1]) == marks)
    assert gone > visible and calls.seen[gone + 1] == ("fsync_dir", marks)
    assert assert_metadata_writes_are_durable(calls, root) >= 2
    assert assert_renames_are_durable(calls, root) == 1
