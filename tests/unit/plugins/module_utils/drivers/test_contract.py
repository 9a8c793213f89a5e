"""The driver contract: every storage driver passes these, on real filesystems.

Layers with whiteouts and opaque directories, containers mounted for real, copy-up
observed through the mount, sizes as docker ps -s shows them, a container's changes
read back as a layer tar, byte-identical re-emission, crash debris swept.
"""
from __future__ import annotations

import io
import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils._changes import chunk_reader
from ansible_collections.strata.layers.plugins.module_utils._compression import DecodedStream
from ansible_collections.strata.layers.plugins.module_utils._digest import chain_ids
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount_at
from ansible_collections.strata.layers.plugins.module_utils._images import derive_config, parse_config
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import emit
from tests.support.tars import LayerTar

# (driver, filesystem the store sits on; None = the test's tmp_path)
SETUPS = [("overlay2", None), ("overlay2", "xfs"), ("vfs", None), ("vfs", "xfs"),
          ("btrfs", "btrfs"), ("fuse-overlayfs", None), ("fuse-overlayfs", "ext4-nodtype")]


@pytest.fixture(params=SETUPS, ids=lambda p: "%s-on-%s" % (p[0], p[1] or "tmp"))
def store(request, tmp_path, make_fs):
    driver, fs = request.param
    base = make_fs(fs).mountpoint if fs else str(tmp_path)
    st = Store(os.path.join(base, "store"))
    with st.write("test", init=False):
        st.initialize(driver)
    return st


BASE = (LayerTar().dir("etc").file("etc/config", b"original\n").dir("var").dir("var/cache")
        .file("var/cache/a", b"a" * 1000).file("var/cache/b", b"b").dir("bin")
        .file("bin/tool", b"tool").symlink("bin/alias", "tool").bytes())
CHILD = (LayerTar().whiteout("bin/tool").dir("var/cache").opaque("var/cache")
         .file("var/cache/fresh", b"fresh").file("etc/added", b"added").bytes())


def ingest(store, data, parent=None):
    record, imported, _digests = store.ingest_layer(
        lambda: DecodedStream(io.BytesIO(data).read), parent, "test layer")
    return record


def image_of(store, datas, tag):
    parent = None
    base = None
    for data in datas:
        record = ingest(store, data, parent)
        parent = record.chain_id
        raw = derive_config(base, record.diff_id, "2024-01-01T00:00:00Z", "layer")
        base = parse_config(raw, "test")
    image, _added = store.put_image(base, {})
    store.tag(image.id, [tag])
    return image


def test_layers_merge_with_whiteouts_and_opaque_dirs(store, tmp_path):
    with store.write("t"):
        image_of(store, [BASE, CHILD], "img:1")
        c = containers.create(store, "c1", store.images.get(store.images.resolve("img:1")))
        target = str(tmp_path / "m1")
        containers.mount(store, c, target)
    try:
        assert sorted(os.listdir(target)) == ["bin", "etc", "var"]
        assert os.listdir(os.path.join(target, "bin")) == ["alias"]
        assert sorted(os.listdir(os.path.join(target, "var/cache"))) == ["fresh"]
        assert open(os.path.join(target, "etc/added")).read() == "added"
        assert open(os.path.join(target, "etc/config")).read() == "original\n"
    finally:
        with store.write("t"):
            containers.unmount(store, c)
    assert mount_at(target) is None


def test_copy_up_reaches_only_the_containers_layer(store, tmp_path):
    with store.write("t"):
        image = image_of(store, [BASE], "img:1")
        c1 = containers.create(store, "c1", image)
        c2 = containers.create(store, "c2", image)
        m1, m2 = str(tmp_path / "m1"), str(tmp_path / "m2")
        containers.mount(store, c1, m1)
        containers.mount(store, c2, m2)
    try:
        with open(os.path.join(m1, "etc/config"), "a") as handle:
            handle.write("changed\n")
        os.unlink(os.path.join(m1, "var/cache/b"))
        with open(os.path.join(m1, "new"), "wb") as handle:
            handle.write(b"n" * 500)
        assert open(os.path.join(m2, "etc/config")).read() == "original\n"
        assert os.path.exists(os.path.join(m2, "var/cache/b"))
        layer_files = store.driver.layer_files(chain_ids([image.config.diff_ids[0]])[0])
        assert open(os.path.join(layer_files, "etc/config")).read() == "original\n"
        upper = store.driver.container_root(c1.id)
        assert open(os.path.join(upper, "etc/config")).read() == "original\nchanged\n"
        with store.read():
            rows = {r["name"]: r for r in containers.container_facts(store)}
        # docker ps -s: the copied-up file counts whole, deletions count nothing
        assert rows["c1"]["size"] == len("original\nchanged\n") + 500
        assert rows["c2"]["size"] == 0
        assert rows["c1"]["virtual_size"] == rows["c1"]["size"] + rows["c2"]["virtual_size"]
        assert rows["c1"]["mounted"] and rows["c2"]["mounted"]
    finally:
        with store.write("t"):
            containers.unmount(store, c1)
            containers.unmount(store, c2)


