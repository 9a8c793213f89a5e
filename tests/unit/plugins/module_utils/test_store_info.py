"""store_info: ``sizes: false`` leaves out what needs a walk of the containers' files and
changes nothing else."""
from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.strata.layers.plugins.module_utils._changes import _Emitter
from ansible_collections.strata.layers.plugins.module_utils._containers import (
    ContainerDB, Sizing, changes, container_facts, create, image_chain)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import allocated_bytes
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import (
    container_layer)
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from ansible_collections.strata.layers.plugins.module_utils._runtime_spec import INIT_ENTRIES
from ansible_collections.strata.layers.plugins.module_utils.drivers.btrfs import subvolume_info


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
    full = store_info({"data_root": store_root})
    sizes = {c["name"]: c["size"] for c in full["containers"]}
    assert sizes == {"same": 0, "added": 5000, "modified": len(passwd), "deleted": 0}
    # the size walks also gave what the copies allocate: on_disk did not walk them again
    assert full["disk_usage"]["on_disk"] == allocated_bytes(store_root)
    store = Store(store_root)
    with store.read():
        for record in ContainerDB(store_root).all():
            alone = changes(store, record, image_chain(store, store.images.get(record.image_id)))
            assert alone.size() == sizes[record.name] == _ordered_size(alone)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def test_btrfs_unchanged_containers_are_known_without_a_walk(make_fs, busybox_tar):
    """btrfs: a container whose subvolume is still its base's snapshot (reads, which set
    atimes, included) is size 0 from the tree search, and allocates what its base does;
    every other edit is found changed and walked. Each size and ``on_disk`` is the one
    the walk gives (each container alone, and ``allocated_bytes`` of the whole store)."""
    root = os.path.join(make_fs("btrfs").mountpoint, "store")
    storage_driver({"data_root": root, "driver": "btrfs"})
    layer_import({"data_root": root, "src": busybox_tar, "tag": ["base:1"]})
    passwd = b"root:x:0:0:changed:/root:/bin/sh\n"
    edits = {
        "same": lambda top: None,
        "read": lambda top: [open(os.path.join(d, f), "rb").read() for d, _s, fs in
                             os.walk(top) for f in fs if os.path.isfile(os.path.join(d, f))],
        "added": lambda top: _write(os.path.join(top, "tmp", "new-file"), b"x" * 5000),
        "modified": lambda top: _write(os.path.join(top, "etc", "passwd"), passwd),
        "chmod": lambda top: os.chmod(os.path.join(top, "etc", "passwd"), 0o600),
        "xattr": lambda top: os.setxattr(os.path.join(top, "etc", "passwd"), "user.k", b"v"),
        "deleted": lambda top: os.unlink(os.path.join(top, "etc", "group")),
        "renamed": lambda top: os.rename(os.path.join(top, "etc", "group"),
                                         os.path.join(top, "etc", "group2")),
    }
    for name in edits:
        container_layer({"data_root": root, "name": name, "image": "base:1"})
    store = Store(root)
    with store.read():
        for record in ContainerDB(root).all():  # written directly: nothing is mounted
            edits[record.name](store.driver.container_root(record.id))
    full = store_info({"data_root": root})
    sizes = {c["name"]: c["size"] for c in full["containers"]}
    assert sizes["same"] == sizes["read"] == sizes["deleted"] == 0
    assert sizes["added"] == 5000 and sizes["modified"] == len(passwd) and sizes["renamed"] > 0
    with store.read():
        check = store.driver.snapshot_check()
        for record in ContainerDB(root).all():
            chain = image_chain(store, store.images.get(record.image_id))
            alone = changes(store, record, chain)
            assert alone.size() == sizes[record.name] == _ordered_size(alone), record.name
            known = check.unchanged(store.driver.container_root(record.id),
                                    store.driver.diff_base(chain, record.id))
            assert known == (record.name in ("same", "read")), record.name
            if record.name == "read":  # the reads did change its tree: the search ran
                info = subvolume_info(store.driver.container_root(record.id))
                assert info.generation > info.otransid
    assert full["disk_usage"]["on_disk"] == allocated_bytes(root)


def _ordered_size(diff) -> int:
    """The size as the tar's walk counts it (sorted, pre-order): ``size()`` must agree."""
    emitter = _Emitter(diff.root)
    for _chunk in diff._changes(emitter, count_only=True):
        pass
    return emitter.size


