"""The store owns only what it made, and nothing it holds is reachable by other users:
a data root that is someone else's directory is refused (unless adopted), nothing
outside the store's own entries is ever removed, a mark or a destination naming a path
outside (or over) the store is refused, the data root's path is trusted only when no
other user can change it, and a mounted container is out of other users' reach."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _trust
from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput)
from ansible_collections.strata.layers.plugins.module_utils._ops.image_export import image_export
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount_at
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree
from tests.support import loopfs
from tests.support.tars import LayerTar, write

NOBODY = 65534


def tree(root: str) -> dict:
    """Every path under ``root`` with its type, mode and content."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            data = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    data = handle.read()
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, data)
    return out


@pytest.fixture
def small_tar(tmp_path):
    return write(tmp_path / "small.tar", LayerTar().file("etc/hello", b"hi\n").bytes())


def imp(root, src, **kw):
    return layer_import(dict({"data_root": root, "src": str(src)}, **kw))


def someone_elses_dir(tmp_path):
    srv = tmp_path / "srv"
    (srv / "tmp").mkdir(parents=True)
    (srv / "tmp" / "keep.txt").write_text("operator's\n")
    (srv / "notes.txt").write_text("mine\n")
    return str(srv)


# ---------------------------------------------------------------------- ownership

def test_a_non_empty_directory_that_is_not_a_store_is_refused_naming_what_is_there(
        tmp_path, small_tar):
    srv = someone_elses_dir(tmp_path)
    before = tree(srv)
    with pytest.raises(InvalidInput, match=r"not a strata store \(it holds notes.txt\).*init: adopt"):
        imp(srv, small_tar, tag=["x:1"])
    assert tree(srv) == before        # not even a lock file


def test_adopt_takes_the_directory_over_and_leaves_its_files_alone(tmp_path, small_tar):
    srv = someone_elses_dir(tmp_path)
    assert imp(srv, small_tar, tag=["x:1"], init="adopt")["changed"]
    # a second run (which sweeps staging debris) needs no adopt and removes nothing foreign
    assert not imp(srv, small_tar, tag=["x:1"])["changed"]
    with open(os.path.join(srv, "tmp", "keep.txt")) as handle:
        assert handle.read() == "operator's\n"
    assert os.path.isfile(os.path.join(srv, "notes.txt"))


def test_the_root_of_a_fresh_filesystem_is_taken_as_empty(tmp_path, small_tar):
    root = tmp_path / "fs"
    (root / "lost+found").mkdir(parents=True)
    assert imp(str(root), small_tar, tag=["x:1"])["changed"]


def test_a_store_nested_in_another_stores_tmp_survives_its_operations(tmp_path, small_tar):
    outer = str(tmp_path / "outer")
    imp(outer, small_tar, tag=["x:1"])
    inner = os.path.join(outer, "tmp", "inner")
    imp(inner, small_tar, tag=["y:1"])
    other = write(tmp_path / "o.tar", LayerTar().file("o", b"o").bytes())
    imp(outer, other, tag=["o:1"])                 # opens the outer store for writing
    store_check({"data_root": outer, "repair": True})
    assert Store(inner).images.tags() == {"y:1": Store(outer).images.tags()["x:1"]}
    assert store_check({"data_root": inner})["ok"]


def test_a_refused_first_import_leaves_no_store_behind(tmp_path, small_tar):
    root = str(tmp_path / "new")
    with pytest.raises(DigestMismatch):
        imp(root, small_tar, digest="sha256:" + "0" * 64)
    assert not os.path.exists(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DigestMismatch):
        imp(str(empty), small_tar, digest="sha256:" + "0" * 64)
    assert os.listdir(empty) == []
    # the next run makes the store as usual
    assert imp(root, small_tar, tag=["x:1"])["changed"]


# ---------------------------------------------------------------------- confinement

