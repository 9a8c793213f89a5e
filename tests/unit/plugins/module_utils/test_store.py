"""The store: idempotent ingest, verification before anything is kept, the lock."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, Locked, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._lock import StoreLock
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from tests.support.paths import COLLECTIONS
from tests.support.tars import LayerTar, write


def snapshot(root: str) -> dict:
    """Every path under the store with what identifies its content."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if rel == "lock":
                continue
            out[rel] = (st.st_mode, st.st_size, st.st_mtime_ns if not os.path.isdir(path) else 0)
    return out


def imp(root, src, **kw):
    return layer_import(dict({"data_root": root, "src": str(src)}, **kw))


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_import_is_idempotent_for_every_compression(tmp_path, store_root, busybox_tar, compression):
    with open(busybox_tar, "rb") as handle:
        data = handle.read()
    src = write(tmp_path / "layer", data, compression)
    first = imp(store_root, src, tag=["busybox:test"])
    assert first["changed"] and first["layers"][0]["imported"]
    again = imp(store_root, src, tag=["busybox:test"])
    assert not again["changed"] and not again["layers"][0]["imported"]
    assert again["image_id"] == first["image_id"]
    info = store_info({"data_root": store_root})
    assert [i["tags"] for i in info["images"]] == [["busybox:test"]]


def test_same_content_from_another_file_is_not_stored_twice(tmp_path, store_root, busybox_tar):
    imp(store_root, busybox_tar)
    with open(busybox_tar, "rb") as handle:
        copy = write(tmp_path / "copy.tar.gz", handle.read(), "gzip")
    result = imp(store_root, copy)
    assert not result["changed"]
    assert len(Store(store_root).layers.chains()) == 1


def test_stacking_on_a_parent_image_shares_the_base(tmp_path, store_root, busybox_tar):
    base = imp(store_root, busybox_tar, tag=["base:1"])
    layer = LayerTar().dir("app").file("app/hello.sh", b"echo hi\n", mode=0o755).bytes()
    top = write(tmp_path / "top.tar", layer)
    child = imp(store_root, top, parent="base:1", tag=["app:1"])
    assert child["changed"]
    assert [l["diff_id"] for l in child["layers"]][:1] == [base["layers"][0]["diff_id"]]
    info = store_info({"data_root": store_root})
    images = {i["tags"][0]: i for i in info["images"]}
    assert images["app:1"]["shared_size"] == images["base:1"]["size"]
    assert images["app:1"]["unique_size"] == len(b"echo hi\n")
    assert len(info["layers"]) == 2
    assert not imp(store_root, top, parent="base:1", tag=["app:1"])["changed"]


def test_digest_mismatch_keeps_nothing(tmp_path, store_root, busybox_tar):
    imp(store_root, busybox_tar)
    before = snapshot(store_root)
    other = write(tmp_path / "o.tar", LayerTar().file("x", b"1").bytes())
    with pytest.raises(DigestMismatch, match="nothing was kept"):
        imp(store_root, other, digest="sha256:" + "0" * 64)
    assert snapshot(store_root) == before


@pytest.mark.parametrize("case", ["truncated-gzip", "corrupt-gzip", "escape", "max_size"])
def test_bad_input_leaves_the_store_exactly_as_before(tmp_path, store_root, busybox_tar, case):
    imp(store_root, busybox_tar)
    before = snapshot(store_root)
    data = LayerTar().file("big", b"z" * 200000).bytes()
    kwargs = {}
    if case == "truncated-gzip":
        src = write(tmp_path / "t.gz", data, "gzip")
        with open(src, "r+b") as handle:
            handle.truncate(os.path.getsize(src) // 2)
    elif case == "corrupt-gzip":
        src = write(tmp_path / "c.gz", data, "gzip")
        with open(src, "r+b") as handle:
            handle.seek(40)
            handle.write(b"\xff" * 64)
    elif case == "escape":
        src = write(tmp_path / "e.tar", LayerTar().file("ok", b"1").file("../x", b"2").bytes())
    else:
        src = write(tmp_path / "m.tar.gz", data, "gzip")
        kwargs["max_size"] = 100000
    with pytest.raises(Corrupt if case.endswith("-gzip") else InvalidInput) as info:
        imp(store_root, src, **kwargs)
    assert str(src) in str(info.value) or "max_size" in str(info.value)
    assert snapshot(store_root) == before


def test_unknown_parent_is_named(tmp_path, store_root, busybox_tar):
    imp(store_root, busybox_tar)
    with pytest.raises(NotFound, match="nope:1"):
        imp(store_root, busybox_tar, parent="nope:1")


def test_check_mode_writes_nothing(tmp_path, store_root, busybox_tar):
    result = layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["a:1"]},
                          check_mode=True)
    assert result["changed"] and not os.path.exists(store_root)


