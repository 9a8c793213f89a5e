"""Switching drivers without losing anything: every ordered pair of the drivers this
machine runs (all four run on btrfs), with containers holding changes; image ids,
diff ids and every container's files compared before and after; kill -9 mid-way."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import Busy, InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from tests.support.paths import python_env
from tests.support.tars import LayerTar, write

DRIVERS = ["overlay2", "vfs", "btrfs", "fuse-overlayfs"]
PAIRS = list(itertools.permutations(DRIVERS, 2))


def tree(root: str) -> dict:
    """Everything a user could observe of a root filesystem (overlay internals aside)."""
    out = {}
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(base, name)
            st = os.lstat(path)
            entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
            if not stat.S_ISDIR(st.st_mode):
                entry.append(st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    entry += [st.st_size, hashlib.sha256(handle.read()).hexdigest()]
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            out[os.path.relpath(path, root)] = entry
    return out


def build(root: str, tmp_path, busybox_tar) -> None:
    layer_import({"data_root": root, "src": busybox_tar, "tag": ["bb:1"]})
    child = LayerTar().dir("srv", mode=0o750, uid=33, gid=33).file(
        "srv/index.html", b"<h1>hi</h1>", uid=33, gid=33).whiteout("etc/os-release").dir(
        "etc").opaque("root").bytes()
    layer_import({"data_root": root, "src": write(tmp_path / "child.tar", child),
                  "parent": "bb:1", "tag": ["web:1"]})
    for name in ("c1", "c2"):
        c = container_layer({"data_root": root, "name": name, "image": "web:1",
                             "state": "mounted"})
        m = c["mount_point"]
        with open(os.path.join(m, "etc/passwd"), "a") as handle:
            handle.write("%s:x:1000:1000::/:/bin/sh\n" % name)
        os.unlink(os.path.join(m, "bin/cat"))
        os.makedirs(os.path.join(m, "var/lib/app"))
        with open(os.path.join(m, "var/lib/app/state"), "wb") as handle:
            handle.write(os.urandom(3000))
        os.chown(os.path.join(m, "var/lib/app/state"), 1000, 1000)
        os.symlink("/var/lib/app/state", os.path.join(m, "state-link"))
        os.link(os.path.join(m, "var/lib/app/state"), os.path.join(m, "var/lib/app/hard"))
        os.chmod(os.path.join(m, "srv"), 0o700)
        container_layer({"data_root": root, "name": name, "state": "unmounted"})


def observe(root: str) -> dict:
    info = store_info({"data_root": root})
    seen = {"images": sorted((i["id"], tuple(i["layers"]), tuple(i["tags"]))
                             for i in info["images"]),
            "layers": sorted((l["chain_id"], l["diff_id"], l["size"]) for l in info["layers"]),
            "containers": {}}
    for c in info["containers"]:
        m = container_layer({"data_root": root, "name": c["name"], "image": c["image_id"],
                             "state": "mounted"})["mount_point"]
        try:
            seen["containers"][c["name"]] = (c["id"], c["size"], tree(m))
        finally:
            container_layer({"data_root": root, "name": c["name"], "state": "unmounted"})
    return seen


@pytest.fixture
def btrfs_root(make_fs):
    return os.path.join(make_fs("btrfs", 700).mountpoint, "store")


@pytest.mark.parametrize("source,target", PAIRS, ids=["%s-to-%s" % p for p in PAIRS])
def test_migration_keeps_every_image_layer_and_container_file(btrfs_root, tmp_path,
                                                              busybox_tar, source, target):
    root = btrfs_root
    assert storage_driver({"data_root": root, "driver": source})["driver"] == source
    build(root, tmp_path, busybox_tar)
    before = observe(root)
    with pytest.raises(InvalidInput, match="migrate"):
        storage_driver({"data_root": root, "driver": target})
    plan = storage_driver({"data_root": root, "driver": target, "migrate": True},
                          check_mode=True)
    assert plan["changed"] and plan["migrated"]["layers"] == 2
    assert store_info({"data_root": root})["driver"] == source
    done = storage_driver({"data_root": root, "driver": target, "migrate": True})
    assert done["driver"] == target and done["previous_driver"] == source
    assert done["migrated"]["layers"] == 2 and done["migrated"]["containers"] == 2
    assert not os.path.exists(os.path.join(root, source))
    after = observe(root)
    assert after == before
    again = storage_driver({"data_root": root, "driver": target, "migrate": True})
    assert not again["changed"]


def test_keep_previous_makes_switching_back_instant(btrfs_root, tmp_path, busybox_tar):
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "overlay2"})
    build(root, tmp_path, busybox_tar)
    before = observe(root)
    out = storage_driver({"data_root": root, "driver": "btrfs", "migrate": True,
                          "keep_previous": True})
    assert os.path.isdir(os.path.join(root, "overlay2"))
    kept = storage_driver({"data_root": root, "driver": "btrfs", "keep_previous": True})
    assert not kept["changed"] and os.path.isdir(os.path.join(root, "overlay2"))
    back = storage_driver({"data_root": root, "driver": "overlay2", "migrate": True})
    assert back["migrated"]["layers"] == 0 and back["migrated"]["reused_layers"] == 2
    assert back["migrated"]["containers"] == 2
    assert not os.path.exists(os.path.join(root, "btrfs"))
    assert observe(root) == before
    assert out["migrated"]["layers"] == 2


def test_mounted_containers_block_a_migration(btrfs_root, tmp_path, busybox_tar):
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "overlay2"})
    build(root, tmp_path, busybox_tar)
    container_layer({"data_root": root, "name": "c1", "image": "web:1", "state": "mounted"})
    with pytest.raises(Busy, match="c1"):
        storage_driver({"data_root": root, "driver": "vfs", "migrate": True})
    assert store_info({"data_root": root})["driver"] == "overlay2"
    container_layer({"data_root": root, "name": "c1", "state": "unmounted"})


def migrate_in_subprocess(root: str, target: str, crash_at: str, skip: int = 0):
    env = python_env()
    env.update(STRATA_CRASH_AT=crash_at, STRATA_CRASH_SKIP=str(skip))
    code = ("import json, sys\n"
            "from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import "
            "storage_driver\n"
            "print(json.dumps(storage_driver({'data_root': %r, 'driver': %r, "
            "'migrate': True})))\n" % (root, target))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("crash_at,skip", [("migrate.layer", 0), ("migrate.container", 1),
                                           ("migrate.materialized", 0), ("migrate.switched", 0),
                                           ("migrate.previous-parked", 0)])
def test_kill_9_mid_migration_then_resume(btrfs_root, tmp_path, busybox_tar, crash_at, skip):
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "vfs"})
    build(root, tmp_path, busybox_tar)
    before = observe(root)
    killed = migrate_in_subprocess(root, "btrfs", crash_at, skip)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    switched = crash_at in ("migrate.switched", "migrate.previous-parked")
    expect_driver = "btrfs" if switched else "vfs"
    assert store_info({"data_root": root})["driver"] == expect_driver
    assert observe(root) == before            # the store works, nothing lost
    resumed = storage_driver({"data_root": root, "driver": "btrfs", "migrate": True})
    assert resumed["driver"] == "btrfs"
    if crash_at == "migrate.layer":
        assert resumed["migrated"]["reused_layers"] == 1
    assert observe(root) == before
    assert not os.path.exists(os.path.join(root, "vfs"))
    leftovers = [n for n in os.listdir(os.path.join(root, "btrfs", "layers")) if n.startswith(".tmp")]
    assert leftovers == [] and os.listdir(os.path.join(root, "incomplete")) == []
    assert json.loads(open(os.path.join(root, "store.json")).read())["driver"] == "btrfs"


def parked(root: str) -> list:
    return [n for n in os.listdir(os.path.join(root, "tmp")) if "removed-previous" in n]


def test_the_previous_home_is_parked_then_removed_by_a_detached_process(
        btrfs_root, tmp_path, busybox_tar):
    """keep_previous false: the old home leaves its place at once (renamed into tmp/) and
    a detached process removes it, holding the run's exclusive lock, handed over with no
    gap: the next run (store_check's shared lock, a write) waits for the removal."""
    from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "vfs"})
    build(root, tmp_path, busybox_tar)
    before = observe(root)
    storage_driver({"data_root": root, "driver": "overlay2", "migrate": True})
    assert not os.path.exists(os.path.join(root, "vfs"))
    assert store_check({"data_root": root})["ok"]   # waited for the remover's lock
    assert parked(root) == []
    assert observe(root) == before
    storage_driver({"data_root": root, "driver": "vfs", "migrate": True})
    storage_driver({"data_root": root, "driver": "overlay2", "migrate": True})
    # a write right after waits for the remover's lock as well
    layer_import({"data_root": root, "src": busybox_tar, "tag": ["again:1"]})
    assert parked(root) == [] and not os.path.exists(os.path.join(root, "vfs"))


