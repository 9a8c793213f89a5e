# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Importing one layer tarball, or every image of an archive, by content
(``layer_import``'s entry point is ``_ops/layer_import.py``).

The reason idiom: each step first works out whether anything must change; check mode
stops there.  Work is skipped whenever the store can recognise content before reading
it: archive configs name their diff_ids, and a file imported before is recognised by
its stat key (device, inode, size, mtime, ctime), so a re-run reads nothing but
headers.  A ``digest`` naming a stored layer spares only the extraction: ``src`` is
still hashed, since the digest vouches for the layer, not for the file.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._archive import (
    ArchiveImage, DirIndex, Limits, MemIndex, TarIndex, archive_format, index_stream,
    read_docker_archive, read_oci, verify_sizes)
from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    remove_tree, wrap_os_error)
from ansible_collections.strata.layers.plugins.module_utils._compression import (
    STREAM_MAX, DecodedStream, detect, open_file, open_stream, read_head)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, DiffID, ImageID, chain_id, hex_of, is_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    ImageConfig, derive_config, parse_config)
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._store import Store

FORMATS = ("auto", "layer", "docker-archive", "oci-archive", "oci-layout")


class NotAnArchive(Corrupt):
    """A compressed tar told from its first members to be an archive holds no archive
    metadata: with format auto it is imported as a layer instead."""


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
        self.wait: Optional[float] = None

    def stream(self, wait: float) -> None:
        """``src`` is a FIFO or device: read once, bounded (``max_size``, else STREAM_MAX)
        and never waiting more than ``wait`` seconds for data; no stat-key cache."""
        self.wait = wait
        if self.max_size is None:
            self.max_size = STREAM_MAX

    def open(self, read_ahead: bool = False) -> DecodedStream:
        """``src`` as a stream; a file is read ahead on a worker when the import asks."""
        what = "layer %s" % self.src
        if self.wait is not None:
            return open_stream(self.src, what, self.wait)
        return open_file(self.src, what, read_ahead=read_ahead)

    def _parent(self) -> Tuple[Optional[Any], Optional[ChainID]]:
        if not self.parent_ref:
            return None, None
        return self.store.resolve_parent(self.parent_ref)

    def _known(self, parent: Optional[ChainID]
               ) -> Tuple[Optional[DiffID], Optional[Dict[str, str]]]:
        """The diff_id of ``src`` when the store can tell without extracting it, and the
        digests learnt by hashing it (remembered once the run succeeded).

        Only the stat-key cache, which holds the digests of this very file, skips reading
        ``src``.  A ``digest`` naming a stored layer says nothing about ``src`` itself: it
        is hashed (not extracted) and must match."""
        if self.wait is not None:
            return None, None       # a stream is read once, by the import itself
        cached = self._cached()
        if cached is not None:
            return cached, None
        if not self._names_stored_layer(parent):
            return None, None
        digests = self._hashed()
        return DiffID(digests["diff_id"]), digests

    def _cached(self) -> Optional[DiffID]:
        cached = self.store.source_digests(stat_key(self.src))
        if cached is None or (self.digest is not None and
                              self.digest not in (cached.get("digest"), cached.get("diff_id"))):
            return None
        return DiffID(cached["diff_id"])

    def _names_stored_layer(self, parent: Optional[ChainID]) -> bool:
        if self.digest is None:
            return False
        diff_id = self.store.known_diff_id(self.digest) or DiffID(self.digest)
        return self.store.layers.exists(chain_id(parent, diff_id))

    def _hashed(self) -> Dict[str, str]:
        """The digests of ``src`` (read, not extracted), checked against ``digest``."""
        digests = hash_stream(self.src, self.max_size, self.open)
        if self.digest is not None and self.digest not in (digests["digest"], digests["diff_id"]):
            raise DigestMismatch("layer %s: digest mismatch: expected %s, the file has %s "
                                 "(compressed) and %s (uncompressed); nothing was kept"
                                 % (self.src, self.digest, digests["digest"], digests["diff_id"]),
                                 expected=self.digest, actual=digests["digest"])
        return digests

    def plan(self) -> Dict[str, Any]:
        exists = self.store.exists()
        if self.parent_ref and not exists:
            raise NotFound("parent %r is not in the store (the store is empty)" % self.parent_ref)
        parent_image, parent = self._parent() if exists else (None, None)
        diff_id = self._known(parent)[0] if exists else None
        if diff_id is None:
            diff_id = DiffID(self._hashed()["diff_id"])
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
        key = stat_key(self.src)     # taken before anything is read
        parent_image, parent = self._parent()
        expect_diff, hashed = self._known(parent)
        what = "layer %s" % self.src
        record, imported, digests = store.ingest_layer(
            lambda: self.open(read_ahead=True), parent, what,
            expect=self.digest, expect_diff=expect_diff, max_size=self.max_size)
        learned = digests if "digest" in digests else hashed
        # the digests are remembered for the file as it was before and after reading it
        # (the stream itself refuses a file written to while it was read): never for
        # content it no longer has, and never for a stream (a FIFO's next content differs)
        if learned is not None and self.wait is None and stat_key(self.src) == key:
            store.remember_source(key, learned)
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


