"""Image archives: OCI layouts, and docker-archive / oci-archive written by skopeo."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import Platform, host_platform
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from tests.support.images import config_for, make_oci_layout, skopeo
from tests.support.tars import LayerTar


def layers():
    base = LayerTar().dir("etc").file("etc/os-release", b"ID=test\n").dir("bin").file(
        "bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755).bytes()
    top = LayerTar().dir("app").file("app/hello.sh", b"echo hello\n", mode=0o755).whiteout(
        "bin/tool").bytes()
    return [base, top]


def imp(root, src, **kw):
    return layer_import(dict({"data_root": root, "src": str(src)}, **kw))


def test_oci_layout_imports_once(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    info = make_oci_layout(layout, layers(), ref="acme/app:1.0")
    first = imp(store_root, layout)
    assert first["changed"] and first["image_id"] == info["image_id"]
    assert first["tags"] == ["acme/app:1.0"]
    assert [l["imported"] for l in first["layers"]] == [True, True]
    again = imp(store_root, layout)
    assert not again["changed"] and [l["imported"] for l in again["layers"]] == [False, False]


def _multi_platform_layout(layout, platforms):
    """A layout whose index.json names one nested index of an image per platform
    (``(arch, variant)``); returns each platform's image id."""
    ids = {}
    for arch, variant in platforms:
        ids[(arch, variant)] = make_oci_layout(
            layout, layers(), ref=None, config=config_for(layers(), arch=arch))["image_id"]
    index_path = os.path.join(layout, "index.json")
    with open(index_path) as handle:
        descs = json.load(handle)["manifests"]
    for desc, (arch, variant) in zip(descs, platforms):
        desc["platform"] = dict({"os": "linux", "architecture": arch},
                                **({"variant": variant} if variant else {}))
    nested = json.dumps({"schemaVersion": 2, "manifests": descs}).encode()
    digest = "sha256:" + hashlib.sha256(nested).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as handle:
        handle.write(nested)
    with open(index_path, "w") as handle:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
            "size": len(nested),
            "annotations": {"org.opencontainers.image.ref.name": "acme/multi:1"}}]}, handle)
    return ids


@pytest.mark.skipif(host_platform() != Platform("linux", "amd64"),
                    reason="the index offers the amd64 image as this host's")
def test_a_multi_platform_layout_imports_this_hosts_image(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    ids = _multi_platform_layout(layout, [("arm64", "v8"), ("amd64", None), ("arm", "v7")])
    assert imp(store_root, layout)["image_id"] == ids[("amd64", None)]


def test_the_only_image_of_a_nested_index_is_imported_whatever_its_platform(
        tmp_path, store_root):
    layout = str(tmp_path / "layout")
    ids = _multi_platform_layout(layout, [("s390x", None)])
    assert imp(store_root, layout)["image_id"] == ids[("s390x", None)]


def test_a_multi_platform_layout_without_this_hosts_image_names_what_it_offers(
        tmp_path, store_root):
    layout = str(tmp_path / "layout")
    _multi_platform_layout(layout, [("s390x", None), ("riscv64", None)])
    with pytest.raises(NotFound, match="offers no image for platform %s .it offers: "
                       "linux/riscv64, linux/s390x.$" % host_platform()):
        imp(store_root, layout)


def test_oci_layout_with_a_tampered_blob_keeps_nothing(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    info = make_oci_layout(layout, layers(), ref="acme/app:1.0")
    blob = os.path.join(layout, "blobs", "sha256", info["layers"][1]["digest"][7:])
    import gzip
    with open(blob, "wb") as handle:
        handle.write(gzip.compress(LayerTar().file("evil", b"x").bytes()))
    with pytest.raises(DigestMismatch):
        imp(store_root, layout)
    store = Store(store_root)
    assert store.images.ids() == []
    # the failed run leaves the store as it was: the verified first layer goes too, and
    # as it was this store's first run, no store is left at all
    assert store.layers.chains() == []
    assert not os.path.exists(store_root)


def test_oci_layout_missing_blob_is_named(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    info = make_oci_layout(layout, layers())
    os.unlink(os.path.join(layout, "blobs", "sha256", info["config"][7:]))
    with pytest.raises(NotFound, match=info["config"][7:]):
        imp(store_root, layout)


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_archives_written_by_skopeo(tmp_path, store_root, transport):
    layout = str(tmp_path / "layout")
    info = make_oci_layout(layout, layers(), ref="v1")
    archive = str(tmp_path / "image.tar")
    dest = "%s:%s:acme/app:1.0" % (transport, archive) if transport == "docker-archive" \
        else "%s:%s:acme/app:1.0" % (transport, archive)
    skopeo("copy", "oci:%s:v1" % layout, dest)
    result = imp(store_root, archive)
    assert result["changed"]
    assert result["image_id"] == info["image_id"]
    assert [l["diff_id"] for l in result["layers"]] == json.loads(
        config_for(layers()))["rootfs"]["diff_ids"]
    assert not imp(store_root, archive)["changed"]


def test_docker_archive_with_symlinked_duplicate_layers(tmp_path, store_root):
    """Older docker save writes a repeated layer once and symlinks the others."""
    data = LayerTar().file("same", b"1").bytes()
    config = config_for([data, data])
    root = tmp_path / "arch"
    (root / "aaa").mkdir(parents=True)
    (root / "bbb").mkdir()
    (root / "aaa" / "layer.tar").write_bytes(data)
    os.symlink("../aaa/layer.tar", root / "bbb" / "layer.tar")
    import hashlib
    cfg = hashlib.sha256(config).hexdigest() + ".json"
    (root / cfg).write_bytes(config)
    (root / "manifest.json").write_text(json.dumps(
        [{"Config": cfg, "RepoTags": ["dup:1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]))
    archive = str(tmp_path / "dup.tar")
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(root)):
            tar.add(str(root / name), arcname=name)
    result = imp(store_root, archive)
    assert result["tags"] == ["dup:1"]
    assert len(result["layers"]) == 2


def test_archive_layer_count_mismatch_is_corrupt(tmp_path, store_root):
    data = LayerTar().file("f", b"1").bytes()
    root = tmp_path / "arch"
    root.mkdir()
    (root / "l.tar").write_bytes(data)
    (root / "c.json").write_bytes(config_for([data, data]))
    (root / "manifest.json").write_text(json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]))
    archive = str(tmp_path / "bad.tar")
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(root)):
            tar.add(str(root / name), arcname=name)
    with pytest.raises(Corrupt, match="diff_ids"):
        imp(store_root, archive)


def test_compressed_docker_archive(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, layers(), ref="v1")
    archive = str(tmp_path / "image.tar")
    skopeo("copy", "oci:%s:v1" % layout, "docker-archive:%s:acme/app:2" % archive)
    import gzip
    with open(archive, "rb") as src, gzip.open(archive + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    result = imp(store_root, archive + ".gz")
    assert result["tags"] == ["acme/app:2"] and result["changed"]
    assert os.listdir(os.path.join(store_root, "tmp")) == []