def test_the_remover_holds_the_runs_lock_until_it_is_done(btrfs_root, tmp_path, busybox_tar):
    """The lock is handed over, not released: once the migration has returned, the
    parked home is gone by the time anyone gets the lock."""
    import fcntl
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "vfs"})
    build(root, tmp_path, busybox_tar)
    storage_driver({"data_root": root, "driver": "overlay2", "migrate": True})
    fd = os.open(os.path.join(root, "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # at once, or when the remover is done
        assert parked(root) == []
    finally:
        os.close(fd)


def largest_file(top: str) -> str:
    sizes = [(os.lstat(os.path.join(b, f)).st_size, os.path.join(b, f))
             for b, _d, fs in os.walk(top) for f in fs
             if stat.S_ISREG(os.lstat(os.path.join(b, f)).st_mode)]
    return max(sizes)[1]


def extents(path: str) -> list:
    """The physical extents of a file (filefrag -v: FIEMAP), as (start, end) blocks."""
    out = subprocess.run(["filefrag", "-v", path], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split(":") for line in out.splitlines() if line.strip()[:1].isdigit()]
    return [tuple(r[2].split("..")) for r in rows if len(r) > 3]


def test_layer_files_move_as_reflink_clones_where_the_filesystem_clones(btrfs_root, tmp_path,
                                                                        busybox_tar):
    """overlay2 -> btrfs on one btrfs filesystem: the new layer's files share their
    extents with the old ones (FICLONE, no data written), and the layer still hashes to
    its diff_id (the migration checks the data read back from the new files)."""
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "overlay2"})
    build(root, tmp_path, busybox_tar)
    before = observe(root)
    storage_driver({"data_root": root, "driver": "btrfs", "migrate": True, "keep_previous": True})
    assert observe(root) == before
    old = largest_file(os.path.join(root, "overlay2", "layers"))  # <hex>/diff/<rel>
    hexdir, rel = os.path.relpath(old, os.path.join(root, "overlay2", "layers")).split(
        "/diff/", 1)
    new = os.path.join(root, "btrfs", "layers", hexdir, rel)
    assert os.path.getsize(old) > 65536 and extents(old) and extents(new) == extents(old)


