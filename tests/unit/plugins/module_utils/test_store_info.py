"""store_info: ``sizes: false`` leaves out what needs a walk of the containers' files and
changes nothing else."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._containers import (
    ContainerDB, changes, image_chain)
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import (
    container_layer)
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver


@pytest.mark.parametrize("driver", ["overlay2", "vfs"])
def test_sizes_false_is_docker_ps_without_s(store_root, busybox_tar, driver):
    storage_driver({"data_root": store_root, "driver": driver})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["base:1"]})
    mounted = container_layer({"data_root": store_root, "name": "c1", "image": "base:1",
                               "state": "mounted"})
    try:
        with open(os.path.join(mounted["mount_point"], "new-file"), "wb") as handle:
            handle.write(b"x" * 5000)
    finally:
        container_layer({"data_root": store_root, "name": "c1", "state": "unmounted"})
    full = store_info({"data_root": store_root})
    quick = store_info({"data_root": store_root, "sizes": False})
    row = full["containers"][0]
    assert row["size"] >= 5000 and row["virtual_size"] == row["size"] + full["images"][0]["size"]
    assert full["disk_usage"]["containers"] == row["size"] and full["disk_usage"]["on_disk"] > 0
    assert [(c["size"], c["virtual_size"]) for c in quick["containers"]] == [(None, None)]
    assert quick["disk_usage"]["containers"] is None and quick["disk_usage"]["on_disk"] is None
    strip = ("size", "virtual_size")
    assert [{k: v for k, v in c.items() if k not in strip} for c in quick["containers"]] == \
        [{k: v for k, v in c.items() if k not in strip} for c in full["containers"]]
    for key in ("images", "layers", "driver"):
        assert quick[key] == full[key]
    for key in ("images", "layers", "reclaimable"):
        assert quick["disk_usage"][key] == full["disk_usage"][key]


def test_containers_on_one_image_sized_as_each_alone(store_root, busybox_tar):
    """vfs: the containers on one image share one read of it (``BaseTree``); each size
    is still the one its own walk-and-compare gives, whatever the others changed."""
    storage_driver({"data_root": store_root, "driver": "vfs"})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["base:1"]})
    passwd = b"root:x:0:0:changed:/root:/bin/sh\n"
    edits = {
        "same": lambda root: None,
        "added": lambda root: _write(os.path.join(root, "tmp", "new-file"), b"x" * 5000),
        "modified": lambda root: _write(os.path.join(root, "etc", "passwd"), passwd),
        "deleted": lambda root: (os.unlink(os.path.join(root, "etc", "group")),
                                 os.chmod(os.path.join(root, "etc"), 0o700)),
    }
    for name, edit in edits.items():
        mounted = container_layer({"data_root": store_root, "name": name, "image": "base:1",
                                   "state": "mounted"})
        try:
            edit(mounted["mount_point"])
        finally:
            container_layer({"data_root": store_root, "name": name, "state": "unmounted"})
    sizes = {c["name"]: c["size"] for c in store_info({"data_root": store_root})["containers"]}
    assert sizes == {"same": 0, "added": 5000, "modified": len(passwd), "deleted": 0}
    store = Store(store_root)
    with store.read():
        for record in ContainerDB(store_root).all():
            alone = changes(store, record, image_chain(store, store.images.get(record.image_id)))
            assert alone.size() == sizes[record.name]


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
