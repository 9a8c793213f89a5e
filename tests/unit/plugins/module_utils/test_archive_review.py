"""Review findings on layer_import's archive and digest handling, one regression test (or
a few) per finding: failed multi-image imports keep nothing, ``digest`` is checked
against ``src`` itself, an archive's own file digest is accepted, compressed archives
work in check mode and clean up after themselves, a layer holding a ``manifest.json``
is a layer, and OCI descriptor sizes are verified."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, NoSpace)
from ansible_collections.strata.layers.plugins.module_utils._ingest import stat_key
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import (
    layer_import)
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from tests.support import ops
from tests.support.images import config_for, make_oci_layout
from tests.support.tars import LayerTar, write


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha(path: str) -> str:
    with open(path, "rb") as handle:
        return sha(handle.read())


def imp(root, src, check=False, **kw):
    return layer_import(dict({"data_root": root, "src": str(src)}, **kw), check_mode=check)


def layer(name: str, data: bytes = b"x") -> bytes:
    return LayerTar().dir(name).file(name + "/file", data).bytes()


def state(root: str) -> dict:
    """What an import may add: images, layers, tags, distribution and source entries,
    and anything left in tmp/."""
    store = Store(root)

    def names(sub):
        path = os.path.join(root, sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    return {"images": sorted(store.images.ids()), "layers": sorted(store.layers.chains()),
            "tags": store.images.tags() if store.exists() else {},
            "distribution": names("distribution"), "sources": names("sources"),
            "tmp": names("tmp")}


def docker_archive(path: str, images, compress: bool = False) -> str:
    """A docker-archive as ``docker save`` (before 25) writes it: ``<hex>.json`` configs,
    ``<hex>/layer.tar`` layers, ``manifest.json`` last; ``images`` is a list of
    (layers, tags)."""
    members = {}
    manifest = []
    for layers, tags in images:
        config = config_for(layers)
        members[hashlib.sha256(config).hexdigest() + ".json"] = config
        names = []
        for data in layers:
            names.append(hashlib.sha256(data).hexdigest() + "/layer.tar")
            members[names[-1]] = data
        manifest.append({"Config": hashlib.sha256(config).hexdigest() + ".json",
                         "RepoTags": tags, "Layers": names})
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def gzip_file(path: str) -> str:
    with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path + ".gz"


def tamper(layout: str, desc: dict) -> None:
    blob = os.path.join(layout, "blobs", "sha256", desc["digest"][7:])
    with open(blob, "wb") as handle:
        handle.write(gzip.compress(LayerTar().file("evil", b"x").bytes()))


# ---------------------------------------------------------------- 1: multi-image rollback
def test_failed_second_image_leaves_nothing_of_the_first(tmp_path, store_root):
    base, one, two, bad = layer("base"), layer("one"), layer("two"), layer("bad")
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [base, one], ref="first:1")
    info = make_oci_layout(layout, [base, two, bad], ref="second:1")
    tamper(layout, info["layers"][2])
    with pytest.raises(DigestMismatch):
        imp(store_root, layout)
    got = state(store_root)
    assert got == dict(got, images=[], layers=[], tags={}, distribution=[], tmp=[])


def test_failed_archive_keeps_what_existed_before(tmp_path, store_root):
    base, one, loose, two, bad = (layer("base"), layer("one"), layer("loose"), layer("two"),
                                  layer("bad"))
    first = str(tmp_path / "first")
    make_oci_layout(first, [base, one], ref="first:1")
    imp(store_root, first, tag=["keep:1"])
    imp(store_root, write(tmp_path / "loose.tar", loose))     # a layer no image uses
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [base, one], ref="first:1")
    info = make_oci_layout(layout, [loose, two, bad], ref="second:1")
    tamper(layout, info["layers"][2])
    ops.settle(store_root)
    before = ops.snapshot(store_root)
    with pytest.raises(DigestMismatch):
        imp(store_root, layout)
    assert ops.snapshot(store_root) == before


# ---------------------------------------------------------------- 2: digest of a stored layer
@pytest.fixture
def stored_layer(tmp_path, store_root):
    data = layer("a", b"first")
    src = write(tmp_path / "a.tar.gz", data, "gzip")
    imp(store_root, src, format="layer")
    return {"diff_id": sha(data), "digest": file_sha(src), "src": src}


@pytest.mark.parametrize("check", [False, True])
@pytest.mark.parametrize("which", ["diff_id", "digest"])
def test_digest_of_a_stored_layer_does_not_vouch_for_another_file(
        tmp_path, store_root, stored_layer, check, which):
    other = write(tmp_path / "other.tar", layer("b", b"second"))
    ops.settle(store_root)
    before = ops.snapshot(store_root)
    with pytest.raises(DigestMismatch, match=str(other)):
        imp(store_root, other, check=check, format="layer", digest=stored_layer[which])
    assert ops.snapshot(store_root) == before


@pytest.mark.parametrize("which", ["diff_id", "digest"])
def test_digest_of_a_stored_layer_with_the_same_file_is_unchanged(
        tmp_path, store_root, stored_layer, which):
    copy = str(tmp_path / "copy.tar.gz")        # another inode: no stat-key cache
    shutil.copyfile(stored_layer["src"], copy)
    planned = imp(store_root, copy, check=True, format="layer", digest=stored_layer[which])
    assert not planned["changed"]
    assert Store(store_root).source_digests(stat_key(copy)) is None   # check mode wrote nothing
    done = imp(store_root, copy, format="layer", digest=stored_layer[which])
    assert not done["changed"]
    assert [l["diff_id"] for l in done["layers"]] == [stored_layer["diff_id"]]
    remembered = Store(store_root).source_digests(stat_key(copy))
    assert remembered["diff_id"] == stored_layer["diff_id"]
    assert remembered["digest"] == stored_layer["digest"]


# ---------------------------------------------------------------- 3: digest of the archive file
@pytest.mark.parametrize("compress", [False, True])
def test_digest_of_the_archive_file_is_accepted(tmp_path, store_root, compress):
    archive = docker_archive(str(tmp_path / "app.tar"), [([layer("a")], ["app:1"])])
    digests = [file_sha(archive)]
    if compress:
        archive = gzip_file(archive)
        digests.append(file_sha(archive))       # what sha256sum app.tar.gz prints
    for digest in digests:
        planned = imp(store_root, archive, check=True, digest=digest)
        assert planned["changed"] and planned["tags"] == ["app:1"]
    assert imp(store_root, archive, digest=digests[-1])["changed"]
    assert not imp(store_root, archive, digest=digests[0])["changed"]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("check", [False, True])
def test_wrong_archive_digest_is_a_digest_mismatch(tmp_path, store_root, compress, check):
    archive = docker_archive(str(tmp_path / "app.tar"), [([layer("a")], ["app:1"])],
                             compress=compress)
    with pytest.raises(DigestMismatch, match=str(archive)):
        imp(store_root, archive, check=check, digest="sha256:" + "0" * 64)
    got = state(store_root)
    assert got == dict(got, images=[], layers=[], tags={}, distribution=[], tmp=[])


def test_wrong_oci_layout_digest_is_a_digest_mismatch(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [layer("a")])
    with pytest.raises(DigestMismatch, match="first image's id"):
        imp(store_root, layout, digest="sha256:" + "0" * 64)
    assert state(store_root)["layers"] == []


# ---------------------------------------------------------------- 4: compressed archives
def test_check_mode_reads_a_compressed_archive_without_writing(tmp_path, store_root):
    archive = docker_archive(str(tmp_path / "app.tar.gz"),
                             [([layer("a"), layer("b")], ["app:1"])], compress=True)
    planned = imp(store_root, archive, check=True)
    assert planned["changed"] and planned["tags"] == ["app:1"]
    assert [l["imported"] for l in planned["layers"]] == [True, True]
    assert not os.path.exists(store_root)
    done = imp(store_root, archive)
    assert done["image_id"] == planned["image_id"]
    ops.settle(store_root)
    before = ops.snapshot(store_root)
    again = imp(store_root, archive, check=True)
    assert not again["changed"] and [l["imported"] for l in again["layers"]] == [False, False]
    assert ops.snapshot(store_root) == before


@pytest.mark.parametrize("fmt", ["auto", "oci-archive"])
def test_a_compressed_oci_archive_in_check_mode_and_for_real(tmp_path, store_root, fmt):
    layout = tmp_path / "layout"
    info = make_oci_layout(str(layout), [layer("a"), layer("b")], ref="acme/app:3")
    archive = str(tmp_path / "app.tar.zst" if shutil.which("zstd") else tmp_path / "app.tgz")
    with tarfile.open(str(tmp_path / "app.tar"), "w") as tar:
        for name in sorted(os.listdir(layout)):
            tar.add(str(layout / name), arcname=name)
    with open(str(tmp_path / "app.tar"), "rb") as handle:
        write(archive, handle.read(), "zstd" if archive.endswith(".zst") else "gzip")
    planned = imp(store_root, archive, check=True, format=fmt)
    assert planned["changed"] and planned["image_id"] == info["image_id"]
    assert not os.path.exists(store_root)
    done = imp(store_root, archive, format=fmt)
    assert done["changed"] and done["tags"] == ["acme/app:3"] and state(store_root)["tmp"] == []
    assert not imp(store_root, archive, check=True, format=fmt)["changed"]


@pytest.mark.parametrize("check", [False, True])
def test_a_broken_compressed_archive_names_src_and_leaves_no_scratch(
        tmp_path, store_root, check):
    data = layer("a")
    root = tmp_path / "arch"
    root.mkdir()
    (root / "l.tar").write_bytes(data)
    (root / "c.json").write_bytes(config_for([data, data]))     # two diff_ids, one layer
    (root / "manifest.json").write_text(json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]))
    archive = str(tmp_path / "bad.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("manifest.json", "c.json", "l.tar"):
            tar.add(str(root / name), arcname=name)
    imp(store_root, write(tmp_path / "other.tar", layer("other")))     # the store exists
    ops.settle(store_root)
    before = ops.snapshot(store_root)
    with pytest.raises(Corrupt) as info:
        imp(store_root, archive, check=check)
    assert archive in info.value.msg and ".tmp-" not in info.value.msg
    assert ops.snapshot(store_root) == before       # no decompressed copy in tmp/


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def test_a_compressed_archive_that_fills_the_disk_is_no_space(tmp_path, make_fs):
    fs = make_fs("ext4", 24)
    root = os.path.join(fs.mountpoint, "store")
    imp(root, write(tmp_path / "small.tar", layer("small")))
    archive = str(tmp_path / "big.tar.gz")
    size = 48 << 20                                 # twice the filesystem, 50 KiB compressed
    with tarfile.open(archive, "w:gz") as tar:
        head = json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(head)
        tar.addfile(info, io.BytesIO(head))
        info = tarfile.TarInfo("l/layer.tar")
        info.size = size
        tar.addfile(info, Zeros(size))
    ops.settle(root)
    before = ops.snapshot(root)
    try:
        with pytest.raises(NoSpace, match="no space left") as info:
            imp(root, archive)
        assert archive in info.value.msg and "nothing was kept" in info.value.msg
        assert ops.snapshot(root) == before
    finally:
        ops.unmount_and_remove(root)


# ---------------------------------------------------------------- 5: a layer with a manifest.json
WEB_MANIFEST = json.dumps({"name": "site", "icons": [], "start_url": "/"}).encode()


@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_a_layer_with_a_web_manifest_json_is_a_layer(tmp_path, store_root, compression):
    data = LayerTar().file("manifest.json", WEB_MANIFEST).file(
        "index.html", b"<html></html>").bytes()
    src = write(tmp_path / "site.tar", data, compression)
    planned = imp(store_root, src, check=True)
    assert planned["changed"] and planned["image_id"] is None
    result = imp(store_root, src)
    assert result["changed"] and result["image_id"] is None
    assert [l["diff_id"] for l in result["layers"]] == [sha(data)]


def test_a_layer_with_oci_names_that_are_not_an_oci_index_is_a_layer(tmp_path, store_root):
    data = LayerTar().file("oci-layout", b"notes\n").file(
        "index.json", b'{"title": "docs"}').bytes()
    result = imp(store_root, write(tmp_path / "docs.tar", data))
    assert result["image_id"] is None and [l["diff_id"] for l in result["layers"]] == [sha(data)]


# ---------------------------------------------------------------- 6: descriptor sizes
@pytest.mark.parametrize("check", [False, True])
def test_a_layer_blob_of_another_size_than_its_descriptor_is_refused(
        tmp_path, store_root, check):
    layout = str(tmp_path / "layout")
    info = make_oci_layout(layout, [layer("a"), layer("b")])
    manifest_path = os.path.join(layout, "blobs", "sha256", info["manifest"][7:])
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    manifest["layers"][1]["size"] += 1
    raw = json.dumps(manifest).encode()
    with open(os.path.join(layout, "blobs", "sha256", hashlib.sha256(raw).hexdigest()),
              "wb") as handle:
        handle.write(raw)
    index_path = os.path.join(layout, "index.json")
    with open(index_path) as handle:
        index = json.load(handle)
    index["manifests"][0].update(digest=sha(raw), size=len(raw))
    with open(index_path, "w") as handle:
        json.dump(index, handle)
    with pytest.raises(DigestMismatch, match=info["layers"][1]["digest"][7:]):
        imp(store_root, layout, check=check)
    got = state(store_root)
    assert got == dict(got, images=[], layers=[], distribution=[], tmp=[])


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_a_manifest_blob_that_is_not_a_json_object_is_corrupt(tmp_path, store_root, body):
    """A blob that matches its digest but is no JSON object: a clear Corrupt naming the
    blob (it used to escape as a bare ValueError or AttributeError)."""
    layout = tmp_path / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / sha(body)[7:]).write_bytes(body)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(body),
        "size": len(body)}]}))
    with pytest.raises(Corrupt, match="manifest %s in .*layout is not" % sha(body)):
        imp(store_root, layout)
