# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.image_export``: write images to a ``docker-archive``, an
``oci-archive`` or an ``oci-layout`` (the writing itself: ``_export``).

``dest`` is checked first (absolute, its directory there, the right kind, outside the
store).  The reason: ``dest`` already holds exactly this export (the same manifests,
every blob there with its size and digest) or not; check mode stops there.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Set

from ansible_collections.strata.layers.plugins.module_utils._archive import DirIndex, TarIndex
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._export import (
    FORMATS, Blob, Export, Plan, blob_matches, check_layout_dest, existing_entries,
    layout_current, write_archive, write_layout)
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._imageref import normalize_tag
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._trust import overlaps


def _same_export(dest: str, fmt: str, plan: Export) -> bool:
    """The reason idiom: does ``dest`` already hold exactly this export?  An oci-layout
    the export would refuse (a symlinked ``blobs``, an index it cannot merge into) is
    refused here, in check mode too."""
    if not os.path.exists(dest):
        return False
    if fmt == "oci-layout":
        check_layout_dest(dest)
        entries = existing_entries(os.path.join(dest, "index.json"))
    index: Any = None
    try:
        index = DirIndex(dest) if fmt == "oci-layout" else TarIndex(dest)
        if fmt == "docker-archive":
            if index.read("manifest.json") != plan.docker_manifest():
                return False
        elif fmt == "oci-archive" and index.read("index.json") != plan.index():
            return False
        elif fmt == "oci-layout":
            if not layout_current(entries, plan):
                return False
        return all(_blob_present(index, blob) for blob in plan.blobs())
    except (StoreError, OSError, ValueError):
        return False
    finally:
        if index is not None:
            index.close()


def _blob_present(index: Any, blob: Blob) -> bool:
    """The blob is there with its size *and* its digest: a damaged or tampered output
    of the same sizes must be written again, not declared unchanged."""
    if isinstance(index, TarIndex):
        if not index.has(blob.name) or index.resolve(blob.name).size != blob.size:
            return False
        read, _size = index.opener(blob.name)
        digest = hashlib.sha256()
        while True:
            data = read(1 << 20)
            if not data:
                return "sha256:" + digest.hexdigest() == blob.digest
            digest.update(data)
    fd = index.open_blob(blob.name)     # never through a symlink of dest
    try:
        return blob_matches(fd, blob)
    finally:
        os.close(fd)


def image_export(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    fmt = params.get("format") or "docker-archive"
    if fmt not in FORMATS:
        raise InvalidInput("format %r is not one of %s" % (fmt, ", ".join(FORMATS)))
    dest = params.get("dest")
    if not dest or not os.path.isabs(dest):
        raise InvalidInput("dest %r must be an absolute path" % (dest,))
    if fmt != "oci-layout" and os.path.isdir(dest):
        raise InvalidInput("dest %s is a directory; format %s writes a file" % (dest, fmt))
    if fmt == "oci-layout" and os.path.exists(dest) and not os.path.isdir(dest):
        raise InvalidInput("dest %s exists and is not a directory (oci-layout)" % dest)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise InvalidInput("the directory of dest (%s) does not exist" % parent)
    store = Store.from_params(params)
    clash = overlaps(store.root, dest, holding=False)
    if clash:
        raise InvalidInput("dest %s is refused: %s, whose records an export would overwrite; "
                           "write the export outside data_root" % (dest, clash))
    with store.read():
        omit = set(params.get("omit_layers") or [])
        export = Export(_plans(store, _references(params.get("image")), omit))
        changed = not _same_export(dest, fmt, export)
        if changed and not check_mode:
            if fmt == "oci-layout":
                write_layout(store, export, dest)
            else:
                write_archive(store, export, fmt, dest)
    first = export.plans[0]
    return {"changed": changed, "image_id": first.image.id, "dest": dest, "format": fmt,
            "layers": first.layer_digests, "tags": [t for p in export.plans for t in p.tags],
            "image_ids": [p.image.id for p in export.plans],
            "images": [{"image_id": p.image.id, "tags": p.tags, "layers": p.layer_digests}
                       for p in export.plans],
            "omitted": sorted({c for p in export.plans for c in p.omitted}),
            "size": sum(b.size for b in export.blobs())}


def _references(value: Any) -> List[str]:
    refs = [value] if isinstance(value, str) else list(value or [])
    if not refs or not all(isinstance(r, str) and r for r in refs):
        raise InvalidInput("image must name at least one image (a reference or a list of "
                           "references)")
    return refs


def _plans(store: Store, refs: List[str], omit: Set[str]) -> List[Plan]:
    """One plan per image, in the order first named; an image named twice (two tags)
    is one entry carrying both tags, as ``docker save`` writes it."""
    tags: Dict[str, List[str]] = {}
    images: Dict[str, ImageRecord] = {}
    for ref in refs:
        image = store.images.get(store.images.resolve(ref))
        images.setdefault(image.id, image)
        for tag in _tags_for(ref, image.id):
            if tag not in tags.setdefault(image.id, []):
                tags[image.id].append(tag)
    return [Plan(store, image, tags.get(image_id, []), omit)
            for image_id, image in images.items()]


def _tags_for(ref: str, image_id: str) -> List[str]:
    """As ``docker save``: an image saved by tag carries that tag; by id, none."""
    try:
        tag = normalize_tag(ref)
    except StoreError:
        return []
    if ref.startswith("sha256:") or (len(ref) >= 12 and all(c in "0123456789abcdef" for c in ref)
                                     and image_id[7:].startswith(ref)):
        return []
    return [tag]
