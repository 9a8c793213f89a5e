"""store_check on real stores (overlay2 and vfs): every kind of damage is found naming
what is at fault, repair never deletes a layer and never makes the store worse, and
check mode and plain checks write nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from ansible_collections.strata.layers.plugins.module_utils import _check
from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree
from ansible_collections.strata.layers.plugins.module_utils._check import KINDS
from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from ansible_collections.strata.layers.plugins.modules import store_check as module
from tests.support.paths import python_env
from tests.support.tars import LayerTar, write

HELLO = b"#!/bin/sh\necho hello from the app layer\n"


def snapshot(root: str) -> dict:
    """Every path under the store with what identifies it and its content."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if rel == "lock":
                continue
            stamp = 0 if os.path.isdir(path) else st.st_mtime_ns
            out[rel] = (st.st_mode, st.st_size, stamp, st.st_ctime_ns)
    return out


@pytest.fixture
def app_tar(tmp_path):
    layer = LayerTar().dir("app").file("app/hello.sh", HELLO, mode=0o755) \
        .file("app/data.bin", bytes(range(256)) * 64).bytes()
    return write(tmp_path / "app.tar", layer)


@pytest.fixture(params=["overlay2", "vfs"])
def root(request, store_root, busybox_tar, app_tar):
    """bb:1 (busybox), app:1 (one layer on it) and a container on bb:1."""
    storage_driver({"data_root": store_root, "driver": request.param})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["bb:1"]})
    layer_import({"data_root": store_root, "src": app_tar, "parent": "bb:1", "tag": ["app:1"]})
    container_layer({"data_root": store_root, "name": "c1", "image": "bb:1"})
    return store_root


def check(root, check_mode=False, **kw):
    return store_check(dict({"data_root": root}, **kw), check_mode=check_mode)


def kinds(found):
    return sorted({f["kind"] for f in found})


def image_of(root, tag):
    store = Store(root)
    return store.images.get(store.images.resolve(tag))


def top_layer(root, tag):
    return image_of(root, tag).top


def files_of(root, chain):
    return Store(root).driver.layer_files(chain)


def reimport(root, busybox_tar, app_tar):
    layer_import({"data_root": root, "src": busybox_tar, "tag": ["bb:1"]})
    layer_import({"data_root": root, "src": app_tar, "parent": "bb:1", "tag": ["app:1"]})


def rel(root, path):
    return os.path.relpath(path, root)


def assert_clean(root):
    result = check(root)
    assert result["ok"] and result["findings"] == [], result["findings"]
    return result


# ---------------------------------------------------------------------- clean stores

def test_a_clean_store_is_ok_and_every_layer_was_verified(root):
    store = Store(root)
    before = snapshot(root)
    result = assert_clean(root)
    layers = list(store.layers.all())
    assert result["verified"]["layers"] == len(layers) == 2
    assert result["verified"]["bytes"] == sum(r.tar_size for r in layers)
    assert result["verified"]["images"] == 2 and result["verified"]["containers"] == 1
    assert not result["changed"] and result["repaired"] == []
    again = check(root, repair=True)
    assert again["ok"] and not again["changed"] and again["repaired"] == []
    assert snapshot(root) == before


def test_a_store_that_does_not_exist_is_ok_and_stays_absent(tmp_path):
    where = str(tmp_path / "nothing")
    result = check(where, repair=True)
    assert result["ok"] and not result["changed"]
    assert not os.path.exists(where)


# ---------------------------------------------------------------------- corrupt layers

