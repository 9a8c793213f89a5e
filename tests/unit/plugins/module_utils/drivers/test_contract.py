"""The driver contract: every storage driver passes these, on real filesystems.

Layers with whiteouts and opaque directories, containers mounted for real, copy-up
observed through the mount, sizes as docker ps -s shows them, a container's changes
read back as a layer tar, byte-identical re-emission, crash debris swept; then every
public member of ``Driver`` called directly (staging and committing, removing layers and
paths, container ids and init layers, an empty root, a busy unmount, ``diff_base``), and
a test that fails when a public member no contract test calls is added.
"""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils._changes import chunk_reader
from ansible_collections.strata.layers.plugins.module_utils._compression import DecodedStream
from ansible_collections.strata.layers.plugins.module_utils._digest import chain_ids
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount_at
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    derive_config, parse_config)
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


# ---------------------------------------------------------------------- the Driver API itself
# The tests above reach the driver through the store; these call every public member of
# ``Driver`` directly, on every driver and filesystem (``test_every_public_driver_member_
# is_called_by_a_contract_test`` holds that list complete).

def fake_chain(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def put_layer(driver, name: str, parent=None, depth: int = 1) -> str:
    """A committed layer ``name`` on ``parent`` holding the file ``<name>.txt``."""
    staged = driver.stage_layer(driver.staging_key(), parent, depth)
    with open(os.path.join(staged.path, name + ".txt"), "w") as handle:
        handle.write(name)
    chain = fake_chain(name)
    driver.commit_layer(staged, chain)
    return chain


def mounted(driver, cid, chain, target):
    os.makedirs(target, exist_ok=True)
    driver.mount(cid, chain, target)
    return target


def write_through_mount(driver, cid, chain, target, name):
    """A file ``name`` written into container ``cid`` through its mount, then unmounted."""
    mounted(driver, cid, chain, target)
    try:
        with open(os.path.join(target, name), "w") as handle:
            handle.write("w")
    finally:
        driver.unmount(target)


def test_probe_accepts_the_filesystem_the_store_runs_on_and_leaves_nothing(store):
    from ansible_collections.strata.layers.plugins.module_utils._probe import DRIVERS, host_facts
    driver = store.driver
    assert DRIVERS[driver.name] is type(driver)
    assert os.path.basename(driver.home) == driver.name
    assert driver.whiteouts in ("device", "delete")
    scratch = os.path.join(os.path.dirname(store.root), "probe")
    os.mkdir(scratch)
    candidate = type(driver).probe(host_facts(store.root, probe_dir=scratch))
    assert (candidate.name, candidate.usable) == (driver.name, True), candidate.reason
    assert candidate.reason and os.listdir(scratch) == []


def test_init_is_idempotent_and_exists_tells_a_home_from_none(store, tmp_path):
    driver = store.driver
    assert driver.exists()
    with store.write("t"):
        chain = put_layer(driver, "kept")
        driver.init()   # again: keeps what is there
        assert driver.layer_hexes() == [chain[len("sha256:"):]]
    elsewhere = type(driver)(str(tmp_path / "no-store"))
    assert not elsewhere.exists()
    assert elsewhere.layer_hexes() == [] and elsewhere.container_ids() == []


def test_a_staged_layer_is_invisible_until_committed(store):
    driver = store.driver
    chain = fake_chain("base")
    with store.write("t"):
        key = driver.staging_key()
        staged = driver.stage_layer(key, None, 1)
        assert (staged.key, staged.top) == (key, driver.staging_dir(key))
        assert staged.path == staged.top or staged.path.startswith(staged.top + "/")
        with open(os.path.join(staged.path, "base.txt"), "w") as handle:
            handle.write("base")
        assert driver.layer_hexes() == [] and not driver.has_layer(chain)
        assert driver.leftovers() == [staged.top]
        driver.commit_layer(staged, chain)
        assert driver.has_layer(chain) and driver.leftovers() == []
        assert driver.layer_hexes() == [chain[len("sha256:"):]]
        layers = os.path.join(driver.home, driver.layers_dir)
        assert os.path.dirname(driver.layer_dir(chain)) == layers
        assert open(os.path.join(driver.layer_files(chain), "base.txt")).read() == "base"


def test_remove_layer_and_remove_path_leave_nothing_behind(store, tmp_path):
    driver = store.driver
    with store.write("t"):
        base = put_layer(driver, "base")
        child = put_layer(driver, "child", base, 2)
        staged = driver.stage_layer(driver.staging_key(), child, 3)
        driver.remove_path(staged.top)
        assert not os.path.lexists(staged.top) and driver.leftovers() == []
        driver.remove_layer(child)
        assert not driver.has_layer(child) and not os.path.lexists(driver.layer_dir(child))
        assert driver.layer_hexes() == [base[len("sha256:"):]]
        assert driver.sweep() == []   # no link or staging name of the removed layer left
        driver.create_container("c1", [base])   # the parent still serves containers
        target = mounted(driver, "c1", [base], str(tmp_path / "m"))
    try:
        assert sorted(os.listdir(target)) == ["base.txt"]
    finally:
        driver.unmount(target)
    with store.write("t"):
        driver.remove_container("c1")
        driver.remove_layer(base)
        assert driver.layer_hexes() == [] and driver.sweep() == []
        driver.remove_layer(base)   # recovery may remove again what is gone: no error
        driver.remove_path(staged.top)


def test_container_ids_init_layers_and_sweep(store):
    driver = store.driver
    with store.write("t"):
        chain = [put_layer(driver, "base")]
        driver.create_container("plain", chain)
        driver.create_container("inited", chain, init=lambda root: os.mkdir(
            os.path.join(root, "proc"), 0o755))
        debris = os.path.join(driver.home, driver.containers_dir, ".tmp-container-x")
        os.mkdir(debris)
        assert driver.container_ids() == ["inited", "plain"]
        assert driver.container_exists("plain") and not driver.container_exists("other")
        assert os.path.dirname(driver.container_dir("plain")) == os.path.join(
            driver.home, driver.containers_dir)
        assert not driver.has_init("plain") and driver.has_init("inited")
        assert os.path.isdir(driver.init_dir("inited"))
        assert os.path.isdir(driver.container_root("plain"))
        assert driver.leftovers() == [debris]
        assert driver.sweep() == [debris] and driver.leftovers() == []
        locked = os.path.join(driver.container_root("inited"), "locked")
        os.mkdir(locked)
        open(os.path.join(locked, "file"), "w").close()
        os.chmod(locked, 0o500)   # what a container may leave: removed all the same
        driver.remove_container("inited")
        assert not driver.container_exists("inited") and not driver.has_init("inited")
        assert not os.path.lexists(driver.init_dir("inited"))
        assert driver.container_ids() == ["plain"]
        driver.remove_container("inited")   # again: nothing to do


def test_a_container_on_no_layer_starts_from_an_empty_root(store, tmp_path):
    driver = store.driver
    with store.write("t"):
        driver.create_container("bare", [])
        driver.create_container("inited", [], init=lambda root: os.mkdir(
            os.path.join(root, "proc"), 0o755))
        bare = mounted(driver, "bare", [], str(tmp_path / "bare"))
        inited = mounted(driver, "inited", [], str(tmp_path / "inited"))
    try:
        assert os.listdir(bare) == [] and os.listdir(inited) == ["proc"]
        assert os.stat(bare).st_mode & 0o777 == 0o755
    finally:
        driver.unmount(bare)
        driver.unmount(inited)


def test_mount_unmount_and_a_busy_unmount(store, tmp_path):
    import signal
    import subprocess
    from ansible_collections.strata.layers.plugins.module_utils._errors import Busy
    driver = store.driver
    with store.write("t"):
        chain = [put_layer(driver, "base")]
        driver.create_container("c1", chain)
        target = mounted(driver, "c1", chain, str(tmp_path / "m"))
    user = subprocess.Popen(["sleep", "600"], cwd=target)
    try:
        assert driver.is_mounted(target)
        with pytest.raises(Busy, match="in use by %d " % user.pid) as err:
            driver.unmount(target)
        assert "%d (sleep)" % user.pid in err.value.details["processes"]
        assert driver.is_mounted(target)   # refused, not lazily detached
    finally:
        os.kill(user.pid, signal.SIGKILL)
        user.wait()
    driver.unmount(target)
    assert not driver.is_mounted(target) and mount_at(target) is None
    driver.unmount(target)   # not mounted: nothing to do
    assert not driver.is_mounted(str(tmp_path / "nowhere"))
    driver.unmount(str(tmp_path / "nowhere"))


def test_diff_base_is_what_a_containers_changes_are_read_against(store, tmp_path):
    from ansible_collections.strata.layers.plugins.module_utils._containers import changes_in
    driver = store.driver
    with store.write("t"):
        base = put_layer(driver, "base")
        chain = [base, put_layer(driver, "child", base, 2)]
        driver.create_container("plain", chain)
        driver.create_container("inited", chain, init=lambda root: os.mkdir(
            os.path.join(root, "proc"), 0o755))
        write_through_mount(driver, "inited", chain, str(tmp_path / "m"), "written")
    seen = {cid: names_of(changes_in(driver, driver.container_root(cid), chain, cid=cid))
            for cid in ("plain", "inited")}
    assert seen == {"plain": [], "inited": ["written"]}   # the init layer is no change
    if driver.whiteouts == "delete":   # full copies: changes are a walk against diff_base
        assert driver.diff_base(chain, "inited") == driver.init_dir("inited")
        assert driver.diff_base(chain, "plain") == driver.layer_files(chain[-1])
        assert sorted(os.listdir(driver.diff_base(chain))) == ["base.txt", "child.txt"]
        assert driver.diff_base([], None) is None
    else:   # overlay family: the upper directory is the diff; diff_base is never asked
        assert os.listdir(driver.container_root("inited")) == ["written"]


def test_snapshot_check_never_calls_a_changed_container_unchanged(store, tmp_path):
    """``snapshot_check``: None (walk every container) or a test that may call a container
    unchanged only when it is; a written one never is."""
    driver = store.driver
    with store.write("t"):
        chain = [put_layer(driver, "base")]
        driver.create_container("kept", chain)
        driver.create_container("written", chain)
        write_through_mount(driver, "written", chain, str(tmp_path / "m"), "new")
    check = driver.snapshot_check()
    if check is None:   # no shortcut on this driver: store_info walks every container
        assert driver.name != "btrfs"
        return
    base = driver.diff_base(chain, "written")
    assert check.unchanged(driver.container_root("written"), base) is False
    assert check.unchanged(driver.container_root("kept"), driver.diff_base(chain, "kept"))


def names_of(diff) -> list:
    import tarfile
    data = b"".join(diff.tar())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted(m.name for m in tar.getmembers())


def test_max_depth_is_refused_at_staging_with_nothing_left(store):
    from ansible_collections.strata.layers.plugins.module_utils._errors import Unsupported
    driver = store.driver
    if driver.max_depth is None:
        pytest.skip("%s stacks layers without a depth limit" % driver.name)
    with store.write("t"):
        with pytest.raises(Unsupported, match="squash"):
            driver.stage_layer(driver.staging_key(), None, driver.max_depth + 1)
        assert driver.leftovers() == []


# public members of drivers beyond ``Driver``'s, and where they are tested
FAMILY_MEMBERS = {
    "lowerdirs": "every mount of the overlay family (this suite)",
    "check_layout": "tests/unit/plugins/module_utils/test_check.py (l/ links, lower files)",
    "repair_layout": "tests/unit/plugins/module_utils/test_check.py (repair of the layout)",
    "plain_directories": "tests/unit/plugins/module_utils/test_check_subvolumes.py (btrfs)",
    "make_subvolume": "tests/unit/plugins/module_utils/test_check_subvolumes.py (btrfs)",
}


def test_every_public_driver_member_is_called_by_a_contract_test():
    import inspect
    import re
    from ansible_collections.strata.layers.plugins.module_utils._probe import DRIVERS
    from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Driver
    assert {name for name, _fs in SETUPS} == set(DRIVERS), "every driver runs this suite"
    # the tests run on every setup (they take ``store``) and the helpers they call
    runs_everywhere = [f for name, f in sorted(globals().items()) if name.startswith("test_")
                       and "store" in inspect.signature(f).parameters]
    helpers = [put_layer, mounted, write_through_mount]
    sources = "\n".join(inspect.getsource(f) for f in runs_everywhere + helpers)
    public = {name for name in dir(Driver) if not name.startswith("_")}
    missing = sorted(n for n in public if not re.search(r"\.%s\b" % n, sources))
    assert missing == [], "Driver members no contract test calls: %s" % missing
    for cls in DRIVERS.values():
        extra = {n for n in dir(cls) if not n.startswith("_")} - public
        assert extra <= set(FAMILY_MEMBERS), "%s: untested public members %s" % (
            cls.name, sorted(extra - set(FAMILY_MEMBERS)))