def test_marks_naming_paths_outside_the_store_are_rejected_untouched(tmp_path, small_tar):
    root = str(tmp_path / "store")
    imp(root, small_tar)
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "file").write_text("precious\n")
    os.symlink(str(victim), os.path.join(root, "layers", "escape"))
    planted = {
        "up": {"op": "x", "record": None, "if_absent": [[None, "../victim"]], "if_present": []},
        "abs": {"op": "x", "record": None, "if_absent": [[None, str(victim)]], "if_present": []},
        "link": {"op": "x", "record": None, "if_absent": [[None, "layers/escape/sub"]],
                 "if_present": []},
        "driver": {"op": "x", "record": None, "if_absent": [["../../victim", "layers"]],
                   "if_present": []},
    }
    for name, data in planted.items():
        with open(os.path.join(root, "incomplete", name + ".json"), "w") as handle:
            json.dump(data, handle)
    before = tree(str(victim))
    result = store_check({"data_root": root, "repair": True})
    assert tree(str(victim)) == before
    rejected = [r for r in result["repaired"] if r["action"].startswith("rejected")]
    assert sorted(r["object"] for r in rejected) == sorted(n + ".json" for n in planted)
    assert all("not touched" not in r["action"] for r in rejected)
    assert sorted(os.listdir(os.path.join(root, "incomplete"))) == sorted(
        n + ".json.rejected" for n in planted)


def test_removal_outside_the_store_is_refused_whoever_asks(tmp_path, small_tar):
    root = str(tmp_path / "store")
    imp(root, small_tar)
    outside = tmp_path / "outside"
    outside.mkdir()
    store = Store(root)
    with store.write("test"):
        for path in (str(outside), os.path.join(root, "..", "outside"), root):
            with pytest.raises(Corrupt, match="not inside the store"):
                store.remove_path(None, path)
    assert outside.is_dir()


def test_export_dest_inside_the_store_is_refused(tmp_path, small_tar):
    root = str(tmp_path / "store")
    imp(root, small_tar, tag=["x:1"])
    before = tree(root)
    for dest in (os.path.join(root, "tags.json"), os.path.join(root, "images"), root):
        fmt = "oci-layout" if os.path.isdir(dest) else "docker-archive"
        with pytest.raises(InvalidInput, match="dest .* is refused: it (lies inside|is) the store"):
            image_export({"data_root": root, "image": "x:1", "dest": dest, "format": fmt})
    assert tree(root) == before


def test_mount_point_on_inside_or_over_the_store_is_refused(tmp_path, small_tar):
    root = str(tmp_path / "stores" / "one")
    imp(root, small_tar, tag=["x:1"])
    container_layer({"data_root": root, "name": "c1", "image": "x:1"})
    before = tree(root)
    for target, why in ((root, "is the store itself"),
                        (os.path.join(root, "layers", "x"), "lies inside the store"),
                        (os.path.join(root, "mounts", "other"), "lies inside the store"),
                        (str(tmp_path / "stores"), "holds the store"),
                        (str(tmp_path), "holds the store")):
        with pytest.raises(InvalidInput, match="mount_point .* is refused: it " + why):
            container_layer({"data_root": root, "name": "c1", "image": "x:1",
                             "state": "mounted", "mount_point": target})
    assert tree(root) == before


# ---------------------------------------------------------------------- permissions

def test_a_mount_point_outside_the_store_is_nosuid_and_nodev(tmp_path, small_tar):
    root = str(tmp_path / "store")
    imp(root, small_tar, tag=["x:1"])
    target = str(tmp_path / "mnt" / "c1")
    made = container_layer({"data_root": root, "name": "c1", "image": "x:1",
                            "state": "mounted", "mount_point": target})
    assert made["mount_point"] == target
    entry = mount_at(target)
    assert entry is not None
    assert {"nosuid", "nodev"} <= set(entry.options.split(",")), entry.options
    assert os.path.isfile(os.path.join(target, "etc", "hello"))
    container_layer({"data_root": root, "name": "c1", "state": "unmounted"})


