# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``image_push``: an image of the store to a registry, sending only what it lacks.

The reason idiom, cheapest question first:

1. every layer's compressed digest is recorded (a push, or a pull, made that blob
   before: ``_blobrecords``), so the manifest can be built without compressing; one
   ``HEAD`` of the tag: the registry has exactly that manifest under it -> ``changed:
   false``, nothing else asked, nothing compressed;
2. otherwise blob by blob: ``HEAD`` (the registry has it: skipped), a cross-repository
   mount when the store knows the blob lives in another repository of the same registry
   (mounted), else compress (deterministically, ``_encode``) and upload: a small layer
   compressed in memory, asked for by its digest and sent in one ``PUT``; a large one
   compressed to a spool file under ``tmp/`` (so it too is asked for by its digest
   first), then sent in ``PATCH`` chunks; a session a killed push left is continued
   instead (its location is recorded after every chunk; the compressor replays the same
   bytes up to the registry's offset).  Check mode stops before the first mount or
   upload and lists what it would do;
3. the config, then the manifest under the tag (the commit point: a failed push never
   moves the tag).

The store is only read (shared lock); the records under ``registry/`` are caches
written atomically, and a large layer's spool file lives in ``tmp/`` (removed at the
end, or swept as debris by the next exclusive open after a kill).  Every layer is re-emitted from the store and checked against its
diff_id while it is compressed: a damaged store never reaches a registry.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Dict, Iterator, List, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import dumps, remove_tree
from ansible_collections.strata.layers.plugins.module_utils._blobrecords import BlobRecords
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID, sha256_bytes
from ansible_collections.strata.layers.plugins.module_utils._encode import COMPRESSIONS, encode
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, InvalidReference)
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    Reference, Registry, parse_reference)
from ansible_collections.strata.layers.plugins.module_utils._regsettings import RegistrySettings
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import chunks
from ansible_collections.strata.layers.plugins.module_utils._upload import Uploader

FORMATS = ("oci", "docker")
MEDIA = {
    "oci": {"manifest": "application/vnd.oci.image.manifest.v1+json",
            "config": "application/vnd.oci.image.config.v1+json",
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
            "none": "application/vnd.oci.image.layer.v1.tar"},
    "docker": {"manifest": "application/vnd.docker.distribution.manifest.v2+json",
               "config": "application/vnd.docker.container.image.v1+json",
               "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
               "none": "application/vnd.docker.image.rootfs.diff.tar"},
}
# A layer whose tar is at most this big is compressed in memory and sent in one PUT;
# larger ones stream in PATCH chunks of CHUNK bytes (the unit a killed push resumes at).
MONOLITHIC = 8 << 20
CHUNK = 32 << 20