def test_lock_timeout_names_the_holder(store_root):
    os.makedirs(store_root)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from ansible_collections.strata.layers.plugins.module_utils._lock import StoreLock\n"
        "with StoreLock(%r, True, 5, 'a long import'):\n"
        "    print('held', flush=True); time.sleep(30)\n")
        % (COLLECTIONS, os.path.join(store_root, "lock"))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(Locked) as info:
            with StoreLock(os.path.join(store_root, "lock"), True, 0.3):
                pass
        assert time.monotonic() - start < 5
        assert "pid %d" % holder.pid in str(info.value)
        assert "a long import" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with StoreLock(os.path.join(store_root, "lock"), True, 1):
        pass


def test_relative_data_root_is_refused():
    with pytest.raises(InvalidInput, match="absolute"):
        Store("relative/path")


@pytest.mark.parametrize("first", ["BZh91AY&SY", "\x1f\x8bname", "(\xb5/\xfdzst", "\xfd7zXZx"])
def test_a_plain_tar_whose_first_name_looks_like_a_magic_is_a_tar(tmp_path, store_root, first):
    """Found by review: compression was told from the first bytes alone."""
    data = LayerTar().file(first, b"payload").bytes()
    src = write(tmp_path / "magic.tar", data)
    result = imp(store_root, src, format="layer")
    assert result["changed"]
    import hashlib
    assert result["layers"][0]["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_a_source_rewritten_while_it_is_read_is_refused_and_never_cached(
        tmp_path, store_root, monkeypatch, compression):
    """A concurrent writer is simulated (deterministically) by rewriting the file in place
    right after the import's first read of it: same size, other content, newer times."""
    from ansible_collections.strata.layers.plugins.module_utils import _compression
    first = LayerTar().file("v", b"A" * 200_000).bytes()
    second = LayerTar().file("v", b"B" * 200_000).bytes()
    src = write(tmp_path / "layer", first, compression)
    new_bytes = open(write(tmp_path / "next", second, compression), "rb").read()
    real_read = os.read
    seen = {}

    def read(fd, n):
        data = real_read(fd, n)
        target = os.fstat(fd)
        if not seen and (target.st_dev, target.st_ino) == (os.stat(src).st_dev, os.stat(src).st_ino):
            seen["rewritten"] = True
            with open(src, "r+b") as handle:
                handle.write(new_bytes)
                handle.truncate()
            st = os.stat(src)
            os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return data

    monkeypatch.setattr(_compression.os, "read", read)
    with pytest.raises(InvalidInput, match="changed while it was being read"):
        imp(store_root, src, format="layer")
    monkeypatch.undo()
    assert seen and not os.path.exists(store_root)      # nothing kept, not even a store
    again = imp(store_root, src, format="layer", tag=["v:1"])
    assert again["changed"]
    assert again["layers"][0]["diff_id"] == "sha256:" + hashlib.sha256(second).hexdigest()
    assert not imp(store_root, src, format="layer", tag=["v:1"])["changed"]


def test_a_lock_whose_file_was_removed_is_not_current(tmp_path):
    """A first run that fails removes its store, lock file included: a waiter that then
    gets the lock of the unlinked file must notice and start again (Store.write does)."""
    path = str(tmp_path / "lock")
    lock = StoreLock(path, True, 1.0, "test")
    lock.acquire()
    try:
        assert lock.current()
        os.unlink(path)
        assert not lock.current()
        open(path, "w").close()          # another run made a new store meanwhile
        assert not lock.current()
    finally:
        lock.release()
