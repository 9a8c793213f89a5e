# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``layer_import``: one layer tarball, or every image of an archive, by content.

The reason idiom: each step first works out whether anything must change; check mode
stops there.  Work is skipped whenever the store can recognise content before reading
it: archive configs name their diff_ids, ``digest`` names one, and a file imported
before is recognised by its stat key (device, inode, size, mtime, ctime), so a re-run
reads nothing but headers.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._archive import (
    ArchiveImage, DirIndex, TarIndex, classify, read_docker_archive, read_oci)
from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree
from ansible_collections.strata.layers.plugins.module_utils._compression import (
    DecodedStream, open_file)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, DiffID, chain_id, validate_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._images import (
    ImageConfig, derive_config, parse_config, validate_tags)
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._store import Store

FORMATS = ("auto", "layer", "docker-archive", "oci-archive", "oci-layout")


def layer_import(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Entry point of the module: returns the result dict (raises StoreError)."""
    src = params["src"]
    fmt = params.get("format") or "auto"
    if fmt not in FORMATS:
        raise InvalidInput("format %r is not one of %s" % (fmt, ", ".join(FORMATS)))
    if not os.path.exists(src):
        raise NotFound("src %s does not exist on this host" % src)
    tags = validate_tags(params.get("tag") or [])
    digest = params.get("digest")
    if digest:
        validate_digest(digest, "digest")
    max_size = params.get("max_size")
    if max_size is not None and int(max_size) <= 0:
        raise InvalidInput("max_size must be a positive number of bytes")
    store = Store.from_params(params)
    if fmt == "auto":
        # a file imported before as a layer is one: no need to read its headers again
        known = store.exists() and not os.path.isdir(src) and \
            store.source_digests(stat_key(src)) is not None
        fmt = "layer" if known else classify(src)
    if fmt != "layer" and params.get("parent"):
        raise InvalidInput("parent applies to format: layer only (an archive's config names "
                           "its layers)")
    job = LayerJob(store, src, params.get("parent"), digest, tags, max_size) if fmt == "layer" \
        else ArchiveJob(store, src, fmt, digest, tags, max_size)
    if check_mode:
        with store.read():
            return job.plan()
    with store.write("layer_import of %s" % src):
        return job.run()


def stat_key(path: str) -> str:
    st = os.stat(path)
    return "%d:%d:%d:%d:%d:%s" % (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                  st.st_ctime_ns, os.path.realpath(path))


def layer_entry(record: LayerRecord, imported: bool) -> Dict[str, Any]:
    return {"diff_id": record.diff_id, "chain_id": record.chain_id, "size": record.size,
            "imported": imported}


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(ns, 0) // 1_000_000_000))


class LayerJob:
    """Import of one layer tarball (format: layer)."""

    def __init__(self, store: Store, src: str, parent: Optional[str], digest: Optional[str],
                 tags: List[str], max_size: Optional[int]) -> None:
        if os.path.isdir(src):
            raise InvalidInput("src %s is a directory; format: layer needs a tar file" % src)
        self.store, self.src, self.parent_ref = store, src, parent
        self.digest, self.tags, self.max_size = digest, tags, max_size

    def _parent(self) -> Tuple[Optional[Any], Optional[ChainID]]:
        if not self.parent_ref:
            return None, None
        return self.store.resolve_parent(self.parent_ref)

    def _known_diff_id(self, parent: Optional[ChainID]) -> Optional[DiffID]:
        """The diff_id of ``src`` if the store can tell without reading it."""
        cached = self.store.source_digests(stat_key(self.src))
        if cached is not None and (self.digest is None or self.digest in cached.values()):
            return DiffID(cached["diff_id"])
        if self.digest is not None:
            known = self.store.known_diff_id(self.digest)
            if known is not None:
                return known
            if self.store.layers.exists(chain_id(parent, DiffID(self.digest))):
                return DiffID(self.digest)
        return None

    def plan(self) -> Dict[str, Any]:
        exists = self.store.exists()
        if self.parent_ref and not exists:
            raise NotFound("parent %r is not in the store (the store is empty)" % self.parent_ref)
        parent_image, parent = self._parent() if exists else (None, None)
        diff_id = self._known_diff_id(parent) if exists else None
        if diff_id is None:
            diff_id = hash_stream(self.src, self.max_size)
        chain = chain_id(parent, diff_id)
        record = self.store.layers.find(chain) if exists else None
        result: Dict[str, Any] = {
            "changed": record is None, "image_id": None, "image_ids": [], "tags": self.tags,
            "layers": [{"diff_id": diff_id, "chain_id": chain, "size": None, "imported": True}]}
        if record is None:
            return result
        stack = self.store.layers.stack(chain)
        result["layers"] = [layer_entry(r, False) for r in stack]
        if self.tags:
            config = self._config(parent_image, stack)
            current = self.store.images.tags()
            result["image_id"] = config.id
            result["image_ids"] = [config.id]
            result["changed"] = not self.store.images.exists(config.id) or \
                any(current.get(t) != config.id for t in self.tags)
        return result

    def run(self) -> Dict[str, Any]:
        store = self.store
        parent_image, parent = self._parent()
        expect_diff = self._known_diff_id(parent)
        what = "layer %s" % self.src
        record, imported, digests = store.ingest_layer(
            lambda: open_file(self.src, what), parent, what,
            expect=self.digest, expect_diff=expect_diff, max_size=self.max_size)
        if "digest" in digests:
            store.remember_source(stat_key(self.src), digests)
        stack = store.layers.stack(record.chain_id)
        result: Dict[str, Any] = {
            "changed": imported, "layers": [layer_entry(r, imported and r is stack[-1])
                                            for r in stack],
            "image_id": None, "image_ids": [], "tags": []}
        if self.tags:
            image_id, added, moved = self._image(parent_image, stack)
            result.update(image_id=image_id, image_ids=[image_id], tags=self.tags)
            result["changed"] = imported or added or bool(moved)
        return result

    def _image(self, parent_image: Any, stack: List[LayerRecord]) -> Tuple[str, bool, List[str]]:
        config = self._config(parent_image, stack)
        record, added = self.store.put_image(config, {"source": "layer:" + self.src})
        moved = self.store.tag(record.id, self.tags)
        return record.id, added, moved

    @staticmethod
    def _config(parent_image: Any, stack: List[LayerRecord]) -> ImageConfig:
        """The config of the image made for ``tag``: derived from content only, so the
        same layer on the same parent always gives the same image id."""
        top = stack[-1]
        base: Optional[ImageConfig] = parent_image.config if parent_image is not None else None
        if base is None and len(stack) > 1:
            base = parse_config(_bare_config(stack[:-1]), "derived config")
        created = iso(top.mtime_max)
        if base is not None and base.created > created:
            created = base.created
        raw = derive_config(base, top.diff_id, created,
                            "strata.layers.layer_import %s" % top.diff_id)
        return parse_config(raw, "derived config")


def _bare_config(stack: List[LayerRecord]) -> bytes:
    """A config for a bare chain of layers (a ``parent`` given as a chain id)."""
    raw = b""
    for layer in stack:
        base = parse_config(raw, "derived") if raw else None
        raw = derive_config(base, layer.diff_id, iso(layer.mtime_max),
                            "strata.layers.layer_import %s" % layer.diff_id)
    return raw


def hash_stream(path: str, max_size: Optional[int]) -> DiffID:
    """diff_id of a layer file by hashing its uncompressed stream (check mode)."""
    stream = open_file(path)
    try:
        hasher = hashlib.sha256()
        total = 0
        while True:
            chunk = stream.chunk()
            if not chunk:
                break
            hasher.update(chunk)
            total += len(chunk)
            if max_size is not None and total > max_size:
                raise InvalidInput("layer %s is larger than max_size (%d bytes) once "
                                   "uncompressed" % (path, max_size))
    finally:
        stream.close()
    return DiffID("sha256:" + hasher.hexdigest())


class ArchiveJob:
    """Import of every image of a docker-archive, oci-archive or oci-layout."""

    def __init__(self, store: Store, src: str, fmt: str, digest: Optional[str], tags: List[str],
                 max_size: Optional[int]) -> None:
        self.store, self.src, self.fmt = store, src, fmt
        self.digest, self.tags, self.max_size = digest, tags, max_size
        self._scratch: Optional[str] = None

    def _open(self, scratch_dir: Optional[str]) -> Tuple[Any, List[ArchiveImage]]:
        path, fmt = self.src, self.fmt
        if fmt == "compressed-archive":
            if scratch_dir is None:
                raise InvalidInput("src %s is a compressed image archive; check mode cannot "
                                   "inspect it without unpacking" % self.src)
            path = self._decompress(scratch_dir)
            index = TarIndex(path)
            fmt = "docker-archive" if index.has("manifest.json") else "oci-archive"
        elif fmt == "oci-layout":
            if not os.path.isdir(path):
                raise InvalidInput("src %s must be a directory for format: oci-layout" % path)
            index = DirIndex(path)
        else:
            if os.path.isdir(path):
                raise InvalidInput("src %s is a directory; format %s needs an archive file"
                                   % (path, fmt))
            index = TarIndex(path)
        try:
            if fmt == "docker-archive":
                images = read_docker_archive(index)
            else:
                images = read_oci(index)
        except BaseException:
            index.close()
            raise
        if self.digest is not None:
            self._check_archive_digest(images)
        return index, images

    def _check_archive_digest(self, images: List[ArchiveImage]) -> None:
        known = {images[0].config.id, images[0].manifest_digest}
        if self.digest not in known:
            raise StoreError("digest %s matches neither the image id (%s) nor the manifest of "
                             "the first image of %s; nothing was imported"
                             % (self.digest, images[0].config.id, self.src))

    def _decompress(self, scratch_dir: str) -> str:
        """A compressed archive, decompressed into the store's tmp/ to be indexed.

        With ``max_size`` the whole archive may not inflate beyond 128 times it (no
        image has more layers than overlay2's limit of 125 plus its configs): a bomb
        is stopped there, without it by the filesystem's free space (NoSpace, cleaned)."""
        target = os.path.join(scratch_dir, "archive.tar")
        stream = open_file(self.src)
        limit = self.max_size * 128 if self.max_size else None
        total = 0
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while True:
                chunk = stream.chunk()
                if not chunk:
                    break
                total += len(chunk)
                if limit is not None and total > limit:
                    raise InvalidInput("%s inflates beyond 128 x max_size (%d bytes): refused, "
                                       "nothing was kept" % (self.src, limit))
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
        finally:
            os.close(out)
            stream.close()
        return target

    def plan(self) -> Dict[str, Any]:
        index, images = self._open(None)
        index.close()
        exists = self.store.exists()
        first = images[0]
        chains = _chains(first)
        layers = [{"diff_id": ref.diff_id, "chain_id": chain, "size": None,
                   "imported": not (exists and self.store.layers.exists(chain))}
                  for ref, chain in zip(first.layers, chains)]
        missing_image = any(not (exists and self.store.images.exists(i.config.id)) for i in images)
        wanted = self._wanted_tags(images)
        current = self.store.images.tags() if exists else {}
        moved = any(current.get(t) != img for t, img in wanted.items())
        return {"changed": missing_image or moved or any(l["imported"] for l in layers),
                "image_id": first.config.id, "image_ids": [i.config.id for i in images],
                "layers": layers, "tags": sorted(wanted)}

    def _wanted_tags(self, images: List[ArchiveImage]) -> Dict[str, str]:
        wanted: Dict[str, str] = {}
        for image in images:
            for tag in image.tags:
                wanted[tag] = image.config.id
        for tag in self.tags:
            wanted[tag] = images[0].config.id
        return wanted

    def run(self) -> Dict[str, Any]:
        scratch = self.store.staging("archive") if self.fmt == "compressed-archive" else None
        index, images = self._open(scratch)
        self._new: List[Tuple[ChainID, str]] = []
        try:
            changed = False
            first_layers: List[Dict[str, Any]] = []
            for number, image in enumerate(images):
                entries, imported = self._layers(index, image)
                record, added = self.store.put_image(image.config, {"source": "%s:%s" % (
                    self.fmt, self.src)})
                changed = changed or imported or added
                if number == 0:
                    first_layers = entries
        except BaseException:
            self._forget_new_layers(images)
            raise
        finally:
            index.close()
            if scratch is not None:
                remove_tree(scratch)
        moved = []
        wanted = self._wanted_tags(images)
        for image in images:
            mine = [t for t, i in wanted.items() if i == image.config.id]
            moved += self.store.tag(image.config.id, mine)
        return {"changed": changed or bool(moved), "image_id": images[0].config.id,
                "image_ids": [i.config.id for i in images], "layers": first_layers,
                "tags": sorted(wanted)}

    def _forget_new_layers(self, images: List[ArchiveImage]) -> None:
        """A failed archive import leaves the store as it was: the layers this run added
        go again (children first), unless an image of the archive was already stored."""
        if any(self.store.images.exists(i.config.id) for i in images):
            return
        unused = set(self.store.unused_layers())
        for chain, blob in reversed(self._new):
            if chain in unused:
                self.store.remove_layer(chain)
                self.store.forget_blob(blob)

    def _layers(self, index: Any, image: ArchiveImage) -> Tuple[List[Dict[str, Any]], bool]:
        parent: Optional[ChainID] = None
        entries = []
        any_new = False
        for number, ref in enumerate(image.layers, 1):
            what = "layer %d (%s) of %s" % (number, ref.member, self.src)
            record, imported, _digests = self.store.ingest_layer(
                lambda ref=ref: DecodedStream(index.opener(ref.member)[0], what=what),
                parent, what, expect=ref.digest, expect_diff=DiffID(ref.diff_id),
                max_size=self.max_size)
            entries.append(layer_entry(record, imported))
            if imported:
                self._new.append((record.chain_id, _digests.get("digest", "")))
            any_new = any_new or imported
            parent = record.chain_id
        return entries, any_new


def _chains(image: ArchiveImage) -> List[ChainID]:
    out: List[ChainID] = []
    parent: Optional[ChainID] = None
    for ref in image.layers:
        parent = chain_id(parent, DiffID(ref.diff_id))
        out.append(parent)
    return out
