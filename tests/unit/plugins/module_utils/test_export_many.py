"""image_export of several images: one archive, each shared layer once (as ``docker save a b
c``), read back by layer_import, podman and skopeo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import NotFound
from ansible_collections.strata.layers.plugins.module_utils._ops.image_export import image_export
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from tests.support.registry import image_layout, layer_tar
from tests.support.podman import private_podman


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """A store holding a:1 (two layers), b:1 (a's and one more) and c:1 (a's and another)."""
    work = str(tmp_path_factory.mktemp("many"))
    base = [(layer_tar({"base%d/f" % n: os.urandom(20000)}), "plain") for n in range(2)]
    descs = {
        "a": image_layout(os.path.join(work, "a"), "1", base),
        "b": image_layout(os.path.join(work, "b"), "1",
                          base + [(layer_tar({"b/f": os.urandom(20000)}), "plain")]),
        "c": image_layout(os.path.join(work, "c"), "1",
                          base + [(layer_tar({"c/f": os.urandom(20000)}), "plain")]),
    }
    root = os.path.join(work, "store")
    for name in descs:
        layer_import({"src": os.path.join(work, name), "format": "oci-layout",
                      "tag": ["%s:1" % name], "data_root": root})
    return root, descs, work


def _members(path: str) -> list:
    with tarfile.open(path) as tar:
        return tar.getnames()


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_several_images_share_layers_once(three, tmp_path, fmt):
    root, descs, _work = three
    dest = str(tmp_path / "all.tar")
    result = image_export({"data_root": root, "image": ["a:1", "b:1", "c:1"], "dest": dest,
                           "format": fmt})
    assert result["changed"] is True
    assert result["image_ids"] == [descs[n]["image_id"] for n in "abc"]
    assert result["image_id"] == descs["a"]["image_id"]
    blobs = [m for m in _members(dest) if m.startswith("blobs/sha256/") and len(m) > 13]
    assert len(blobs) == len(set(blobs))
    diff_ids = {d for n in "abc" for d in descs[n]["diff_ids"]}
    assert len(blobs) == len(diff_ids) + 3 + 3        # 4 layers, 3 configs, 3 manifests
    with tarfile.open(dest) as tar:
        index = json.load(tar.extractfile("index.json"))
        assert len(index["manifests"]) == 3
        if fmt == "docker-archive":
            manifest = json.load(tar.extractfile("manifest.json"))
            assert [m["RepoTags"] for m in manifest] == [["a:1"], ["b:1"], ["c:1"]]
    again = image_export({"data_root": root, "image": ["a:1", "b:1", "c:1"], "dest": dest,
                          "format": fmt})
    assert again["changed"] is False
    back = layer_import({"src": dest, "data_root": str(tmp_path / "back")})
    assert back["image_ids"] == result["image_ids"]
    assert sorted(back["tags"]) == ["a:1", "b:1", "c:1"]


def test_one_image_by_two_tags_is_one_entry(three, tmp_path):
    root, descs, _work = three
    layer_import({"src": os.path.join(three[2], "a"), "format": "oci-layout",
                  "tag": ["alias:2"], "data_root": root})
    dest = str(tmp_path / "two.tar")
    result = image_export({"data_root": root, "image": ["a:1", "alias:2"], "dest": dest})
    assert result["image_ids"] == [descs["a"]["image_id"]]
    with tarfile.open(dest) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["a:1", "alias:2"]


def test_a_string_still_names_one_image_and_unknown_ones_fail(three, tmp_path):
    root, descs, _work = three
    result = image_export({"data_root": root, "image": "b:1", "dest": str(tmp_path / "b.tar")})
    assert result["image_ids"] == [descs["b"]["image_id"]]
    with pytest.raises(NotFound):
        image_export({"data_root": root, "image": ["a:1", "nope:1"],
                      "dest": str(tmp_path / "x.tar")})
    assert not os.path.exists(str(tmp_path / "x.tar"))


def test_podman_loads_every_image(three, tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    root, descs, _work = three
    dest = str(tmp_path / "all.tar")
    image_export({"data_root": root, "image": ["a:1", "b:1", "c:1"], "dest": dest})
    with private_podman(str(tmp_path / "pr")) as pod:
        loaded = subprocess.run(pod + ["load", "-i", dest], check=False, capture_output=True,
                                text=True, timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        ids = subprocess.run(pod + ["images", "--no-trunc", "--format", "{{.ID}}"], check=True,
                             capture_output=True, text=True).stdout.split()
        assert sorted(i.replace("sha256:", "") for i in ids) == sorted(
            descs[n]["image_id"][7:] for n in "abc")


def test_omit_layers_leaves_out_what_the_receiver_holds(three, tmp_path):
    root, descs, work = three
    receiver = str(tmp_path / "receiver")
    held = layer_import({"src": os.path.join(work, "a"), "format": "oci-layout",
                         "data_root": receiver})
    chains = [l["chain_id"] for l in held["layers"]]
    dest = str(tmp_path / "b-missing.tar")
    result = image_export({"data_root": root, "image": "b:1", "dest": dest,
                           "format": "oci-archive", "omit_layers": chains + ["sha256:" + "0" * 64]})
    assert result["omitted"] == sorted(chains)
    names = _members(dest)
    for diff_id in descs["a"]["diff_ids"]:
        assert "blobs/sha256/" + diff_id[7:] not in names
    assert "blobs/sha256/" + descs["b"]["diff_ids"][-1][7:] in names
    full = image_export({"data_root": root, "image": "b:1", "dest": str(tmp_path / "full.tar"),
                         "format": "oci-archive"})
    assert result["size"] < full["size"]
    back = layer_import({"src": dest, "data_root": receiver, "tag": ["b:1"]})
    assert back["image_id"] == descs["b"]["image_id"]
    assert [l["imported"] for l in back["layers"]] == [False, False, True]
    with pytest.raises(NotFound):
        layer_import({"src": dest, "data_root": str(tmp_path / "empty")})
    assert not os.path.exists(str(tmp_path / "empty" / "images")) or \
        not os.listdir(str(tmp_path / "empty" / "images"))