def test_a_file_changed_in_place_is_found_naming_layer_and_file(root, busybox_tar, app_tar):
    chain = top_layer(root, "app:1")
    path = os.path.join(files_of(root, chain), "app", "hello.sh")
    with open(path, "r+b") as handle:  # same size, other bytes
        handle.write(b"#!/bin/sh\necho HACKED")
    assert os.path.getsize(path) == len(HELLO)
    before = snapshot(root)
    result = check(root)
    assert snapshot(root) == before, "a check without repair wrote to the store"
    assert not result["ok"] and not result["changed"]
    [finding] = result["findings"]
    assert finding["kind"] == "corrupt-layer" and finding["object"] == chain
    assert "app/hello.sh" in finding["detail"] and "quarantine" in finding["detail"]

    fixed = check(root, repair=True)
    assert fixed["changed"]
    moved = [r for r in fixed["repaired"] if r["kind"] == "corrupt-layer"]
    assert [r["object"] for r in moved] == [chain]
    where = os.path.join(root, moved[0]["action"].split("moved to ", 1)[1])
    assert os.path.basename(where).startswith(chain[7:] + "-")
    assert os.path.isfile(os.path.join(where, "record", "layer.json"))
    assert os.path.isdir(os.path.join(where, "data"))
    assert json.load(open(os.path.join(where, "quarantine.json")))["kind"] == "corrupt-layer"
    # the image stays, reports its missing layer and says how to get it back
    assert not fixed["ok"]
    assert [(f["kind"], f["object"]) for f in fixed["remaining"]] == [
        ("missing-image-layer", image_of(root, "app:1").id)]
    assert "re-import" in fixed["remaining"][0]["detail"]
    assert moved[0]["action"].split("moved to ", 1)[1] in fixed["remaining"][0]["detail"]
    info = store_info({"data_root": root})
    assert sorted(t for i in info["images"] for t in i["tags"]) == ["app:1", "bb:1"]

    reimport(root, busybox_tar, app_tar)
    assert_clean(root)
    with open(os.path.join(files_of(root, chain), "app", "hello.sh"), "rb") as handle:
        assert handle.read() == HELLO


def test_a_file_that_changed_size_is_found_and_its_children_wait_for_reimport(
        root, busybox_tar, app_tar):
    base = image_of(root, "bb:1").top
    passwd = os.path.join(files_of(root, base), "etc", "passwd")
    with open(passwd, "a") as handle:
        handle.write("intruder:x:0:0::/:/bin/sh\n")
    result = check(root)
    [finding] = result["findings"]
    assert (finding["kind"], finding["object"]) == ("corrupt-layer", base)
    assert "etc/passwd" in finding["detail"] and "changed on disk" in finding["detail"]

    fixed = check(root, repair=True)
    assert [r["object"] for r in fixed["repaired"] if r["kind"] == "corrupt-layer"] == [base]
    left = {(f["kind"], f["object"]) for f in fixed["remaining"]}
    store = Store(root)
    assert left == {("missing-parent", top_layer(root, "app:1")),
                    ("missing-image-layer", image_of(root, "bb:1").id),
                    ("missing-image-layer", image_of(root, "app:1").id)}
    # the container on the image is reported through its image, not removed
    assert len(store.container_ids()) == 1

    reimport(root, busybox_tar, app_tar)
    assert_clean(root)


def _setuid(path):
    os.chmod(path, 0o4755)


def _chown(path):
    os.chown(path, 1000, 1000)


def _retarget(path):
    os.unlink(path)
    os.symlink("/tmp/evil", path)


def _stray(path):
    with open(os.path.join(os.path.dirname(path), "planted"), "w") as handle:
        handle.write("x")


def _capability(path):
    # cap_setuid+ep (a VFS_CAP_REVISION_2 record)
    os.setxattr(path, "security.capability",
                bytes.fromhex("0100000280000000000000000000000000000000"))


@pytest.mark.parametrize("change, target, said", [
    (_setuid, "bin/busybox", "bin/busybox mode 4755 (header 0755)"),
    (_chown, "etc/passwd", "etc/passwd owner 1000:1000 (header 0:0)"),
    (_retarget, "bin/sh", "bin/sh link target"),
    (_stray, "etc/passwd", "/etc/planted is n"),
    (_capability, "bin/busybox", "bin/busybox file capabilities differ"),
])
def test_changed_metadata_is_found_against_the_header_record(root, busybox_tar, app_tar, change,
                                                             target, said):
    base = top_layer(root, "bb:1")
    change(os.path.join(files_of(root, base), target))
    result = check(root)
    found = {f["object"]: f for f in result["findings"]}
    assert list(found) == [base], result["findings"]     # the child is not blamed
    assert found[base]["kind"] == "corrupt-layer"
    assert said in found[base]["detail"], found[base]["detail"]
    fixed = check(root, repair=True)
    assert [r["object"] for r in fixed["repaired"] if r["kind"] == "corrupt-layer"] == [base]
    reimport(root, busybox_tar, app_tar)
    assert_clean(root)


