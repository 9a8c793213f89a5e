"""Review findings on OCI-layout import and export (fifth review): descriptors of a
layout's blobs closed with their streams, no reads or writes through symlinks inside a
layout, tags in the "unchanged" decision, an existing index.json refused rather than
dropped, and modes of what an export writes."""
from __future__ import annotations

import json
import os
import resource

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput)
from ansible_collections.strata.layers.plugins.module_utils._ops.image_export import (
    image_export)
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import (
    layer_import)
from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import (
    store_check)
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from tests.support.images import make_oci_layout
from tests.support.tars import LayerTar


def imp(root, src, check=False, **kw):
    return layer_import(dict({"data_root": root, "src": str(src)}, **kw), check_mode=check)


def state(root: str) -> dict:
    store = Store(root)
    if not store.exists():
        return {}
    return {"images": sorted(store.images.ids()), "layers": sorted(store.layers.chains()),
            "tags": store.images.tags()}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FileLimit:
    """RLIMIT_NOFILE's soft limit lowered to ``spare`` descriptors above those open now,
    restored on leaving."""

    def __init__(self, spare: int) -> None:
        self.spare = spare
        self.saved = resource.getrlimit(resource.RLIMIT_NOFILE)

    def __enter__(self) -> int:
        limit = open_fds() + self.spare
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, self.saved[1]))
        return limit

    def __exit__(self, *exc) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, self.saved)


def many_layer_layout(path: str, images: int, layers: int) -> None:
    for number in range(images):
        make_oci_layout(path, [LayerTar().file("f%d_%d" % (number, layer), b"%d" % layer)
                               .bytes() for layer in range(layers)],
                        ref="img%d" % number, compress=False)


