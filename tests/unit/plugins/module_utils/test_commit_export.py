"""container_commit, image_export, image and store_prune against real stores,
with podman and skopeo reading what we export."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.container_commit import container_commit
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import AlreadyExists
from ansible_collections.strata.layers.plugins.module_utils._ops.image_export import image_export
from ansible_collections.strata.layers.plugins.module_utils._ops.image import image
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.store_prune import store_prune
from tests.support.fixtures import busybox_store
from tests.support.images import skopeo
from tests.support.tars import LayerTar, write
from tests.support.podman import private_podman


@pytest.fixture(params=["overlay2", "vfs"])
def root(request, store_root, busybox_tar):
    return busybox_store(store_root, busybox_tar, request.param, tag="bb:1")


def call(op, root, **kw):
    return op(dict({"data_root": root}, **kw))


def test_commit_makes_a_layer_of_the_changes_and_is_idempotent(root, tmp_path):
    c = call(container_layer, root, name="c1", image="bb:1", state="mounted")
    m = c["mount_point"]
    with open(os.path.join(m, "etc/passwd"), "a") as handle:
        handle.write("app:x:1000:1000::/home/app:/bin/sh\n")
    os.unlink(os.path.join(m, "etc/os-release"))
    os.makedirs(os.path.join(m, "opt/app"))
    with open(os.path.join(m, "opt/app/data"), "w") as handle:
        handle.write("data")
    first = call(container_commit, root, name="c1", tag=["bb:committed"], comment="snap")
    assert first["changed"] and len(first["layers"]) == 2
    again = call(container_commit, root, name="c1", tag=["bb:committed"], comment="snap")
    assert not again["changed"] and again["image_id"] == first["image_id"]
    check = container_commit({"data_root": root, "name": "c1", "tag": ["bb:committed"],
                              "comment": "snap"}, check_mode=True)
    assert not check["changed"]
    c2 = call(container_layer, root, name="c2", image="bb:committed", state="mounted")
    m2 = c2["mount_point"]
    assert "app:x:1000" in open(os.path.join(m2, "etc/passwd")).read()
    assert not os.path.exists(os.path.join(m2, "etc/os-release"))
    assert open(os.path.join(m2, "opt/app/data")).read() == "data"
    info = call(store_info, root)
    committed = next(i for i in info["images"] if "bb:committed" in i["tags"])
    assert committed["history"][-1]["comment"] == "snap"
    for name in ("c1", "c2"):
        call(container_layer, root, name=name, state="absent")


def test_export_reimports_to_the_same_ids(root, tmp_path):
    layer = write(tmp_path / "top.tar", LayerTar().dir("app").file("app/x", b"x").whiteout(
        "etc/os-release").bytes())
    child = call(layer_import, root, src=layer, parent="bb:1", tag=["bb:child"])
    for fmt, dest in (("docker-archive", "a.tar"), ("oci-archive", "o.tar"),
                      ("oci-layout", "layout")):
        dest = str(tmp_path / dest)
        out = call(image_export, root, image="bb:child", dest=dest, format=fmt)
        assert out["changed"] and out["layers"] == [l["diff_id"] for l in child["layers"]]
        assert not call(image_export, root, image="bb:child", dest=dest, format=fmt)["changed"]
        fresh = str(tmp_path / ("fresh-" + fmt))
        back = layer_import({"data_root": fresh, "src": dest})
        assert back["image_id"] == child["image_id"]
        assert [l["diff_id"] for l in back["layers"]] == out["layers"]
        assert back["tags"] == ["bb:child"]


def test_exported_archives_load_in_podman_and_skopeo(root, tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    dest = str(tmp_path / "bb.tar")
    out = call(image_export, root, image="bb:1", dest=dest)
    with private_podman(str(tmp_path / "pr")) as pod:
        loaded = subprocess.run(pod + ["load", "-i", dest], check=False, capture_output=True,
                                text=True, timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        inspect = subprocess.run(pod + ["image", "inspect", "bb:1"], check=True,
                                 capture_output=True, text=True, timeout=60)
        data = json.loads(inspect.stdout)[0]
        assert data["RootFS"]["Layers"] == out["layers"]
        assert "sha256:" + data["Id"] == out["image_id"] or data["Id"] == out["image_id"][7:]
    layout = str(tmp_path / "copied")
    skopeo("copy", "docker-archive:" + dest, "oci:" + layout + ":copied")
    copied = layer_import({"data_root": str(tmp_path / "s2"), "src": layout, "tag": ["c:1"]})
    # skopeo rewrites the config when it converts to OCI; the layers stay byte-identical
    assert [l["diff_id"] for l in copied["layers"]] == out["layers"]


def test_image_tags_untags_and_refuses_removing_a_used_image(root):
    out = call(image, root, name="bb:1", tag=["bb:stable", "bb:latest"])
    assert out["changed"] and set(out["tags"]) == {"bb:1", "bb:stable", "bb:latest"}
    assert not call(image, root, name="bb:1", tag=["bb:stable"])["changed"]
    untag = call(image, root, name="bb:stable", state="absent")
    assert untag["removed"]["tags"] == ["bb:stable"] and untag["removed"]["images"] == []
    call(container_layer, root, name="user", image="bb:1")
    assert call(image, root, name="bb:latest", state="absent")["removed"]["images"] == []
    with pytest.raises(AlreadyExists, match="user"):
        call(image, root, name="bb:1", state="absent")
    forced = call(image, root, name="bb:1", state="absent", force=True)
    assert forced["removed"]["containers"] == ["user"]
    assert forced["removed"]["layers"]
    info = call(store_info, root)
    assert info["images"] == [] and info["layers"] == [] and info["containers"] == []
    assert not call(image, root, name="bb:1", state="absent")["changed"]


def test_prune_removes_only_what_nothing_references(root, tmp_path):
    orphan = write(tmp_path / "o.tar", LayerTar().file("orphan", b"o" * 10000).bytes())
    call(layer_import, root, src=orphan)
    kept = write(tmp_path / "k.tar", LayerTar().file("kept", b"k").bytes())
    call(layer_import, root, src=kept, parent="bb:1", tag=["bb:kept"])
    plan = store_prune({"data_root": root}, check_mode=True)
    assert plan["changed"] and len(plan["removed"]["layers"]) == 1 and plan["reclaimed"] > 0
    done = call(store_prune, root)
    assert done["removed"] == plan["removed"] and done["reclaimed"] >= 10000
    assert not call(store_prune, root)["changed"]
    info = call(store_info, root)
    assert len(info["layers"]) == 2 and len(info["images"]) == 2


def test_removing_a_busy_mounted_container_names_the_process_and_keeps_it(root):
    from ansible_collections.strata.layers.plugins.module_utils._errors import Busy
    c = call(container_layer, root, name="busy", image="bb:1", state="mounted")
    with open(os.path.join(c["mount_point"], "root/keep"), "w") as handle:
        handle.write("data")
    sleeper = subprocess.Popen(["sleep", "60"], cwd=c["mount_point"])
    try:
        with pytest.raises(Busy) as info:
            call(container_layer, root, name="busy", state="absent")
        assert str(sleeper.pid) in str(info.value) and "sleep" in str(info.value)
        after = call(container_layer, root, name="busy", image="bb:1", state="mounted")
        assert after["id"] == c["id"] and not after["changed"]
        assert open(os.path.join(after["mount_point"], "root/keep")).read() == "data"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert call(container_layer, root, name="busy", state="absent")["changed"]


def test_removing_an_image_takes_only_its_own_layers(root, tmp_path):
    """Found by review: rmi also removed an unrelated untagged layer kept as a parent."""
    standalone = write(tmp_path / "s.tar", LayerTar().file("standalone", b"s").bytes())
    kept = call(layer_import, root, src=standalone)["layers"][0]["chain_id"]
    app = write(tmp_path / "a.tar", LayerTar().file("app", b"a").bytes())
    call(layer_import, root, src=app, parent="bb:1", tag=["app:1"])
    plan = image({"data_root": root, "name": "app:1", "state": "absent"}, check_mode=True)
    done = call(image, root, name="app:1", state="absent")
    assert done["removed"] == plan["removed"] and len(done["removed"]["layers"]) == 1
    chains = [l["chain_id"] for l in call(store_info, root)["layers"]]
    assert kept in chains and len(chains) == 2   # the standalone layer and bb:1's layer


def test_reclaimable_is_what_prune_would_remove(root, tmp_path):
    """Found by review: store_info's reclaimable disagreed with store_prune's plan."""
    dangling = write(tmp_path / "d.tar", LayerTar().file("d", b"d" * 5000).bytes())
    first = call(layer_import, root, src=dangling, parent="bb:1", tag=["tmp:1"])
    call(image, root, name="tmp:1", tag=["tmp:2"])
    call(image, root, name="tmp:1", state="absent")
    call(image, root, name="tmp:2", state="absent")   # gone, and its layer with it
    orphan = write(tmp_path / "o.tar", LayerTar().file("o", b"o" * 7000).bytes())
    call(layer_import, root, src=orphan)
    info = call(store_info, root)
    plan = store_prune({"data_root": root}, check_mode=True)
    sizes = {l["chain_id"]: l["size"] for l in info["layers"]}
    assert info["disk_usage"]["reclaimable"] == sum(sizes[c] for c in plan["removed"]["layers"])
    assert info["disk_usage"]["reclaimable"] == 7000 and first["changed"]


def test_a_failed_mount_changes_nothing(root, tmp_path):
    """Found by review: the container was created before the busy target was noticed,
    and a mounted container lost its mount before the new target was checked."""
    busy = tmp_path / "busy"
    busy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(busy)], check=True)
    try:
        with pytest.raises(AlreadyExists):
            call(container_layer, root, name="new", image="bb:1", state="mounted",
                 mount_point=str(busy))
        assert call(store_info, root)["containers"] == []
        c = call(container_layer, root, name="c", image="bb:1", state="mounted")
        with pytest.raises(AlreadyExists):
            call(container_layer, root, name="c", image="bb:1", state="mounted",
                 mount_point=str(busy))
        still = call(container_layer, root, name="c", image="bb:1", state="mounted")
        assert not still["changed"] and still["mount_point"] == c["mount_point"]
    finally:
        subprocess.run(["umount", str(busy)], check=False)
        call(container_layer, root, name="c", state="absent")


def test_export_rewrites_a_tampered_destination(root, tmp_path):
    """Found by review: an output whose blobs kept their sizes counted as unchanged."""
    layout = str(tmp_path / "layout")
    out = call(image_export, root, image="bb:1", dest=layout, format="oci-layout")
    blob = os.path.join(layout, "blobs", "sha256", out["layers"][0][7:])
    with open(blob, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"X")
    again = call(image_export, root, image="bb:1", dest=layout, format="oci-layout")
    assert again["changed"]
    import hashlib
    assert "sha256:" + hashlib.sha256(open(blob, "rb").read()).hexdigest() == out["layers"][0]
    assert not call(image_export, root, image="bb:1", dest=layout, format="oci-layout")["changed"]