def test_container_changes_become_a_layer_with_the_same_view(store, tmp_path):
    with store.write("t"):
        image = image_of(store, [BASE], "img:1")
        c1 = containers.create(store, "c1", image)
        m1 = str(tmp_path / "m1")
        containers.mount(store, c1, m1)
    with open(os.path.join(m1, "etc/config"), "w") as handle:
        handle.write("rewritten\n")
    os.unlink(os.path.join(m1, "bin/tool"))
    os.makedirs(os.path.join(m1, "opt/app"))
    with open(os.path.join(m1, "opt/app/run"), "w") as handle:
        handle.write("run")
    with store.write("t"):
        containers.unmount(store, c1)
        chunks = containers.changes(store, c1, list(image.chain)).tar()
        stream = DecodedStream(chunk_reader(iter(chunks)))
        record, imported, _digests = store.ingest_layer(lambda: stream, image.chain[-1], "commit")
        raw = derive_config(image.config, record.diff_id, "2024-01-02T00:00:00Z", "commit")
        child, _added = store.put_image(parse_config(raw, "t"), {})
        c2 = containers.create(store, "c2", child)
        m2 = str(tmp_path / "m2")
        containers.mount(store, c2, m2)
    try:
        assert open(os.path.join(m2, "etc/config")).read() == "rewritten\n"
        assert not os.path.lexists(os.path.join(m2, "bin/tool"))
        assert os.path.lexists(os.path.join(m2, "bin/alias"))
        assert open(os.path.join(m2, "opt/app/run")).read() == "run"
    finally:
        with store.write("t"):
            containers.unmount(store, c2)


def test_every_layer_reemits_to_its_diff_id(store):
    with store.write("t"):
        image_of(store, [BASE, CHILD], "img:1")
        for record in store.layers.all():
            out = io.BytesIO()
            digest, size = emit(store.layers.split_path(record.chain_id),
                                store.driver.layer_files(record.chain_id), out.write)
            assert digest == record.diff_id and size == record.tar_size


def test_remove_container_removes_its_data_and_mount(store, tmp_path):
    with store.write("t"):
        image = image_of(store, [BASE], "img:1")
        c = containers.create(store, "c1", image)
        containers.mount(store, c, str(tmp_path / "m"))
        containers.remove(store, c)
        assert not os.path.exists(store.driver.container_dir(c.id))
        assert containers.ContainerDB(store.root).ids() == []
    assert mount_at(str(tmp_path / "m")) is None


def test_staging_debris_is_swept_on_next_open(store):
    with store.write("t"):
        key = store.driver.staging_key()
        store.driver.stage_layer(key, None, 1)
        assert store.driver.leftovers()
    with store.write("t"):
        assert store.driver.leftovers() == []


INIT = ["dev/", "dev/pts/", "dev/shm/", "proc/", "sys/", "etc/", "etc/hostname", "etc/hosts",
        "etc/resolv.conf", "srv/app/"]


def test_the_init_layer_lies_between_the_image_and_the_writable_layer(store, tmp_path):
    with store.write("t"):
        image = image_of(store, [BASE], "img:1")
        os.chmod(store.driver.layer_files(image.chain[-1]) + "/etc", 0o750)
        c = containers.create(store, "c1", image, init=INIT)
        target = str(tmp_path / "m1")
        containers.mount(store, c, target)
    try:
        for entry in INIT:
            assert os.path.exists(os.path.join(target, entry)), entry
        assert open(os.path.join(target, "etc/config")).read() == "original\n"
        assert os.stat(os.path.join(target, "etc")).st_mode & 0o777 == 0o750  # the image's
        with store.read():
            row = containers.container_row(store, c)
            names = list(containers.changes(store, c, image.chain).tar())
        assert row["size"] == 0
        assert b"".join(names).strip(b"\0") == b""   # no change at all: the end marker only
    finally:
        with store.write("t"):
            containers.unmount(store, c)
    with store.write("t"):
        containers.remove(store, c)
    assert not store.driver.has_init(c.id) and not store.driver.container_exists(c.id)


def test_a_container_runs_on_runc_and_only_its_writes_are_its_own(store, busybox_tar):
    import shutil
    from ansible_collections.strata.layers.plugins.module_utils._ops.container_commit import container_commit
    from ansible_collections.strata.layers.plugins.module_utils._ops.container import container
    from tests.support import runimage
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    with store.write("t"):
        runimage.make_image(store, open(busybox_tar, "rb").read(), "bb:1",
                            {"Cmd": ["sh"], "WorkingDir": "/srv/app"})
    params = {"data_root": store.root, "name": "r1", "image": "bb:1", "detach": False}
    try:
        quiet = container(dict(params, command=["true"]))
        assert quiet["rc"] == 0 and quiet["size"] == 0
        busy = container(dict(params, name="r2", command=["sh", "-c", "echo x > /tmp/f"]))
        assert busy["rc"] == 0, busy["stderr"]
        assert busy["size"] == 2
        committed = container_commit({"data_root": store.root, "name": "r2", "tag": ["r2:1"]})
        with store.read():
            chain = store.images.get(committed["image_id"]).chain[-1]
            out = io.BytesIO()
            emit(store.layers.split_path(chain), store.driver.layer_files(chain), out.write)
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
            assert sorted(m.name for m in tar.getmembers()) == ["tmp", "tmp/f"]
    finally:
        for name in ("r1", "r2"):
            container({"data_root": store.root, "name": name, "state": "absent", "force": True})