# ---------------------------------------------------------------- finding 1: descriptors
def test_a_layout_with_more_layers_than_the_file_limit_imports(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    many_layer_layout(layout, 12, 6)            # 72 layers, the limit 48 above what is open
    with FileLimit(48):
        result = imp(store_root, layout)
    assert len(result["image_ids"]) == 12
    assert len(state(store_root)["layers"]) == 72


def test_a_layout_failing_late_under_the_file_limit_is_undone(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    many_layer_layout(layout, 12, 6)
    with open(os.path.join(layout, "index.json")) as handle:
        last = json.load(handle)["manifests"][-1]["digest"].split(":")[1]
    with open(os.path.join(layout, "blobs", "sha256", last)) as handle:
        manifest = json.load(handle)
    blob = os.path.join(layout, "blobs", "sha256", manifest["layers"][-1]["digest"][7:])
    with open(blob, "r+b") as handle:       # the last layer of the last image is damaged
        handle.seek(600)
        handle.write(b"tampered")
    make_oci_layout(str(tmp_path / "kept"), [LayerTar().file("kept", b"k").bytes()])
    imp(store_root, str(tmp_path / "kept"))
    before = state(store_root)
    with FileLimit(48):
        with pytest.raises(DigestMismatch) as caught:
            imp(store_root, layout)
    assert "undoing" not in str(caught.value)
    assert state(store_root) == before


# ------------------------------------------------- finding 2: symlinked layout directories
@pytest.mark.parametrize("linked", ["blobs", "blobs/sha256"])
def test_a_layout_directory_linked_outside_the_layout_is_refused(tmp_path, store_root, linked):
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [LayerTar().file("a", b"a").bytes()])
    outside = str(tmp_path / "outside")
    os.rename(os.path.join(layout, linked), outside)
    os.symlink(outside, os.path.join(layout, linked))
    with pytest.raises(InvalidInput) as caught:
        imp(store_root, layout)
    assert "%s is a symlink" % linked in str(caught.value)
    assert layout in str(caught.value)
    assert state(store_root) in ({}, {"images": [], "layers": [], "tags": {}})


def test_a_layout_named_through_a_symlink_imports(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [LayerTar().file("a", b"a").bytes()])
    os.symlink(layout, str(tmp_path / "named"))
    assert imp(store_root, str(tmp_path / "named"))["changed"]


# ---------------------------------------------- finding 3: symlinks already in an export dest
def export(root, dest, image="ex/a:1", check=False, fmt="oci-layout"):
    return image_export({"data_root": root, "image": image, "dest": str(dest),
                         "format": fmt}, check_mode=check)


@pytest.fixture
def tagged(tmp_path, store_root):
    """A store holding one image tagged ex/a:1 and ex/a:2."""
    layout = str(tmp_path / "source")
    make_oci_layout(layout, [LayerTar().file("a", b"a").bytes()])
    imp(store_root, layout, tag=["ex/a:1", "ex/a:2"])
    return store_root


def tree(path: str) -> dict:
    found = {}
    for top, dirs, names in os.walk(path):
        for name in dirs + names:
            full = os.path.join(top, name)
            found[os.path.relpath(full, path)] = (
                os.readlink(full) if os.path.islink(full) else
                None if os.path.isdir(full) else open(full, "rb").read())
    return found


def test_an_export_never_writes_through_a_symlinked_blobs(tmp_path, tagged):
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    os.symlink(str(elsewhere), str(dest / "blobs"))
    for check in (True, False):
        with pytest.raises(InvalidInput) as caught:
            export(tagged, dest, check=check)
        assert "%s is a symlink" % (dest / "blobs") in str(caught.value)
    assert not os.listdir(str(elsewhere))


def test_an_export_never_writes_into_the_store_through_blobs(tmp_path, tagged):
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(os.path.join(tagged, "layers"), str(dest / "blobs"))
    before = tree(os.path.join(tagged, "layers"))
    with pytest.raises(InvalidInput):
        export(tagged, dest)
    assert tree(os.path.join(tagged, "layers")) == before
    assert not store_check({"data_root": tagged})["findings"]


def test_a_symlinked_blobs_sha256_is_refused(tmp_path, tagged):
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    (dest / "blobs").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(str(elsewhere), str(dest / "blobs" / "sha256"))
    with pytest.raises(InvalidInput) as caught:
        export(tagged, dest)
    assert "blobs/sha256 is a symlink" in str(caught.value)
    assert not os.listdir(str(elsewhere))


def test_a_symlinked_blob_is_not_present_and_is_replaced(tmp_path, tagged):
    dest = tmp_path / "dest"
    export(tagged, dest)
    blobs = dest / "blobs" / "sha256"
    name = sorted(os.listdir(str(blobs)))[0]
    outside = tmp_path / "outside"
    os.rename(str(blobs / name), str(outside))      # the same bytes, but outside dest
    os.symlink(str(outside), str(blobs / name))
    assert export(tagged, dest, check=True)["changed"]
    assert export(tagged, dest)["changed"]
    assert not os.path.islink(str(blobs / name))
    assert export(tagged, dest)["changed"] is False
    os.unlink(str(blobs / name))                    # a link to a file it would overwrite
    outside.write_bytes(b"keep")
    os.symlink(str(outside), str(blobs / name))
    assert export(tagged, dest)["changed"]
    assert outside.read_bytes() == b"keep"
    assert not os.path.islink(str(blobs / name))


# ------------------------------------------------ finding 4: tags in the "unchanged" decision
def names_in(dest) -> dict:
    with open(os.path.join(str(dest), "index.json")) as handle:
        return {(m.get("annotations") or {}).get("org.opencontainers.image.ref.name"):
                m["digest"] for m in json.load(handle)["manifests"]}


def test_a_second_tag_of_the_same_image_is_a_change(tmp_path, tagged):
    dest = tmp_path / "dest"
    assert export(tagged, dest, "ex/a:1")["changed"]
    assert export(tagged, dest, "ex/a:2", check=True)["changed"]
    assert export(tagged, dest, "ex/a:2")["changed"]
    names = names_in(dest)
    assert set(names) == {"ex/a:1", "ex/a:2"} and len(set(names.values())) == 1
    assert export(tagged, dest, "ex/a:2")["changed"] is False
    assert export(tagged, dest, ["ex/a:1", "ex/a:2"])["changed"] is False


def test_a_tag_naming_another_manifest_is_a_change(tmp_path, tagged):
    dest = tmp_path / "dest"
    export(tagged, dest, ["ex/a:1", "ex/a:2"])
    with open(str(dest / "index.json")) as handle:
        index = json.load(handle)
    index["manifests"][0]["digest"] = "sha256:" + "ab" * 32
    (dest / "index.json").write_text(json.dumps(index))
    assert export(tagged, dest, ["ex/a:1", "ex/a:2"])["changed"]
    assert len(set(names_in(dest).values())) == 1 and len(names_in(dest)) == 2


# ---------------------------------------------- finding 5: an index.json merged unsafely
FOREIGN = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": "sha256:" + "ab" * 32, "size": 10,
           "annotations": {"org.opencontainers.image.ref.name": "other"}}


