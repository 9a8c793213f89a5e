"""References fail closed: every reader that decides what is unreferenced (prune, image
removal, store_check repair, migration) treats a record it cannot read as in use, keeps
everything it might need and says which record is at fault."""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree
from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt
from ansible_collections.strata.layers.plugins.module_utils._ops.image import image
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.store_prune import store_prune
from ansible_collections.strata.layers.plugins.module_utils._runsetup import CACHE_DIR
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from tests.support.tars import LayerTar, write


@pytest.fixture
def store(tmp_path, store_root, busybox_tar):
    """bb:1 (busybox), an untagged app image on it, and container c1 on the app image."""
    storage_driver({"data_root": store_root, "driver": "overlay2"})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["bb:1"]})
    app = write(tmp_path / "app.tar", LayerTar().file("app.txt", b"app\n").bytes())
    layer_import({"data_root": store_root, "src": app, "parent": "bb:1", "tag": ["app:1"]})
    container_layer({"data_root": store_root, "name": "c1", "image": "app:1",
                     "state": "mounted"})
    return Store(store_root)    # the autouse fixture unmounts what is left below tmp_path


def layers_on_disk(store: Store) -> set:
    return set(os.listdir(store.layers.dir)) | set(os.listdir(
        os.path.join(store.root, "overlay2", "layers")))


def app_id(store: Store) -> str:
    return store.images.tags()["app:1"]


def mounted_file(store: Store) -> str:
    mount = os.path.join(store.root, "mounts", store.container_ids()[0])
    with open(os.path.join(mount, "app.txt")) as handle:
        return handle.read()


def test_a_quarantined_image_under_a_live_container_keeps_its_layers(store):
    before = layers_on_disk(store)
    damaged = app_id(store)
    # damage the app image's config: store_check repair moves the record aside
    with open(os.path.join(store.images.path(damaged), "config.json"), "ab") as handle:
        handle.write(b" ")
    repaired = store_check({"data_root": store.root, "repair": True})
    assert any(r["kind"] == "corrupt-config" for r in repaired["repaired"])
    assert damaged not in store.images.ids()
    for check_mode in (True, False):
        result = store_prune({"data_root": store.root}, check_mode=check_mode)
        assert not result["changed"] and result["removed"] == {"images": [], "layers": []}
        assert any("cannot be read" in u for u in result["unreadable"])
        assert "nothing was pruned" in result["warnings"][0]
    assert layers_on_disk(store) == before
    assert store_info({"data_root": store.root})["disk_usage"]["reclaimable"] == 0
    assert mounted_file(store) == "app\n"      # the container's lowerdirs are still there


def test_a_corrupt_container_record_holds_every_image_and_layer(store):
    # untag the app image: the only thing that keeps it is the container
    store_tags_without(store, "app:1")
    cid = Store(store.root).container_ids()[0]
    with open(os.path.join(store.root, "containers", cid, "container.json"), "w") as handle:
        handle.write("{not json")
    before = layers_on_disk(store)
    images_before = store.images.ids()
    result = store_prune({"data_root": store.root})
    assert not result["changed"] and result["removed"] == {"images": [], "layers": []}
    assert cid in result["unreadable"][0]
    assert store.images.ids() == images_before and layers_on_disk(store) == before
    # image removal cannot tell whether the container uses the image: refused
    with pytest.raises(Corrupt, match=cid[:12]):
        image({"data_root": store.root, "name": "bb:1", "state": "absent"})
    assert store.images.ids() == images_before and layers_on_disk(store) == before
    # a driver switch would drop the container's data with the old home: refused
    with pytest.raises(Corrupt, match="cannot switch drivers"):
        storage_driver({"data_root": store.root, "driver": "vfs", "migrate": True})
    assert store.driver_name == "overlay2" and not os.path.isdir(os.path.join(store.root, "vfs"))
    assert mounted_file(store) == "app\n"


def test_a_missing_image_record_holds_its_container_layers(store):
    store_tags_without(store, "app:1")
    record = store.images.path(app_id_of_container(store))
    remove_tree(record)
    before = layers_on_disk(store)
    result = store_prune({"data_root": store.root})
    assert not result["changed"] and layers_on_disk(store) == before
    assert any("whose record cannot be read" in u for u in result["unreadable"])
    # removing another image keeps every layer too (the container's chain is unknown)
    removed = image({"data_root": store.root, "name": "bb:1", "state": "absent"})
    assert removed["removed"]["layers"] == [] and removed["removed"]["unreadable"]
    assert layers_on_disk(store) == before
    assert mounted_file(store) == "app\n"


def test_with_every_record_readable_prune_still_removes_what_is_unused(store):
    store_tags_without(store, "bb:1")
    container_layer({"data_root": store.root, "name": "c1", "state": "absent"})
    store_tags_without(store, "app:1")
    result = store_prune({"data_root": store.root})
    assert result["changed"] and len(result["removed"]["layers"]) == 2
    assert result["unreadable"] == []


def store_tags_without(store: Store, tag: str) -> None:
    tags = store.images.tags()
    tags.pop(tag, None)
    with open(store.images.tags_path, "w") as handle:
        json.dump(tags, handle)


def app_id_of_container(store: Store) -> str:
    cid = store.container_ids()[0]
    with open(os.path.join(store.root, "containers", cid, "container.json")) as handle:
        return json.load(handle)["image_id"]


def test_repair_keeps_driver_data_a_live_container_needs_when_its_record_is_lost(store):
    base = store.images.get(store.images.resolve("bb:1")).top
    data = store.driver.layer_dir(base)
    remove_tree(store.layers.path(base))               # the record is lost, the data is not
    result = store_check({"data_root": store.root, "repair": True})
    orphan = [f for f in result["findings"] if f["kind"] == "orphan-layer-data"]
    assert len(orphan) == 1 and "it is kept" in orphan[0]["detail"]
    assert not [r for r in result["repaired"] if r["kind"] == "orphan-layer-data"]
    assert os.path.isdir(data)
    assert mounted_file(store) == "app\n"


def test_build_cache_mounts_stay_while_a_record_is_unreadable(store):
    """``build_cache: true`` is part of the prune: while it fails closed on an unreadable
    record, the cache mounts stay too (the warning says nothing was pruned)."""
    cache = os.path.join(store.root, CACHE_DIR, "c" * 64)
    os.makedirs(cache)
    cid = Store(store.root).container_ids()[0]
    with open(os.path.join(store.root, "containers", cid, "container.json"), "w") as handle:
        handle.write("{not json")
    result = store_prune({"data_root": store.root, "build_cache": True})
    assert not result["changed"] and result["removed"]["build_cache"] == []
    assert result["unreadable"] and os.path.isdir(cache)