def test_a_stray_file_in_a_child_layer_is_found(root):
    chain = top_layer(root, "app:1")
    with open(os.path.join(files_of(root, chain), "app", "extra"), "w") as handle:
        handle.write("x")
    [finding] = check(root)["findings"]
    assert finding["object"] == chain and "/app/extra" in finding["detail"]


def test_missing_layer_data_is_moved_aside_and_restored_by_reimport(root, busybox_tar, app_tar):
    chain = top_layer(root, "app:1")
    remove_tree(Store(root).driver.layer_dir(chain))
    result = check(root)
    assert [(f["kind"], f["object"]) for f in result["findings"]
            if f["kind"] != "dangling-link"] == [("missing-layer-data", chain)]
    fixed = check(root, repair=True)
    assert {(f["kind"], f["object"]) for f in fixed["remaining"]} == {
        ("missing-image-layer", image_of(root, "app:1").id)}
    assert not Store(root).layers.exists(chain)
    reimport(root, busybox_tar, app_tar)
    assert_clean(root)


# ---------------------------------------------------------------------- orphans, leftovers

def test_orphan_driver_dirs_and_leftovers_are_found_and_removed(root):
    driver = Store(root).driver
    orphan = os.path.join(driver.home, driver.layers_dir, "ab" * 32)
    os.makedirs(os.path.join(orphan, "diff", "etc"))
    leftover = os.path.join(driver.home, driver.layers_dir, ".tmp-x")
    os.makedirs(os.path.join(leftover, "sub"))
    ghost = driver.container_dir("cd" * 32)
    os.makedirs(ghost)
    os.makedirs(os.path.join(root, "tmp", ".tmp-staged-layer"))
    with open(os.path.join(root, "images", ".tmp-image.json-1"), "w") as handle:
        handle.write("{")
    with open(os.path.join(root, "distribution", "not-a-digest"), "w") as handle:
        handle.write("sha256:nope\n")
    result = check(root)
    found = {(f["kind"], f["object"]) for f in result["findings"]}
    assert found == {("orphan-layer-data", rel(root, orphan)), ("leftover", rel(root, leftover)),
                     ("orphan-container-data", rel(root, ghost)),
                     ("leftover", "tmp/.tmp-staged-layer"),
                     ("leftover", "images/.tmp-image.json-1"),
                     ("bad-cache-entry", "distribution/not-a-digest")}
    fixed = check(root, repair=True)
    assert fixed["ok"], fixed["remaining"]
    done = {(r["kind"], r["object"]) for r in fixed["repaired"]}
    assert found <= done, found - done
    for path in (orphan, leftover, ghost):
        assert not os.path.lexists(path)
    assert_clean(root)


def test_an_orphan_under_a_kept_previous_driver_is_found_a_recorded_one_is_not(root):
    store = Store(root)
    other = store.driver_named("vfs" if store.driver_name == "overlay2" else "overlay2")
    other.init()
    chain = top_layer(root, "app:1")
    os.makedirs(other.layer_dir(chain))  # a kept copy of a recorded layer: fine
    stray = other.layer_dir("sha256:" + "ef" * 32)
    os.makedirs(stray)
    result = check(root)
    assert [(f["kind"], f["object"]) for f in result["findings"]] == [
        ("orphan-layer-data", os.path.relpath(stray, root))]
    check(root, repair=True)
    assert os.path.isdir(other.layer_dir(chain)) and not os.path.exists(stray)


# ---------------------------------------------------------------------- references

def test_a_dangling_tag_is_found_and_removed_leaving_the_others(root):
    tags_path = os.path.join(root, "tags.json")
    tags = json.load(open(tags_path))
    tags["ghost:1"] = "sha256:" + "0" * 64
    tags["Bad Tag"] = tags["bb:1"]
    with open(tags_path, "w") as handle:
        json.dump(tags, handle)
    result = check(root)
    assert {(f["kind"], f["object"]) for f in result["findings"]} == {
        ("dangling-tag", "ghost:1"), ("dangling-tag", "Bad Tag")}
    fixed = check(root, repair=True)
    assert fixed["ok"]
    assert sorted(json.load(open(tags_path))) == ["app:1", "bb:1"]