def test_a_later_run_with_keep_previous_false_drops_the_kept_data(btrfs_root, tmp_path, busybox_tar):
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "vfs"})
    build(root, tmp_path, busybox_tar)
    storage_driver({"data_root": root, "driver": "overlay2", "migrate": True,
                    "keep_previous": True})
    dropped = storage_driver({"data_root": root, "driver": "overlay2", "keep_previous": False})
    assert dropped["changed"] and not os.path.exists(os.path.join(root, "vfs"))
    assert not storage_driver({"data_root": root, "driver": "overlay2",
                               "keep_previous": False})["changed"]


def test_removing_a_container_removes_the_kept_drivers_copy(btrfs_root, tmp_path, busybox_tar):
    """Found by review: after a keep_previous migration, container removal left the old
    driver's copy behind (an orphan store_check reported at once)."""
    from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "overlay2"})
    build(root, tmp_path, busybox_tar)
    storage_driver({"data_root": root, "driver": "vfs", "migrate": True, "keep_previous": True})
    assert os.listdir(os.path.join(root, "overlay2", "containers"))
    for name in ("c1", "c2"):
        container_layer({"data_root": root, "name": name, "state": "absent"})
    assert os.listdir(os.path.join(root, "overlay2", "containers")) == []
    assert store_check({"data_root": root})["ok"]


def test_kept_data_stays_unless_a_run_says_false_and_check_mode_agrees(btrfs_root, tmp_path,
                                                                       busybox_tar):
    """Found by review: any later storage_driver run (keep_previous defaulted to false)
    silently dropped the rollback data, and check mode said it would not."""
    root = btrfs_root
    storage_driver({"data_root": root, "driver": "vfs"})
    build(root, tmp_path, busybox_tar)
    storage_driver({"data_root": root, "driver": "overlay2", "migrate": True,
                    "keep_previous": True})
    unsaid = storage_driver({"data_root": root, "driver": "overlay2", "keep_previous": None})
    assert not unsaid["changed"] and os.path.isdir(os.path.join(root, "vfs"))
    plan = storage_driver({"data_root": root, "driver": "overlay2", "keep_previous": False},
                          check_mode=True)
    assert plan["changed"] and os.path.isdir(os.path.join(root, "vfs"))
    done = storage_driver({"data_root": root, "driver": "overlay2", "keep_previous": False})
    assert done["changed"] and not os.path.exists(os.path.join(root, "vfs"))
