"""Deep directory trees (the applier accepts paths up to 4095 bytes, ~2000 levels):
container sizes, commit, migration and the image view walk them without recursion.

Two parts:

* golden tests: on a shallow but rich tree (directories, files, symlinks, hardlinks,
  devices, whiteouts, opaque and fuse-overlayfs markers, non-UTF-8 names) the walks
  give byte-identical tars and the same sizes as the recursive code they replaced
  (the digests below were taken from that code);
* deep tests: a layer 1500 levels deep imported into overlay2 and vfs stores, a
  container changing files at the bottom and in the middle, then store_info,
  container_commit and a migration to the other driver.
"""
from __future__ import annotations

import functools
import hashlib
import os
import stat
import sys
import types

import pytest

from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree
from ansible_collections.strata.layers.plugins.module_utils._changes import TreeDiff, UpperDiff
from ansible_collections.strata.layers.plugins.module_utils._ops.container_commit import container_commit
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt
from ansible_collections.strata.layers.plugins.module_utils._imageview import ImageView
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._migrate import _same
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from tests.support import loopfs
from tests.support.tars import LayerTar, write

# ---------------------------------------------------------------- a rich shallow tree
T_OLD = 1_600_000_000_123_456_789   # every entry of the base tree
T_NEW = 1_700_000_000_987_654_321   # entries the "container" changed