def test_damaged_records_are_quarantined_and_their_tags_follow(root):
    app = image_of(root, "app:1").id
    config = os.path.join(Store(root).images.path(app), "config.json")
    with open(config, "ab") as handle:
        handle.write(b" ")
    cid = Store(root).container_ids()[0]
    with open(os.path.join(root, "containers", cid, "container.json"), "w") as handle:
        handle.write("{not json")
    result = check(root)
    assert {(f["kind"], f["object"]) for f in result["findings"]} == {
        ("corrupt-config", app), ("bad-container-record", "containers/" + cid)}
    fixed = check(root, repair=True)
    assert fixed["ok"], fixed["remaining"]
    actions = {(r["kind"], r["object"]): r["action"] for r in fixed["repaired"]}
    assert actions[("dangling-tag", "app:1")] == "removed the tag"
    moved = os.path.join(root, actions[("corrupt-config", app)].split("moved to ", 1)[1])
    assert json.load(open(os.path.join(moved, "quarantine.json")))["tags"] == ["app:1"]
    where = actions[("bad-container-record", "containers/" + cid)].split("moved to ", 1)[1]
    assert os.path.isdir(os.path.join(root, where, "data"))
    assert os.path.isdir(os.path.join(root, where, "record"))
    # the app layer is still there: nothing but the image record was moved
    assert len(list(Store(root).layers.all())) == 2


def test_a_bad_layer_record_is_moved_aside_a_container_without_data_is_kept(root):
    store = Store(root)
    top = top_layer(root, "app:1")
    with open(os.path.join(store.layers.path(top), "layer.json"), "w") as handle:
        handle.write('{"chain_id": "sha256:%s"}' % ("0" * 64))
    cid = store.container_ids()[0]
    remove_tree(store.driver.container_dir(cid))
    result = check(root)
    assert {(f["kind"], f["object"]) for f in result["findings"]} == {
        ("bad-layer-record", top), ("missing-container-data", cid),
        ("missing-image-layer", image_of(root, "app:1").id)}
    [image] = [f for f in result["findings"] if f["kind"] == "missing-image-layer"]
    assert "record is damaged" in image["detail"]
    fixed = check(root, repair=True)
    assert {(f["kind"], f["object"]) for f in fixed["remaining"]} == {
        ("missing-image-layer", image_of(root, "app:1").id), ("missing-container-data", cid)}
    assert store.container_ids() == [cid], "repair removed a container"
    assert not store.driver.has_layer(top) and not os.path.exists(store.layers.path(top))


