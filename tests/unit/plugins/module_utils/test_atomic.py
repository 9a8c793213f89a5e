"""Durable writes (``_atomic``): ``write_stream`` and the exporter that uses it.

The order of the calls (fsync of the temp file, then ``os.replace``, then fsync of the
directory) is observed by WRAPPING ``os.fsync``, ``os.replace`` and ``fsync_dir``, as
tests/unit/plugins/module_utils/test_durability.py does: every real call still happens
on a real filesystem; the wrapper only notes it first (a kill -9 cannot see a missing
fsync, only a power cut could).
"""
from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _atomic, _export
from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from tests.support import ops


@pytest.fixture
def calls(monkeypatch):
    """(what, path[, destination]) of every fsync, replace and directory fsync, in order."""
    seen = []
    real_fsync, real_replace, real_fsync_dir = os.fsync, os.replace, _atomic.fsync_dir

    def fsync(fd):
        seen.append(("fsync", os.readlink("/proc/self/fd/%d" % fd)))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        seen.append(("replace", real(src), real(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def fsync_dir(path):
        seen.append(("fsync_dir", real(path)))
        return real_fsync_dir(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(_atomic, "fsync_dir", fsync_dir)
    return seen


def real(path) -> str:
    """``path`` with a leading ``/proc/self/fd/<n>`` (how the layout export names files
    in a directory it opened) as the directory's own path."""
    path = os.fsdecode(path)
    if not path.startswith("/proc/self/fd/"):
        return path
    parts = path.split("/", 5)
    directory = os.readlink("/".join(parts[:5]))
    return os.path.join(directory, parts[5]) if len(parts) > 5 else directory


def assert_durably_replaced(seen, dest: str) -> None:
    """``dest`` came from a temp file beside it, fsync'ed before the rename, with its
    directory fsync'ed right after."""
    number = next(n for n, c in enumerate(seen) if c[0] == "replace" and c[2] == dest)
    src = seen[number][1]
    assert os.path.dirname(src) == os.path.dirname(dest)
    assert os.path.basename(src).startswith(_atomic.TEMP_PREFIX), src
    assert ("fsync", src) in seen[:number], seen
    assert seen[number + 1] == ("fsync_dir", os.path.dirname(dest)), seen


def temps(directory) -> list:
    return [n for n in os.listdir(directory) if n.startswith(_atomic.TEMP_PREFIX)]


def test_write_stream_replaces_the_file_durably(tmp_path, calls):
    dest = str(tmp_path / "out.tar")
    (tmp_path / "out.tar").write_bytes(b"old")
    with _atomic.write_stream(dest, mode=0o600) as out:
        out.write(b"new ")
        os.write(out.fileno(), b"data")  # the file is unbuffered: both land in order
        assert open(dest, "rb").read() == b"old", "visible before the block ended"
    assert open(dest, "rb").read() == b"new data"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert temps(tmp_path) == []
    assert_durably_replaced(calls, dest)


def test_write_stream_keeps_the_old_file_when_the_block_fails(tmp_path, calls):
    dest = tmp_path / "out.tar"
    dest.write_bytes(b"old")
    with pytest.raises(ValueError, match="the producer failed"):
        with _atomic.write_stream(str(dest)) as out:
            out.write(b"half of it")
            raise ValueError("the producer failed")
    assert dest.read_bytes() == b"old"
    assert temps(tmp_path) == []
    assert not [c for c in calls if c[0] == "replace"]


def test_write_stream_names_the_destination_it_cannot_create(tmp_path):
    dest = str(tmp_path / "missing" / "out.tar")
    with pytest.raises(StoreError, match="writing %s" % dest) as caught:
        with _atomic.write_stream(dest):
            pytest.fail("the block ran without a file")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


@pytest.fixture
def plan(store_root, busybox_tar):
    ops.run_here("import", {"data_root": store_root, "src": busybox_tar, "tag": ["bb:1"]})
    store = Store.from_params({"data_root": store_root})
    with store.read():
        image = store.images.get(store.images.resolve("bb:1"))
        yield store, _export.Export([_export.Plan(store, image, ["bb:1"])])
    ops.unmount_and_remove(store_root)


def test_an_archive_export_is_written_durably(plan, tmp_path, calls):
    store, export = plan
    dest = str(tmp_path / "bb.tar")
    _export.write_archive(store, export, "docker-archive", dest)
    assert_durably_replaced(calls, dest)
    assert temps(tmp_path) == []


def test_every_blob_of_a_layout_export_is_written_durably(plan, tmp_path, calls):
    store, export = plan
    dest = str(tmp_path / "layout")
    _export.write_layout(store, export, dest)
    for blob in export.blobs():
        assert_durably_replaced(calls, os.path.join(dest, blob.name))
    assert_durably_replaced(calls, os.path.join(dest, "index.json"))
    assert temps(os.path.join(dest, "blobs", "sha256")) == []


def test_a_failed_archive_export_leaves_no_file(plan, tmp_path, monkeypatch):
    store, export = plan
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "bb.tar"

    def broken(*_args):  # a disk error mid-export: no real disk here fails on demand
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_export, "write_blob", broken)
    with pytest.raises(StoreError, match="writing %s" % dest) as caught:
        _export.write_archive(store, export, "docker-archive", str(dest))
    assert isinstance(caught.value.__cause__, OSError)
    assert os.listdir(str(out)) == []