def _file(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def _dir(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    os.mkdir(path)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def _whiteout(path: str) -> None:
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(0, 0))


def _stamp(root: str, ns: int) -> None:
    """Every mtime (and atime) below ``root`` set to ``ns``, children before parents."""
    for base, dirs, names in os.walk(root, topdown=False):
        for name in names + dirs:
            os.utime(os.path.join(base, name), ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(ns, ns))


def _touch(root: str, *rels: str) -> None:
    for rel in rels:
        os.utime(os.path.join(root, rel), ns=(T_NEW, T_NEW), follow_symlinks=False)


def rich_tree(root: str) -> None:
    """A base image's root: names chosen so bytes order differs from other orders."""
    os.makedirs(root)
    for name in ("B", "a", "a-b", "a.b", "a0", "zz"):
        _dir(os.path.join(root, name))
    _dir(os.path.join(root, "a/deep"), 0o750, 1000, 1000)
    _dir(os.path.join(root, "a/deep/er"))
    _dir(os.path.join(root, "a/deep/er/est"), 0o700, 33, 33)
    _file(os.path.join(root, "a/deep/er/est/leaf"), b"leaf\n", 0o600, 33, 33)
    _file(os.path.join(root, "a/deep/er/sib"), b"s" * 513)
    _file(os.path.join(root, "a/big"), bytes(range(256)) * 40, 0o755)
    _file(os.path.join(root, "a/empty"), b"")
    os.link(os.path.join(root, "a/big"), os.path.join(root, "zz/big-link"))
    os.link(os.path.join(root, "a/big"), os.path.join(root, "B/big-link2"))
    os.symlink("../a/big", os.path.join(root, "zz/rel-link"))
    os.symlink("/etc/passwd", os.path.join(root, "zz/abs-link"))
    _file(os.path.join(root, "a.b/x"), b"x")
    os.setxattr(os.path.join(root, "a.b/x"), "user.note", b"kept")
    os.mkfifo(os.path.join(root, "a0/fifo"), 0o644)
    os.mknod(os.path.join(root, "a0/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    _file(os.path.join(root, b"a-b/\xff\xfename".decode("utf-8", "surrogateescape")), b"raw")
    _dir(os.path.join(root, "a-b/gone-dir"))
    _file(os.path.join(root, "a-b/gone-dir/inner"), b"inner")
    _file(os.path.join(root, "a-b/gone-file"), b"gone")
    _dir(os.path.join(root, "B/empty"))
    for rel in ("a/deep/aaa", "a/deep/aaa/bbb", "a0/dir2file"):
        _dir(os.path.join(root, rel))
    _file(os.path.join(root, "a/deep/aaa/bbb/same"), b"unchanged")
    _file(os.path.join(root, "a0/dir2file/inner"), b"inner")
    _stamp(root, T_OLD)


def upper_tree(root: str) -> None:
    """An overlay upper directory: copy-ups, whiteouts, opaque dirs, fuse markers."""
    rich_tree(root)
    _whiteout(os.path.join(root, "a/deep/er/gone"))
    _whiteout(os.path.join(root, "gone-top"))
    os.setxattr(os.path.join(root, "a-b"), "trusted.overlay.opaque", b"y")
    os.setxattr(os.path.join(root, "a/deep"), "trusted.overlay.origin", b"\0ignored")
    os.setxattr(os.path.join(root, "B"), "user.fuseoverlayfs.opaque", b"y")
    _file(os.path.join(root, "B/.wh..wh..opq"), b"")
    _file(os.path.join(root, "zz/.wh..opq"), b"")
    os.setxattr(os.path.join(root, "zz"), "user.overlay.opaque", b"x")
    _stamp(root, T_OLD)
    _touch(root, "a/deep/er", "a/big")


def changed_tree(root: str) -> None:
    """The base tree after a container changed it (for the walk-and-compare)."""
    rich_tree(root)
    join = functools.partial(os.path.join, root)
    _file(join("a/deep/er/est/new"), b"new in an unchanged dir")
    os.unlink(join("a/deep/er/sib"))
    with open(join("a/big"), "ab") as handle:
        handle.write(b"more")
    os.chmod(join("a.b"), 0o700)
    os.unlink(join("a-b/gone-file"))
    os.unlink(join("a-b/gone-dir/inner"))
    os.rmdir(join("a-b/gone-dir"))
    os.unlink(join("a0/fifo"))
    _dir(join("a0/fifo"))            # a file that became a directory, with content
    _dir(join("a0/fifo/sub"))
    _file(join("a0/fifo/sub/f"), b"f")
    os.link(join("a0/fifo/sub/f"), join("a0/fifo/f-link"))
    _dir(join("new"), 0o711, 5, 5)   # an added tree
    _dir(join("new/d"))
    _file(join("new/d/x"), b"x" * 4096)
    os.symlink("d/x", join("new/l"))
    os.setxattr(join("B/big-link2"), "user.added", b"1")
    os.unlink(join("a0/dir2file/inner"))
    os.rmdir(join("a0/dir2file"))
    _file(join("a0/dir2file"), b"now a file")
    _stamp(root, T_OLD)
    _touch(root, "a/deep/er/est/new", "a/big", "a0/fifo/sub/f", "new/d/x")


def digest(chunks) -> str:
    return hashlib.sha256(b"".join(chunks)).hexdigest()


@pytest.fixture
def trees(tmp_path):
    paths = {name: str(tmp_path / name) for name in ("base", "changed", "upper")}
    rich_tree(paths["base"])
    changed_tree(paths["changed"])
    upper_tree(paths["upper"])
    return paths


def walked(trees) -> dict:
    return {
        "upper": digest(UpperDiff(trees["upper"]).tar()),
        "upper-exact": digest(UpperDiff(trees["upper"], exact_times=True).tar()),
        "upper-size": UpperDiff(trees["upper"]).size(),
        "tree": digest(TreeDiff(trees["base"], trees["changed"]).tar()),
        "tree-exact": digest(TreeDiff(trees["base"], trees["changed"], exact_times=True).tar()),
        "tree-size": TreeDiff(trees["base"], trees["changed"]).size(),
        "tree-same": digest(TreeDiff(trees["base"], trees["base"]).tar()),
        "tree-none": digest(TreeDiff(None, trees["changed"]).tar()),
        "tree-none-size": TreeDiff(None, trees["changed"]).size(),
    }


def image_layers(tmp_path) -> list:
    """Two layers: a base and one with whiteouts and an opaque directory."""
    base = (LayerTar().dir("etc").file("etc/passwd", b"root:x:0:0::/:/bin/sh\n")
            .dir("usr", mode=0o750, uid=7, gid=8).dir("usr/lib").file("usr/lib/a", b"a" * 700)
            .symlink("usr/lib/l", "a").dir("var").dir("var/old").file("var/old/f", b"f")
            .file("a-b", b"ab").file("a.b", b"a.b").hardlink("usr/h", "usr/lib/a").bytes())
    top = (LayerTar().whiteout("a-b").dir("var").opaque("var").dir("var/new")
           .file("var/new/g", b"g").dir("usr", mode=0o750, uid=7, gid=8).dir("usr/lib")
           .file("usr/lib/b", b"b").whiteout("usr/lib/l").fifo("usr/p").bytes())
    return [write(tmp_path / "base.tar", base), write(tmp_path / "top.tar", top)]


def view_walk(root: str, rel: bytes) -> str:
    store = Store(root)
    with store.read():
        chain = [ChainID(c) for c in store.images.get(store.images.resolve("img:top")).chain]
        seen = []
        for path, real, st in ImageView(store.driver, chain).walk(rel):
            seen.append(b"%s %s %o %d %d %d %d" % (
                path, os.path.relpath(real, os.fsencode(root)), st.st_mode, st.st_uid,
                st.st_gid, st.st_size, st.st_mtime_ns if path else 0))  # root: made now
        return hashlib.sha256(b"\n".join(seen)).hexdigest()


def same_outcome(tmp_path) -> list:
    """_same over two copies of a tree, identical, then differing at two places."""
    views = [str(tmp_path / "v0"), str(tmp_path / "v1")]
    for view in views:
        rich_tree(view)
    record = types.SimpleNamespace(name="c")  # a container record: only its name is read
    outcomes = []
    for change in (None, "a/deep/er/est/leaf", "a/deep/aaa/bbb/same"):
        if change:
            os.chmod(os.path.join(views[1], change), 0o640)
        try:
            _same(record, views, b"a", below=True)
            outcomes.append("same")
        except Corrupt as exc:
            outcomes.append(str(exc))
    return outcomes


# Taken from the recursive walks (before they became iterative): any change to the
# entries, their order or their bytes changes these.
GOLDEN_DIFFS = {
    "upper": "178c240f18c1de5b849a088a7a056fac85130963e1f98ac8ab66a7db6b1b401f",
    "upper-exact": "ac28100abf64aa6eb37e61f6eba7bd3fe13436f5a144fb91e937c234a1034362",
    "upper-size": 10804,
    "tree": "807870b7e69cc7c30fcdb9e70e5217f63aa311b8c0ce19a1fd4ed847f39cf08f",
    "tree-exact": "06e99f580e0edf5e3e22cefc5b93f8adba018c5504eaf64fa06a15a12df567b6",
    "tree-size": 14377,
    "tree-same": "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
    "tree-none": "b8dd156cf9d960c0b86f971532688eaf7f456c7a81be70270ee25d58b595ae1f",
    "tree-none-size": 14414,
}
GOLDEN_WALKS = {  # ImageView.walk of b"", b"usr", b"var", b"a.b" (a file), b"none"
    "overlay2": ["3d8464b4671ac320701061f596e6e5957883f2c16c20d9f69de26fe69c42524c",
                 "66e5ea3b657f6eda25cbb67fb76963367b80d4465a4bd4a05255c673588648fc",
                 "5e456adbdb2e26e787aac616dac071473e68d1e4e9028a804c470ee3699f370f",
                 "3f41c396546a81a724c5cb9c00fc1842986a03289ed3e840f35d27fd62a7573e",
                 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    "vfs": ["d60ab2083e9ce63deeeb996e65fa50653d4106876784e9d0bf6588d06265ecf8",
            "5ae53366ebfd3c655bb3c4994881a5b101b4be86bb71fa4e5b77e9ac5585fce5",
            "a33cb84745eeb9663fb53ad0b9e2ac53bd6c88cb822b14fa90de43f36e14d7b8",
            "467c87e8e4c5c8dc133e44e4a26fcbb57c61c477f9e0ff73fdf0cb0d47733468",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
}


def test_diffs_are_byte_identical_to_the_recursive_walks(trees):
    assert walked(trees) == GOLDEN_DIFFS


def test_container_verification_reports_the_first_difference_in_walk_order(tmp_path):
    outcomes = same_outcome(tmp_path)
    assert outcomes[0] == "same"
    assert outcomes[1].startswith("container c: a/deep/er/est/leaf differs")
    # a/deep/aaa comes before a/deep/er: the walk is pre-order, names sorted as bytes
    assert outcomes[2].startswith("container c: a/deep/aaa/bbb/same differs")


@pytest.mark.parametrize("driver", ["overlay2", "vfs"])
def test_image_view_walk_is_unchanged(tmp_path, driver):
    root = str(tmp_path / driver)
    storage_driver({"data_root": root, "driver": driver})
    base, top = image_layers(tmp_path)
    layer_import({"data_root": root, "src": base, "tag": ["img:base"]})
    layer_import({"data_root": root, "src": top, "parent": "img:base", "tag": ["img:top"]})
    walks = [view_walk(root, rel) for rel in (b"", b"usr", b"var", b"a.b", b"none")]
    assert walks == GOLDEN_WALKS[driver]


# ---------------------------------------------------------------- a 1500-level tree
DEPTH = 1500
MIDDLE = 750
OPAQUE_DEPTH = 1200
NEW_DATA = b"written at the bottom\n" * 10


def deep(levels: int) -> str:
    """``deep/d/d/...``: ``levels`` directories, 2 bytes a level (3001 bytes at 1500)."""
    return "/".join(["deep"] + ["d"] * (levels - 1))


def deep_layer(tmp_path) -> str:
    layer = LayerTar()
    for level in range(1, DEPTH + 1):
        layer.dir(deep(level))
    layer.file(deep(MIDDLE) + "/mid", b"middle").file(deep(DEPTH) + "/bottom", b"bottom")
    layer.dir("opq").file("opq/x", b"replaced by the container")
    return write(tmp_path / "deep.tar", layer.bytes())


def mkdirs(top: str, levels: int) -> str:
    """``top/d/d/...`` made one level at a time (os.makedirs recurses per level)."""
    path = top
    for _level in range(levels):
        path = os.path.join(path, "d")
        os.mkdir(path)
    return path


def change_container(mount: str) -> None:
    """A file at the bottom, one deleted in the middle, and a directory of the image
    replaced by a deep new one (opaque in an overlay upper: walked as a whole when a
    migration verifies the container)."""
    with open(os.path.join(mount, deep(DEPTH), "new"), "wb") as handle:
        handle.write(NEW_DATA)
    os.unlink(os.path.join(mount, deep(MIDDLE), "mid"))
    os.unlink(os.path.join(mount, "opq/x"))
    os.rmdir(os.path.join(mount, "opq"))
    os.mkdir(os.path.join(mount, "opq"))
    with open(os.path.join(mkdirs(os.path.join(mount, "opq"), OPAQUE_DEPTH), "y"), "wb") as handle:
        handle.write(b"y")


def assert_changed(mount: str) -> None:
    with open(os.path.join(mount, deep(DEPTH), "new"), "rb") as handle:
        assert handle.read() == NEW_DATA
    assert os.path.exists(os.path.join(mount, deep(DEPTH), "bottom"))
    assert not os.path.exists(os.path.join(mount, deep(MIDDLE), "mid"))
    assert os.listdir(os.path.join(mount, deep(MIDDLE))) == ["d"]
    assert not os.path.exists(os.path.join(mount, "opq/x"))
    assert os.path.isfile(os.path.join(mount, "opq", *["d"] * OPAQUE_DEPTH, "y"))


@pytest.fixture(params=["overlay2", "vfs"])
def deep_store(request, store_root, busybox_tar, tmp_path):
    """A store whose image is 1500 levels deep, with a changed, unmounted container."""
    try:
        storage_driver({"data_root": store_root, "driver": request.param})
        layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["bb:1"]})
        layer_import({"data_root": store_root, "src": deep_layer(tmp_path), "parent": "bb:1",
                      "tag": ["deep:1"]})
        made = container_layer({"data_root": store_root, "name": "c", "image": "deep:1",
                                "state": "mounted"})
        change_container(made["mount_point"])
        container_layer({"data_root": store_root, "name": "c", "state": "unmounted"})
        yield store_root, request.param
    finally:
        # pytest's own clean-up (shutil.rmtree) recurses per level: remove the deep
        # trees here, mounts first
        loopfs.unmount_below(str(tmp_path))
        remove_tree(store_root)


def mounted(root: str, name: str, image: str) -> str:
    return container_layer({"data_root": root, "name": name, "image": image,
                            "state": "mounted"})["mount_point"]


def test_store_info_reports_the_size_of_a_deep_container(deep_store):
    root, _driver = deep_store
    info = store_info({"data_root": root})
    sizes = {c["name"]: c["size"] for c in info["containers"]}
    assert sizes == {"c": len(NEW_DATA) + len(b"y")}
    assert_changed(mounted(root, "c", "deep:1"))


def test_commit_of_a_deep_container_is_seen_by_a_new_container(deep_store):
    root, _driver = deep_store
    out = container_commit({"data_root": root, "name": "c", "tag": ["deep:committed"]})
    assert out["changed"] and len(out["layers"]) == 3
    assert_changed(mounted(root, "c2", "deep:committed"))


def test_migration_carries_a_deep_container(deep_store):
    root, driver = deep_store
    target = "vfs" if driver == "overlay2" else "overlay2"
    before = store_info({"data_root": root})["containers"][0]["size"]
    if driver == "overlay2":  # the verification then walks all of opq/ (opaque)
        store = Store(root)
        upper = store.driver.container_root(store.container_ids()[0])
        assert os.getxattr(os.path.join(upper, "opq"), "trusted.overlay.opaque") == b"y"
    done = storage_driver({"data_root": root, "driver": target, "migrate": True})
    assert done["driver"] == target and done["migrated"]["containers"] == 1
    assert store_info({"data_root": root})["containers"][0]["size"] == before
    assert_changed(mounted(root, "c", "deep:1"))


VIEW_DEPTH = 400  # ImageView looks each path up level by level: its walk costs depth**3


def stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


@pytest.mark.parametrize("driver", ["overlay2", "vfs"])
def test_image_view_walks_a_deep_image(tmp_path, driver):
    """Deeper than the recursion limit lets a recursive walk go (lowered here so the
    tree can stay small enough to walk in a second)."""
    root = str(tmp_path / "store")
    layer = LayerTar()
    for level in range(1, VIEW_DEPTH + 1):
        layer.dir(deep(level))
    layer.file(deep(VIEW_DEPTH // 2) + "/mid", b"m").file(deep(VIEW_DEPTH) + "/bottom", b"b")
    storage_driver({"data_root": root, "driver": driver})
    layer_import({"data_root": root, "src": write(tmp_path / "deep.tar", layer.bytes()),
                  "tag": ["deep:1"]})
    store = Store(root)
    limit = sys.getrecursionlimit()
    try:
        with store.read():
            chain = [ChainID(c) for c in store.images.get(store.images.resolve("deep:1")).chain]
            view = ImageView(store.driver, chain)
            sys.setrecursionlimit(stack_depth() + VIEW_DEPTH // 2)
            paths = [path for path, _real, _st in view.walk(b"deep")]
    finally:
        sys.setrecursionlimit(limit)
        remove_tree(root)
    assert len(paths) == VIEW_DEPTH + 2  # every level, mid and bottom
    assert paths[VIEW_DEPTH // 2] == os.fsencode(deep(VIEW_DEPTH // 2) + "/d")  # d < mid
    assert paths[VIEW_DEPTH - 1] == os.fsencode(deep(VIEW_DEPTH))
    assert paths[VIEW_DEPTH] == os.fsencode(deep(VIEW_DEPTH) + "/bottom")
    assert paths[-1] == os.fsencode(deep(VIEW_DEPTH // 2) + "/mid")


def test_container_verification_walks_deep_trees(tmp_path):
    views = [str(tmp_path / "v0"), str(tmp_path / "v1")]
    try:
        for view in views:
            os.mkdir(view)
            mkdirs(view, DEPTH)
        record = types.SimpleNamespace(name="c")  # a container record: only its name is read
        _same(record, views, b"d", below=True)
        bottom = os.path.join(views[1], *["d"] * DEPTH)
        os.chmod(bottom, 0o700)
        with pytest.raises(Corrupt, match="d/d/d differs"):
            _same(record, views, b"d", below=True)
    finally:
        for view in views:
            remove_tree(view)