def hash_stream(path: str, max_size: Optional[int],
                opener: Optional[Callable[[], DecodedStream]] = None) -> Dict[str, str]:
    """The digests of a file read but not extracted: ``digest`` as it is (compressed)
    and ``diff_id`` of its uncompressed stream (check mode, a ``digest`` to verify)."""
    stream = opener() if opener is not None else open_file(path)
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
    diff_id = "sha256:" + hasher.hexdigest()
    return {"diff_id": diff_id, "digest": stream.compressed_digest() or diff_id}


class ArchiveJob:
    """Import of every image of a docker-archive, oci-archive or oci-layout (plain, or
    gzip- or zstd-compressed).

    A failed run leaves the store as it was (``_undo``): it keeps what it added (tags it
    moved, images, layers, distribution entries) to remove exactly that, and nothing
    that existed before the run.
    """

    def __init__(self, store: Store, src: str, fmt: str, digest: Optional[str], tags: List[str],
                 max_size: Optional[int], limits: Limits = Limits()) -> None:
        self.store, self.src, self.fmt, self.limits = store, src, fmt, limits
        self.digest, self.tags, self.max_size = digest, tags, max_size
        self.compressed = fmt == "compressed-archive" or (
            fmt != "oci-layout" and os.path.isfile(src) and _compressed(src))
        self._src_digests: Optional[List[str]] = None
        self._tags_before: Optional[Dict[str, ImageID]] = None
        self._new_images: List[str] = []
        self._new_layers: List[Tuple[ChainID, str]] = []
        self._blobs_before: Optional[Set[str]] = None

    # ------------------------------------------------------------------ reading
    def _open(self, scratch_dir: Optional[str]) -> Tuple[Any, List[ArchiveImage]]:
        index, fmt = self._index(scratch_dir)
        try:
            images = read_docker_archive(index, self.limits) if fmt == "docker-archive" \
                else read_oci(index, limits=self.limits)
            verify_sizes(index, images)
            if self.digest is not None:
                self._check_archive_digest(images)
        except BaseException:
            index.close()
            raise
        return index, images

    def _index(self, scratch_dir: Optional[str]) -> Tuple[Any, str]:
        """The archive's members and its format.  A compressed archive is decompressed
        into ``scratch_dir``, or, without one (check mode), read once as a stream."""
        if self.fmt == "oci-layout":
            if not os.path.isdir(self.src):
                raise InvalidInput("src %s must be a directory for format: oci-layout" % self.src)
            return DirIndex(self.src), self.fmt
        if os.path.isdir(self.src):
            raise InvalidInput("src %s is a directory; format %s needs an archive file"
                               % (self.src, self.fmt))
        if not self.compressed:
            return TarIndex(self.src), self.fmt
        index = self._streamed() if scratch_dir is None else \
            TarIndex(self._decompress(scratch_dir), shown=self.src)
        try:
            fmt = archive_format(index, self.limits) if self.fmt == "compressed-archive" \
                else self.fmt
        except BaseException:
            index.close()
            raise
        if fmt is None:
            index.close()
            raise NotAnArchive("src %s is a compressed tar whose manifest.json or index.json is "
                               "not that of an image archive (use format: layer if it is a "
                               "layer)" % self.src)
        return index, fmt

    def _streamed(self) -> MemIndex:
        """Check mode: the compressed archive read once, its metadata kept in memory."""
        stream = open_file(self.src)
        try:
            index = index_stream(self._inflated(stream), self.src, limits=self.limits)
        finally:
            stream.close()
        self._src_digests = [stream.compressed_digest() or str(index.tar_digest),
                             str(index.tar_digest)]
        return index

    def _decompress(self, scratch_dir: str) -> str:
        """A compressed archive, decompressed into the store's tmp/ to be indexed (the
        digest of the uncompressed tar is taken on the way when ``digest`` may need it)."""
        target = os.path.join(scratch_dir, "archive.tar")
        stream = open_file(self.src)
        hasher = hashlib.sha256() if self.digest is not None else None
        try:
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for chunk in iter(self._inflated(stream), b""):
                    if hasher is not None:
                        hasher.update(chunk)
                    _write_all(out, chunk)
            finally:
                os.close(out)
        except OSError as exc:
            raise wrap_os_error(exc, "decompressing %s into %s" % (self.src, scratch_dir)) from exc
        finally:
            stream.close()
        if hasher is not None:
            tar_digest = "sha256:" + hasher.hexdigest()
            self._src_digests = [stream.compressed_digest() or tar_digest, tar_digest]
        return target

    def _inflated(self, stream: DecodedStream) -> Callable[[], bytes]:
        """The chunks of ``stream``, refused beyond 128 times ``max_size`` when it is set (no
        image has more layers than overlay2's limit of 125 plus its configs): a bomb is
        stopped there, without it by the filesystem's free space (NoSpace, cleaned)."""
        limit = self.max_size * 128 if self.max_size else None
        total = [0]

        def chunk() -> bytes:
            data = stream.chunk()
            total[0] += len(data)
            if limit is not None and total[0] > limit:
                raise InvalidInput("%s inflates beyond 128 x max_size (%d bytes): refused, "
                                   "nothing was kept" % (self.src, limit))
            return data
        return chunk

    def _check_archive_digest(self, images: List[ArchiveImage]) -> None:
        first = images[0]
        if self.digest in (first.config.id, first.manifest_digest):
            return
        own = self._own_digests()
        if self.digest in own:
            return
        accepted = ["the first image's id (%s)" % first.config.id]
        if first.manifest_digest:
            accepted.append("its manifest digest (%s)" % first.manifest_digest)
        if own:
            accepted.insert(0, "the digest of the file or of its uncompressed tar (%s)"
                            % ", ".join(own))
        raise DigestMismatch("digest %s does not match %s: expected %s; nothing was imported"
                             % (self.digest, self.src, " or ".join(accepted)),
                             expected=self.digest)

    def _own_digests(self) -> List[str]:
        """The digests of ``src`` itself (what sha256sum prints, and of its uncompressed
        tar), hashed only when the image id and manifest digest did not match."""
        if self._src_digests is None:
            self._src_digests = []
            if not os.path.isdir(self.src):
                digests = hash_stream(self.src, None)
                self._src_digests = [digests["digest"], digests["diff_id"]]
        return list(dict.fromkeys(self._src_digests))

    # ------------------------------------------------------------------ check mode
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

    # ------------------------------------------------------------------ importing
    def run(self) -> Dict[str, Any]:
        scratch = self.store.staging("archive") if self.compressed else None
        try:
            index, images = self._open(scratch)
            try:
                return self._import(index, images)
            finally:
                index.close()
        finally:
            if scratch is not None:
                remove_tree(scratch)

    def _import(self, index: Any, images: List[ArchiveImage]) -> Dict[str, Any]:
        for image in images:
            self.store.check_depth(len(image.layers), "image %s of %s" % (image.config.id,
                                                                          self.src))
        try:
            changed, first_layers = self._store_images(index, images)
            moved = self._tag(images)
        except BaseException as exc:
            index.close()           # the undo needs descriptors of its own
            self._undo_after(exc)
            raise
        return {"changed": changed or bool(moved), "image_id": images[0].config.id,
                "image_ids": [i.config.id for i in images], "layers": first_layers,
                "tags": sorted(self._wanted_tags(images))}

    def _store_images(self, index: Any, images: List[ArchiveImage]
                      ) -> Tuple[bool, List[Dict[str, Any]]]:
        changed = False
        first_layers: List[Dict[str, Any]] = []
        stored: Set[str] = set()
        for number, image in enumerate(images):
            if image.config.id in stored:
                continue            # an image several entries name is stored once
            stored.add(image.config.id)
            entries, imported = self._layers(index, image)
            record, added = self.store.put_image(image.config, {"source": "%s:%s" % (
                self.fmt, self.src)})
            if added:
                self._new_images.append(record.id)
            changed = changed or imported or added
            if number == 0:
                first_layers = entries
        return changed, first_layers

    def _layers(self, index: Any, image: ArchiveImage) -> Tuple[List[Dict[str, Any]], bool]:
        parent: Optional[ChainID] = None
        entries = []
        any_new = False
        for number, ref in enumerate(image.layers, 1):
            what = "layer %d (%s) of %s" % (number, ref.member, self.src)
            if not self.store.layers.exists(chain_id(parent, DiffID(ref.diff_id))):
                self._note_blobs()
            record, imported, digests = self.store.ingest_layer(
                lambda ref=ref, what=what: index.stream(ref.member, what),
                parent, what, expect=ref.digest, expect_diff=DiffID(ref.diff_id),
                max_size=self.max_size)
            entries.append(layer_entry(record, imported))
            if imported:
                self._new_layers.append((record.chain_id, digests.get("digest", "")))
            any_new = any_new or imported
            parent = record.chain_id
        return entries, any_new

    def _note_blobs(self) -> None:
        """The distribution entries before this run's first layer import: an undo forgets
        only the ones the run added."""
        if self._blobs_before is None:
            try:
                self._blobs_before = set(os.listdir(os.path.join(self.store.root,
                                                                 "distribution")))
            except FileNotFoundError:
                self._blobs_before = set()

    def _tag(self, images: List[ArchiveImage]) -> List[str]:
        wanted = self._wanted_tags(images)
        self._tags_before = self.store.images.tags()
        moved = []
        for image in images:
            mine = [t for t, i in wanted.items() if i == image.config.id]
            moved += self.store.tag(image.config.id, mine)
        return moved

    # ------------------------------------------------------------------ undoing
    def _undo_after(self, exc: BaseException) -> None:
        try:
            self._undo()
        except (StoreError, OSError) as undo:
            raise StoreError("%s; undoing what this run had stored failed too (%s): run "
                             "strata.layers.store_check with repair: true" % (exc, undo)) from exc

    def _undo(self) -> None:
        """Tags moved back, then the images this run added, then the layers it added
        that no image or container uses (children first) with their distribution entries."""
        if self._tags_before is not None and self.store.images.tags() != self._tags_before:
            self.store.images.write_tags(self._tags_before)
        for image_id in reversed(self._new_images):
            self.store.remove_image(ImageID(image_id))
        unused = set(self.store.unused_layers())
        for chain, blob in reversed(self._new_layers):
            if chain in unused:
                self.store.remove_layer(chain)
                if is_digest(blob) and hex_of(blob) not in (self._blobs_before or set()):
                    self.store.forget_blob(blob)


def _compressed(path: str) -> bool:
    return detect(read_head(path)) != "plain"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _chains(image: ArchiveImage) -> List[ChainID]:
    out: List[ChainID] = []
    parent: Optional[ChainID] = None
    for ref in image.layers:
        parent = chain_id(parent, DiffID(ref.diff_id))
        out.append(parent)
    return out