def test_the_data_root_and_mounts_are_root_only(tmp_path, small_tar):
    root = str(tmp_path / "store")
    imp(root, small_tar, tag=["x:1"])
    container_layer({"data_root": root, "name": "c1", "image": "x:1", "state": "mounted"})
    for path in (root, os.path.join(root, "mounts"), os.path.join(root, "tmp")):
        assert os.stat(path).st_mode & 0o077 == 0, path
    container_layer({"data_root": root, "name": "c1", "state": "unmounted"})
    os.chmod(root, 0o711)                     # a store made by an earlier release
    os.chmod(os.path.join(root, "mounts"), 0o755)
    imp(root, write(tmp_path / "b.tar", LayerTar().file("b", b"b").bytes()))
    assert os.stat(root).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(root, "mounts")).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("how", ["owner", "group-writable", "world-writable"])
def test_a_data_root_a_user_could_change_is_refused_naming_it(tmp_path, small_tar, how):
    parent = tmp_path / "shared"
    parent.mkdir()
    if how == "owner":
        os.chown(parent, NOBODY, 0)
    elif how == "group-writable":
        os.chown(parent, 0, NOBODY)
        os.chmod(parent, 0o775)
    else:
        os.chmod(parent, 0o777)
    root = str(parent / "store")
    with pytest.raises(InvalidInput, match="data_root %s: %s is" % (root, parent)):
        imp(root, small_tar)
    assert not os.path.exists(root)
    with pytest.raises(InvalidInput, match=str(parent)):
        imp(str(parent), small_tar)   # the root itself too


def test_a_sticky_world_writable_parent_is_accepted(tmp_path, small_tar):
    parent = tmp_path / "sticky"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    assert imp(str(parent / "store"), small_tar, tag=["x:1"])["changed"]
    # but not a store below it that another user owns
    theirs = parent / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(InvalidInput, match="owned by uid %d" % NOBODY):
        imp(str(theirs / "store"), small_tar)


def test_untrusted_steps_are_checked_through_symlinks(tmp_path):
    user_dir = tmp_path / "home"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, NOBODY)
    real = tmp_path / "real"
    real.mkdir()
    link = user_dir / "link"
    os.symlink(str(real), str(link))     # the user can re-point it
    with pytest.raises(InvalidInput, match="owned by uid"):
        _trust.refuse_untrusted(str(link / "store"))


@pytest.fixture
def local_user():
    name = "strata-t%d" % os.getpid()
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def as_user(user, *argv):
    # through a shell, as the user would: setpriv's own exec of the program is not
    # checked the way an unprivileged process's is
    return subprocess.run(["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid,
                           "--clear-groups", "--", "/bin/sh", "-c", '"$@"', "sh"] + list(argv),
                          capture_output=True, text=True, check=False)


@pytest.fixture
def open_dir():
    """A directory every user can reach (pytest's own base is root's alone, which would
    make the test pass for the wrong reason); its mounts are undone at teardown."""
    path = tempfile.mkdtemp(prefix="strata-reach-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        loopfs.unmount_below(path)
        remove_tree(path)


def test_another_local_user_cannot_reach_a_mounted_container(open_dir, busybox_tar, local_user):
    root = os.path.join(open_dir, "store")
    imp(root, busybox_tar, tag=["bb:1"])
    mounted = container_layer({"data_root": root, "name": "c1", "image": "bb:1",
                               "state": "mounted"})
    mount = mounted["mount_point"]
    assert os.path.isfile(os.path.join(mount, "bin", "busybox"))
    assert as_user(local_user, "ls", open_dir).returncode == 0    # the way in is open
    for argv in (["ls", mount], ["cat", os.path.join(mount, "etc", "passwd")],
                 [os.path.join(mount, "bin", "busybox"), "true"], ["ls", root],
                 ["stat", os.path.join(mount, "bin")], ["ls", os.path.join(root, "mounts")]):
        result = as_user(local_user, *argv)
        assert result.returncode != 0 and "Permission denied" in result.stderr, argv
    container_layer({"data_root": root, "name": "c1", "state": "unmounted"})