def test_a_damaged_header_record_is_found_by_verification_and_moved_aside(root):
    store = Store(root)
    top = top_layer(root, "app:1")
    split = store.layers.split_path(top)
    with open(split, "r+b") as handle:
        handle.truncate(os.path.getsize(split) // 2)
    [finding] = check(root)["findings"]
    assert (finding["kind"], finding["object"]) == ("bad-layer-record", top)
    assert "tar-split.gz" in finding["detail"]
    fixed = check(root, repair=True)
    assert [(r["kind"], r["object"]) for r in fixed["repaired"]][:1] == [("bad-layer-record", top)]
    assert not store.layers.exists(top)


def test_unreadable_tags_json_is_moved_aside(root):
    with open(os.path.join(root, "tags.json"), "w") as handle:
        handle.write("{\"bb:1\": ")
    assert kinds(check(root)["findings"]) == ["corrupt-tags"]
    fixed = check(root, repair=True)
    assert fixed["ok"]
    assert not os.path.exists(os.path.join(root, "tags.json"))


# ---------------------------------------------------------------------- overlay2 links

def test_overlay2_links_are_found_and_re_made_then_a_container_mounts(root, tmp_path):
    store = Store(root)
    if store.driver_name != "overlay2":
        pytest.skip("l/ links are overlay2's")
    from ansible_collections.strata.layers.plugins.module_utils.drivers.overlay2 import link_name
    driver = store.driver
    top = top_layer(root, "app:1")
    link = os.path.join(driver.home, "l", link_name(top))
    lower = os.path.join(driver.layer_dir(top), "lower")
    expected_lower = open(lower).read()
    os.unlink(link)
    os.unlink(lower)
    os.symlink("../layers/%s/diff" % ("12" * 32), os.path.join(driver.home, "l", "NOWHERE"))
    result = check(root)
    assert {(f["kind"], f["object"]) for f in result["findings"]} == {
        ("missing-link", rel(root, link)), ("missing-link", rel(root, lower)),
        ("dangling-link", "overlay2/l/NOWHERE")}
    fixed = check(root, repair=True)
    assert fixed["ok"], fixed["remaining"]
    assert os.readlink(link) == "../layers/%s/diff" % top[7:]
    assert open(lower).read() == expected_lower
    assert not os.path.lexists(os.path.join(driver.home, "l", "NOWHERE"))
    mounted = container_layer({"data_root": root, "name": "c2", "image": "app:1",
                               "state": "mounted", "mount_point": str(tmp_path / "m")})
    try:
        with open(os.path.join(mounted["mount_point"], "app", "hello.sh"), "rb") as handle:
            assert handle.read() == HELLO
    finally:
        container_layer({"data_root": root, "name": "c2", "state": "absent"})
    assert_clean(root)


# ---------------------------------------------------------------------- crashes

def test_a_crash_mark_is_reported_read_only_and_settled_by_repair(root, tmp_path):
    layer = write(tmp_path / "crash.tar", LayerTar().file("crashed", b"x" * 5000).bytes())
    code = ("import sys; from ansible_collections.strata.layers.plugins.module_utils._ops."
            "layer_import import layer_import; "
            "layer_import({'data_root': sys.argv[1], 'src': sys.argv[2]})")
    env = dict(python_env(), STRATA_CRASH_AT="import.committed")
    proc = subprocess.run([sys.executable, "-c", code, root, layer], env=env, check=False,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr
    before = snapshot(root)
    result = check(root)
    assert snapshot(root) == before, "a check without repair wrote to the store"
    found = kinds(result["findings"])
    assert "incomplete" in found and "orphan-layer-data" in found and "leftover" in found
    [mark] = [f for f in result["findings"] if f["kind"] == "incomplete"]
    assert mark["object"].startswith("incomplete/import-layer")

    fixed = check(root, repair=True)
    assert fixed["ok"], fixed["remaining"]
    assert [r["action"].split(" (")[0] for r in fixed["repaired"]
            if r["kind"] == "incomplete"] == ["rolled back"]
    assert Store(root).marks.pending() == []
    assert_clean(root)


# ---------------------------------------------------------------------- check mode

def test_check_mode_with_repair_writes_nothing_and_says_what_it_would_do(root):
    store = Store(root)
    chain = top_layer(root, "app:1")
    with open(os.path.join(files_of(root, chain), "app", "data.bin"), "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xfe")
    os.makedirs(os.path.join(store.driver.home, store.driver.layers_dir, "ab" * 32))
    tags = json.load(open(os.path.join(root, "tags.json")))
    tags["ghost:1"] = "sha256:" + "0" * 64
    with open(os.path.join(root, "tags.json"), "w") as handle:
        json.dump(tags, handle)
    before = snapshot(root)
    plan = check(root, check_mode=True, repair=True)
    assert snapshot(root) == before
    assert plan["changed"] and not plan["ok"]
    planned = {(r["kind"], r["action"].split(" ")[0]) for r in plan["repaired"]}
    assert {("corrupt-layer", "would"), ("orphan-layer-data", "would"),
            ("dangling-tag", "would")} <= planned
    assert plan["remaining"] == plan["findings"]


def test_the_module_documents_every_finding_kind():
    doc = yaml.safe_load(module.DOCUMENTATION)
    text = " ".join(doc["description"])
    assert [k for k in KINDS if "C(%s)" % k not in text] == []
    assert set(_check.PLANS) >= set(_check._FIX_ORDER)