def image_push(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Entry point of the module: returns the result dict (raises StoreError)."""
    dest = parse_dest(params.get("dest"))
    compression = params.get("compression") or "gzip"
    if compression not in COMPRESSIONS:
        raise InvalidInput("compression %r is not one of %s"
                           % (compression, ", ".join(COMPRESSIONS)))
    fmt = params.get("manifest_format") or "oci"
    if fmt not in FORMATS:
        raise InvalidInput("manifest_format %r is not one of %s" % (fmt, ", ".join(FORMATS)))
    if compression not in MEDIA[fmt]:
        raise InvalidInput("manifest_format docker (v2 schema 2) has no media type for %s "
                           "layers: use manifest_format oci, or compression gzip or none"
                           % compression)
    settings = RegistrySettings.from_params(params)
    registry = Registry(dest, insecure=settings.insecure, ca_path=settings.ca_path,
                        timeout=settings.timeout, connect_timeout=settings.connect_timeout,
                        deadline=settings.blob_timeout, actions="pull,push",
                        credentials=settings.credentials(dest.registry, dest.repository))
    store = Store.from_params(params)
    chunk = int(params.get("chunk_size") or CHUNK)   # not an option: tests shrink chunks
    job = PushJob(store, registry, compression, fmt, chunk)
    with store.read():
        image = store.images.get(store.images.resolve(params.get("name") or "", "name"))
        return job.run(image, check_mode)


def parse_dest(value: Any) -> Reference:
    if not isinstance(value, str) or not value.strip():
        raise InvalidReference("dest is empty: give REGISTRY/REPOSITORY[:TAG]")
    if "@" in value:
        raise InvalidReference("dest %r names a digest: a push goes to a tag "
                               "(REGISTRY/REPOSITORY[:TAG])" % value)
    try:
        return parse_reference(value)
    except InvalidReference as exc:
        raise InvalidReference("dest: %s" % exc) from exc


class PushJob:
    """One push of one image to one repository and tag."""

    def __init__(self, store: Store, registry: Registry, compression: str, fmt: str,
                 chunk: int) -> None:
        self.store, self.registry = store, registry
        self.compression, self.fmt, self.chunk = compression, fmt, chunk
        self.dest: Reference = registry.reference
        # where blobs live, as pulls record it: the address talked to (Docker Hub's API
        # host for docker.io names), then the repository
        self.where = "%s/%s" % (registry.address, self.dest.repository)
        self.records = BlobRecords(store.root)
        self.uploader = Uploader(registry)
        self.blobs: Dict[str, List[str]] = {"uploaded": [], "skipped": [], "mounted": []}

    # -- the reason idiom
    def run(self, image: ImageRecord, check_mode: bool) -> Dict[str, Any]:
        layers = [self.store.layers.get(ChainID(c)) for c in image.chain]
        known = [self.records.compressed(l.diff_id, self.compression) for l in layers]
        if all(known):
            manifest = self.manifest(image, [(k[0]["digest"], k[0]["size"]) for k in known])
            if self.uploader.manifest_digest(str(self.dest.tag), MEDIA[self.fmt]["manifest"]) \
                    == sha256_bytes(manifest):
                self.blobs["skipped"] = [k[0]["digest"] for k in known] + [image.id]
                return self.result(False, image, sha256_bytes(manifest))
        descs = [self.ensure_layer(n, layer, known[n], check_mode)
                 for n, layer in enumerate(layers)]
        self.ensure_config(image, check_mode)
        manifest = self.manifest(image, descs)
        digest = sha256_bytes(manifest)
        remote = self.uploader.manifest_digest(str(self.dest.tag), MEDIA[self.fmt]["manifest"])
        changed = remote != digest or bool(self.blobs["uploaded"] or self.blobs["mounted"])
        if remote != digest and not check_mode:
            crash_point("image_push.manifest")
            self.uploader.put_manifest(str(self.dest.tag), manifest, MEDIA[self.fmt]["manifest"])
        return self.result(changed, image, digest)

    def result(self, changed: bool, image: ImageRecord, digest: str) -> Dict[str, Any]:
        return {"changed": changed, "digest": digest, "image_id": image.id,
                "dest": str(self.dest), "blobs": self.blobs,
                "bytes_sent": self.uploader.bytes_sent, "compression": self.compression,
                "manifest_format": self.fmt}

    def manifest(self, image: ImageRecord, descs: List[Tuple[str, int]]) -> bytes:
        media = MEDIA[self.fmt]
        return dumps({"schemaVersion": 2, "mediaType": media["manifest"],
                      "config": {"mediaType": media["config"], "digest": image.id,
                                 "size": len(image.config.raw)},
                      "layers": [{"mediaType": media[self.compression], "digest": d, "size": s}
                                 for d, s in descs]})

    # -- one layer
    def what(self, number: int, layer: LayerRecord) -> str:
        return "layer %d (%s) of the push to %s" % (number + 1, layer.diff_id, self.dest)

    def ensure_layer(self, number: int, layer: LayerRecord, known: List[Dict[str, Any]],
                     check_mode: bool) -> Tuple[str, int]:
        for blob in known:
            if self.uploader.has_blob(blob["digest"]):
                self.blobs["skipped"].append(blob["digest"])
                if not check_mode:
                    self.records.remember_origin(blob["digest"], self.where)
                return blob["digest"], blob["size"]
        for blob in known:
            if self.try_mount(blob["digest"], check_mode):
                self.blobs["mounted"].append(blob["digest"])
                return blob["digest"], blob["size"]
        if check_mode:
            digest, size = (known[0]["digest"], known[0]["size"]) if known else \
                self.measure(number, layer)
            self.blobs["uploaded"].append(digest)
            return digest, size
        return self.upload_layer(number, layer)

    def try_mount(self, digest: str, check_mode: bool) -> bool:
        prefix = self.registry.address + "/"
        for origin in self.records.origins(digest):
            source = origin[len(prefix):] if origin.startswith(prefix) else None
            if not source or source == self.dest.repository:
                continue
            if check_mode:
                return True
            mounted, location = self.uploader.mount(digest, source)
            if mounted:
                self.records.remember_origin(digest, self.where)
                return True
            if location:
                self.uploader.cancel(location)
        return False

    def stream(self, number: int, layer: LayerRecord) -> Tuple[Iterator[bytes], "TarCheck"]:
        check = TarCheck(layer, self.what(number, layer))
        tar = chunks(self.store.layers.split_path(layer.chain_id),
                     self.store.driver.layer_files(layer.chain_id))
        return encode(check.wrap(tar), self.compression), check

    def measure(self, number: int, layer: LayerRecord) -> Tuple[str, int]:
        """Digest and size the layer would have (check mode: compressed, not sent)."""
        hasher, size = hashlib.sha256(), 0
        data, check = self.stream(number, layer)
        for piece in data:
            hasher.update(piece)
            size += len(piece)
        check.verify()
        return "sha256:" + hasher.hexdigest(), size

    def upload_layer(self, number: int, layer: LayerRecord) -> Tuple[str, int]:
        if layer.tar_size <= MONOLITHIC:
            digest, size = self.upload_small(number, layer)
        else:
            digest, size = self.upload_large(number, layer)
        self.records.remember_compressed(layer.diff_id, self.compression, digest, size,
                                         first=True)
        self.records.remember_origin(digest, self.where)
        return digest, size

    def upload_small(self, number: int, layer: LayerRecord) -> Tuple[str, int]:
        data, check = self.stream(number, layer)
        blob = b"".join(data)
        check.verify()
        digest = sha256_bytes(blob)
        if self.uploader.has_blob(digest):  # compressed afresh: HEAD before sending it
            self.blobs["skipped"].append(digest)
            return digest, len(blob)
        self.uploader.finish(self.uploader.start(), digest, blob)
        self.blobs["uploaded"].append(digest)
        return digest, len(blob)

    def upload_large(self, number: int, layer: LayerRecord) -> Tuple[str, int]:
        """A large layer: continue the upload a killed push left (recompressing up to the
        registry's offset), or compress it to a spool file under ``tmp/`` first, so its
        digest is known and asked for (HEAD, mount) before a byte is sent."""
        key = self.records.upload_key(self.dest.name, layer.diff_id, self.compression)
        if self.records.upload(key) is not None:
            data, check = self.stream(number, layer)
            return self.upload_chunked(number, layer, key, data, check.verify)
        staging = self.store.staging("push")
        try:
            path, digest, size = self.spool(number, layer, staging)
            self.records.remember_compressed(layer.diff_id, self.compression, digest, size,
                                             first=True)
            if self.uploader.has_blob(digest):
                self.blobs["skipped"].append(digest)
                return digest, size
            if self.try_mount(digest, False):
                self.blobs["mounted"].append(digest)
                return digest, size
            with open(path, "rb") as handle:
                data = iter(lambda: handle.read(1 << 20), b"")
                return self.upload_chunked(number, layer, key, data, lambda: None)
        finally:
            remove_tree(staging)

    def spool(self, number: int, layer: LayerRecord, staging: str) -> Tuple[str, str, int]:
        path = os.path.join(staging, "blob")
        hasher, size = hashlib.sha256(), 0
        data, check = self.stream(number, layer)
        with open(path, "wb") as handle:
            for piece in data:
                hasher.update(piece)
                handle.write(piece)
                size += len(piece)
        check.verify()
        return path, "sha256:" + hasher.hexdigest(), size

    def upload_chunked(self, number: int, layer: LayerRecord, key: str, data: Iterator[bytes],
                       verify: Callable[[], None]) -> Tuple[str, int]:
        location, offset = self.session(key)
        hasher, produced, pending = hashlib.sha256(), 0, bytearray()
        try:
            for piece in data:
                hasher.update(piece)
                start, produced = produced, produced + len(piece)
                if produced <= offset:
                    continue                      # the registry has these bytes already
                pending += piece[max(0, offset - start):]
                if len(pending) >= self.chunk:
                    location, offset = self.send_chunk(key, location, offset, bytes(pending))
                    pending.clear()
            verify()
            if produced < offset:
                raise Corrupt("the upload session of %s holds more bytes than the layer "
                              "compresses to; run the push again" % self.what(number, layer))
            digest = "sha256:" + hasher.hexdigest()
            self.uploader.finish(location, digest, bytes(pending))
        except (DigestMismatch, Corrupt):
            self.records.forget_upload(key)       # its bytes are not ours: start afresh
            self.uploader.cancel(location)
            raise
        self.records.forget_upload(key)
        self.blobs["uploaded"].append(digest)
        return digest, produced

    def session(self, key: str) -> Tuple[str, int]:
        """The upload a killed push left for this layer (continued where the registry
        stands), or a new one."""
        saved = self.records.upload(key)
        if saved and isinstance(saved.get("location"), str):
            status = self.uploader.offset(saved["location"])
            if status is not None and status[1] == saved.get("offset"):
                return status
            self.uploader.cancel(saved["location"])
        self.records.forget_upload(key)
        return self.uploader.start(), 0

    def send_chunk(self, key: str, location: str, offset: int, data: bytes) -> Tuple[str, int]:
        location = self.uploader.patch(location, offset, data)
        offset += len(data)
        self.records.remember_upload(key, {"name": self.dest.name, "location": location,
                                           "offset": offset})
        crash_point("image_push.chunk")
        return location, offset

    # -- the config
    def ensure_config(self, image: ImageRecord, check_mode: bool) -> None:
        if self.uploader.has_blob(image.id):
            self.blobs["skipped"].append(image.id)
            return
        if self.try_mount(image.id, check_mode):
            self.blobs["mounted"].append(image.id)
            return
        if not check_mode:
            self.uploader.finish(self.uploader.start(), image.id, image.config.raw)
            self.records.remember_origin(image.id, self.where)
        self.blobs["uploaded"].append(image.id)


class TarCheck:
    """Hashes a layer's re-emitted tar on its way to the compressor: what is pushed must
    be the layer the store recorded."""

    def __init__(self, layer: LayerRecord, what: str) -> None:
        self.layer, self.what = layer, what
        self.hasher = hashlib.sha256()
        self.size = 0

    def wrap(self, tar: Iterator[bytes]) -> Iterator[bytes]:
        for data in tar:
            self.hasher.update(data)
            self.size += len(data)
            yield data

    def verify(self) -> None:
        actual = "sha256:" + self.hasher.hexdigest()
        if actual != self.layer.diff_id or self.size != self.layer.tar_size:
            raise Corrupt("%s no longer matches its content (re-emitted as %s): the store is "
                          "damaged, nothing of it was pushed; run strata.layers.store_check"
                          % (self.what, actual))
