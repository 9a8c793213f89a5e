"""A btrfs store copied without its subvolumes (``cp -a``, as a restore from a file-level
backup leaves it): it keeps working, store_check names every plain root
(``not-a-subvolume``), and repair makes each a subvolume in place, crash-safe, leaving a
running or mounted container alone. Real btrfs on a loop device."""
from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from ansible_collections.strata.layers.plugins.module_utils.drivers.btrfs import is_subvolume
from tests.support import ops
from tests.support.tars import LayerTar


@pytest.fixture
def copied(make_fs, busybox_tar, tmp_path):
    """A btrfs store with a two-layer image and two containers (one changed), copied
    with ``cp -a`` beside it: (the copy, the original)."""
    top = make_fs("btrfs").mountpoint
    original = os.path.join(top, "original")
    storage_driver({"data_root": original, "driver": "btrfs"})
    layer_import({"data_root": original, "src": busybox_tar, "tag": ["bb:1"]})
    app = tmp_path / "app.tar"
    app.write_bytes(LayerTar().dir("app").file("app/run.sh", b"echo app\n", mode=0o755).bytes())
    layer_import({"data_root": original, "src": str(app), "parent": "bb:1", "tag": ["app:1"]})
    for name in ("same", "changed"):
        container_layer({"data_root": original, "name": name, "image": "app:1"})
    changed = container_layer({"data_root": original, "name": "changed", "image": "app:1",
                               "state": "mounted"})["mount_point"]
    with open(os.path.join(changed, "app", "data"), "wb") as handle:
        handle.write(b"d" * 10000)
    container_layer({"data_root": original, "name": "changed", "image": "app:1",
                     "state": "unmounted"})
    copy = os.path.join(top, "copy")
    subprocess.run(["cp", "-a", original, copy], check=True)
    return copy, original


def _sizes(root):
    return {c["name"]: c["size"] for c in store_info({"data_root": root})["containers"]}


def _plain(root):
    return sorted(f["object"] for f in store_check({"data_root": root})["findings"]
                  if f["kind"] == "not-a-subvolume")


def test_a_copied_btrfs_store_works_and_store_check_names_every_plain_root(copied):
    copy, original = copied
    plain = _plain(copy)
    homes = [p.split("/")[1] for p in plain]
    assert homes.count("layers") == 2 and homes.count("containers") == 2
    assert len(plain) == 4  # container_layer's containers have no init layer
    assert _plain(original) == []
    assert _sizes(copy) == _sizes(original)
    # a new container and a child layer are made from the plain roots (as copies)
    made = container_layer({"data_root": copy, "name": "new", "image": "app:1"})
    assert made["changed"]
    assert is_subvolume(os.path.join(copy, "btrfs", "containers", made["id"]))
    assert _sizes(copy)["new"] == 0


def test_repair_makes_each_plain_root_a_subvolume_with_the_same_contents(copied):
    copy, _original = copied
    before, plain = _sizes(copy), _plain(copy)
    repaired = store_check({"data_root": copy, "repair": True})
    assert repaired["ok"] and repaired["remaining"] == []
    assert sorted(r["object"] for r in repaired["repaired"]) == plain
    assert {r["action"] for r in repaired["repaired"]} == {"made a subvolume"}
    assert all(is_subvolume(os.path.join(copy, p)) for p in plain)
    after = store_check({"data_root": copy})
    assert after["findings"] == [] and after["verified"]["layers"] == 2
    assert _sizes(copy) == before
    with open(os.path.join(copy, "btrfs", "containers", _cid(copy, "changed"), "app", "data"),
              "rb") as handle:
        assert handle.read() == b"d" * 10000


def _cid(root, name):
    return next(c["id"] for c in store_info({"data_root": root})["containers"]
                if c["name"] == name)


def test_repair_leaves_a_mounted_container_and_names_it(copied):
    copy, _original = copied
    mounted = container_layer({"data_root": copy, "name": "changed", "image": "app:1",
                               "state": "mounted"})
    try:
        result = store_check({"data_root": copy, "repair": True})
        assert [f["object"] for f in result["remaining"]] == [
            "btrfs/containers/%s" % mounted["id"]]
        assert "repair failed: container 'changed' is running or mounted" in \
            result["remaining"][0]["detail"]
        assert len(result["repaired"]) == 3
        with open(os.path.join(mounted["mount_point"], "app", "data"), "rb") as handle:
            assert handle.read() == b"d" * 10000
    finally:
        container_layer({"data_root": copy, "name": "changed", "image": "app:1",
                         "state": "unmounted"})
    assert store_check({"data_root": copy, "repair": True})["ok"]
    assert _plain(copy) == []


@pytest.mark.parametrize("point", ["subvolume.cloned", "subvolume.swapped"])
def test_kill_9_while_making_a_subvolume_loses_nothing(copied, point):
    copy, _original = copied
    before = _sizes(copy)
    killed = ops.run("check", {"data_root": copy, "repair": True},
                     env=ops.child_env(crash_at=point))
    assert killed.returncode == -9, killed.stderr
    # every root is whole (a plain directory or its subvolume) and the layers verify
    found = store_check({"data_root": copy})
    kinds = {f["kind"] for f in found["findings"]}
    assert kinds <= {"not-a-subvolume", "leftover"} and found["verified"]["layers"] == 2
    assert _sizes(copy) == before
    again = ops.run("check", {"data_root": copy, "repair": True})
    assert again.returncode == 0, again.stderr
    assert store_check({"data_root": copy})["findings"] == []
    assert _sizes(copy) == before


@pytest.mark.parametrize("where", ["layers", "containers"])
def test_a_plain_root_an_earlier_fix_removed_is_left_alone(copied, where):
    """An orphan directory (no record) is both ``remove``d and found plain: the
    subvolume fix, which comes after, finds it gone and does nothing.  Before, it
    reported "made a subvolume" for a layer directory that no longer existed, and failed
    reading a container's record."""
    copy, _original = copied
    orphan = os.path.join(copy, "btrfs", where, "f" * 64)
    os.makedirs(os.path.join(orphan, "etc"))
    kinds = {f["kind"] for f in store_check({"data_root": copy})["findings"]
             if f["object"].endswith("f" * 64)}
    assert "not-a-subvolume" in kinds and len(kinds) == 2
    result = store_check({"data_root": copy, "repair": True})
    assert [r["action"] for r in result["repaired"] if r["object"].endswith("f" * 64)] == \
        ["removed"]
    assert result["remaining"] == []
    assert not os.path.exists(orphan)
    assert store_check({"data_root": copy})["ok"]