@pytest.mark.parametrize("body", [
    json.dumps({"schemaVersion": 2, "manifests": [FOREIGN]})[:-1] + ",}",      # damaged
    json.dumps({"schemaVersion": 2, "manifests": [dict(FOREIGN, annotations=["x"])]}),
    json.dumps({"schemaVersion": 2, "manifests": [FOREIGN, "x"]}),
    json.dumps({"schemaVersion": 2, "manifests": {"a": FOREIGN}}),
    '{"schemaVersion":2,"manifests":[],"x":' + "[" * 10000 + "]" * 10000 + "}",  # too deep
    " " * (17 << 20) + "{}",                                                     # oversized
], ids=["damaged", "annotations-list", "entry-string", "manifests-object", "too-deep",
        "oversized"])
@pytest.mark.parametrize("check", [True, False])
def test_an_index_an_export_cannot_merge_into_is_refused(tmp_path, tagged, body, check):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "index.json").write_text(body)
    with pytest.raises(InvalidInput) as caught:
        export(tagged, dest, check=check)
    assert str(dest / "index.json") in str(caught.value)
    assert os.listdir(str(dest)) == ["index.json"]          # nothing written
    assert (dest / "index.json").read_text() == body


def test_a_symlinked_index_is_refused_not_followed(tmp_path, tagged):
    dest, outside = tmp_path / "dest", tmp_path / "outside.json"
    dest.mkdir()
    outside.write_text(json.dumps({"schemaVersion": 2, "manifests": [FOREIGN]}))
    os.symlink(str(outside), str(dest / "index.json"))
    with pytest.raises(InvalidInput) as caught:
        export(tagged, dest)
    assert "symlink" in str(caught.value)


def test_foreign_entries_of_a_good_index_stay(tmp_path, tagged):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [FOREIGN]}))
    export(tagged, dest)
    assert set(names_in(dest)) == {"other", "ex/a:1"}


def test_an_imported_index_with_list_annotations_is_corrupt(tmp_path, store_root):
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [LayerTar().file("a", b"a").bytes()])
    with open(os.path.join(layout, "index.json")) as handle:
        index = json.load(handle)
    index["manifests"][0]["annotations"] = ["x"]
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump(index, handle)
    with pytest.raises(Corrupt) as caught:
        imp(store_root, layout)
    assert "index.json of %s" % layout in str(caught.value)
    assert "annotations" in str(caught.value)


# ------------------------------------------------------ finding 6: modes of what is written
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_an_archive_is_written_0600_as_docker_save(tmp_path, tagged, fmt):
    dest = tmp_path / "out.tar"
    export(tagged, dest, fmt=fmt)
    assert os.stat(str(dest)).st_mode & 0o7777 == 0o600


def test_a_layout_is_written_world_readable_as_skopeo(tmp_path, tagged):
    saved = os.umask(0o022)
    try:
        export(tagged, tmp_path / "dest")
    finally:
        os.umask(saved)
    modes = {os.stat(os.path.join(top, name)).st_mode & 0o7777
             for top, _dirs, names in os.walk(str(tmp_path / "dest")) for name in names}
    assert modes == {0o644}