def test_on_disk_takes_each_walked_container_once(store_root, busybox_tar, tmp_path):
    """vfs: ``on_disk`` counts a walked container as its size walk saw it: a file with a
    second link inside it once, one also linked from outside it or from another copy
    once in all, and a container with something mounted below it walked again (the
    mount left out)."""
    storage_driver({"data_root": store_root, "driver": "vfs"})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["base:1"]})
    for name in ("linked", "mounted", "sharing"):
        container_layer({"data_root": store_root, "name": name, "image": "base:1"})
    store = Store(store_root)
    with store.read():
        roots = {r.name: store.driver.container_root(r.id) for r in ContainerDB(store_root).all()}
    data = os.path.join(roots["linked"], "tmp", "data")
    _write(data, b"d" * 70000)
    os.link(data, os.path.join(roots["linked"], "tmp", "again"))
    os.link(data, os.path.join(store_root, "outside"))
    os.link(data, os.path.join(roots["sharing"], "tmp", "data"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write(str(elsewhere / "big"), b"b" * 90000)
    target = os.path.join(roots["mounted"], "mount-point")
    os.mkdir(target)
    subprocess.run(["mount", "--bind", str(elsewhere), target], check=True)
    try:
        full = store_info({"data_root": store_root})
        sizes = {c["name"]: c["size"] for c in full["containers"]}
        # the walk sees the mount's file; each copy counts the shared file as its own
        assert sizes == {"linked": 70000, "mounted": 90000, "sharing": 70000}
        assert full["disk_usage"]["on_disk"] == allocated_bytes(store_root)
    finally:
        subprocess.run(["umount", target], check=True)


def _init_store(store_root, busybox_tar, names, entries=None):
    storage_driver({"data_root": store_root, "driver": "vfs"})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["base:1"]})
    store = Store(store_root)
    with store.write("test"):
        image = store.images.get(store.images.resolve("base:1"))
        for name in names:
            create(store, name, image, init=list(entries or INIT_ENTRIES))
    with store.read():
        records = {r.name: r for r in ContainerDB(store_root).all()}
        roots = {n: store.driver.container_root(r.id) for n, r in records.items()}
        inits = {n: store.driver.init_dir(r.id) for n, r in records.items()}
        assert all(store.driver.has_init(r.id) for r in records.values())
    return store, records, roots, inits


def test_on_disk_takes_each_init_layer_as_counted_when_it_was_made(store_root, busybox_tar):
    """vfs: containers as the ``container`` module makes them each compare with their own
    init layer; ``on_disk`` takes the init layer's allocated bytes recorded when it was
    made (``init_usage``) instead of walking it, while its root is the one they were
    counted on; an init layer changed since (another inode or ctime) is walked. Sizes and
    ``on_disk`` are the walks' figures."""
    store, records, roots, inits = _init_store(store_root, busybox_tar,
                                               ("same", "added", "removed"))
    for name, record in records.items():
        assert record.init_usage["bytes"] == allocated_bytes(inits[name]), name
    _write(os.path.join(roots["added"], "tmp", "new-file"), b"x" * 5000)
    subprocess.run(["rm", "-rf", os.path.join(roots["removed"], "etc")], check=True)
    full = store_info({"data_root": store_root})
    sizes = {c["name"]: c["size"] for c in full["containers"]}
    assert sizes["same"] == 0 and sizes["added"] == 5000 and sizes["removed"] == 0
    assert full["disk_usage"]["on_disk"] == allocated_bytes(store_root)
    with store.read():
        sizing = Sizing(store)
        container_facts(store, sizing=sizing)
        assert sorted(sizing.inits) == sorted(os.path.realpath(p) for p in inits.values())
        assert sizing.on_disk(store) == allocated_bytes(store_root)
    _write(os.path.join(inits["same"], "grown"), b"g" * 9000)  # a new ctime: walked again
    with store.read():
        sizing = Sizing(store)
        container_facts(store, sizing=sizing)
        assert os.path.realpath(inits["same"]) not in sizing.inits
        assert sizing.on_disk(store) == allocated_bytes(store_root)


EDITS = {
    "same": lambda top: None,
    "hosts": lambda top: _write(os.path.join(top, "etc", "hosts"), b"10.0.0.1 db\n"),
    "etc-file": lambda top: _write(os.path.join(top, "etc", "new.conf"), b"n" * 3000),
    "dev-entry": lambda top: _write(os.path.join(top, "dev", "pts", "x"), b"p" * 100),
    "proc-gone": lambda top: os.rmdir(os.path.join(top, "proc")),
    "etc-xattr": lambda top: os.setxattr(os.path.join(top, "etc"), "user.k", b"v"),
    "deep": lambda top: _write(os.path.join(top, "bin", "extra"), b"e" * 7000),
    "chmod-bin": lambda top: os.chmod(os.path.join(top, "bin"), 0o700),
    "workdir": lambda top: _write(os.path.join(top, "srv", "app", "f"), b"w" * 200),
}


def test_an_init_layer_read_mostly_from_the_image_gives_the_sizes_of_a_whole_read(
        store_root, busybox_tar):
    """``InitBase`` (the init entries' directories from the init layer, every other one
    from the image's top layer) finds exactly what a whole read of the init layer finds,
    for changes inside and outside the init entries' directories (a working directory
    among them)."""
    entries = list(INIT_ENTRIES) + ["srv/app/"]
    store, records, roots, _inits = _init_store(store_root, busybox_tar, EDITS, entries)
    for name, edit in EDITS.items():
        edit(roots[name])
    with store.read():
        shared = Sizing(store)
        for name, record in records.items():
            chain = image_chain(store, store.images.get(record.image_id))
            whole = changes(store, record, chain).size()  # its own BaseTree of the init layer
            assert shared.size(store, record, chain) == whole, name
    sizes = {c["name"]: c["size"] for c in store_info({"data_root": store_root})["containers"]}
    assert sizes["same"] == 0 and sizes["deep"] == 7000 and sizes["etc-file"] == 3000
    assert sizes["workdir"] == 200 and sizes["hosts"] == len(b"10.0.0.1 db\n")
