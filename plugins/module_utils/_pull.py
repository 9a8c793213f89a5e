# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pulling an image from a registry, layer by layer, skipping what the store holds
(``image_pull``'s entry point is ``_ops/image_pull.py``; the reason idiom is
``PullJob.run``'s, as each question needs the answers of the registry before it).

The reason idiom, cheapest question first:

1. a pull by digest whose manifest was pulled before, with the image still in the store
   and the tags in place: nothing to do, no request at all (content addressed);
2. otherwise one manifest request (for a multi-platform image, of its index).  The same
   digest as the last pull of this name for this platform (a small record per name and
   platform under ``pulls/``) with the image still complete in the
   store: ``changed: false`` after that one request, or only the tags are moved;
3. otherwise the platform's manifest (from an index) and the config (one blob request)
   name the diff_ids, hence the chain ids: a layer whose chain is in the store is never
   downloaded, whichever image or archive brought it.  Check mode stops here.

Into an existing store, the missing layers' blobs download PARALLEL at a time, verified
as they arrive, into a flock-held directory under ``downloads/`` without the store lock
(``Downloads``); the exclusive lock is taken only to apply each layer once it (and those
below it) are in, and to commit, so a slow registry holds up no other change to the
store while download and apply still overlap.
Before that, the image's depth is checked against the driver and, with ``max_size``,
each blob's size: a pull that must fail downloads nothing.

Into a store that does not exist yet, missing layers are fetched with bounded
parallelism under the lock and applied in order: the lowest
missing layer streams straight from the socket into ``Store.ingest_layer``
(decompress, hash, apply in one pass, digest and diff_id verified before anything is
kept) while up to ``PARALLEL - 1`` later ones download into ``tmp/`` (size and digest
verified as they arrive) and are applied from there when their turn comes.  A layer
whose download has not started by its turn is streamed directly instead.

An interrupted pull resumes: each layer is committed by ``ingest_layer`` on its own,
so what was committed stays and is skipped by the next run; partial downloads live in
``tmp/``, swept on the next exclusive open, so they restart from zero.  The image
record and tags are written last, so a killed pull never leaves a tag pointing at an
image with missing layers.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._blobrecords import BlobRecords
from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, makedirs, read_json, remove_tree, wrap_os_error, write_json)
from ansible_collections.strata.layers.plugins.module_utils._compression import (
    DecodedStream, open_file)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, DiffID, chain_ids, hex_of, is_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    ImageConfig, Platform, normalize, parse_config)
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    BlobStream, Descriptor, Manifest, Reference, Registry)
from ansible_collections.strata.layers.plugins.module_utils._regsettings import RegistrySettings
from ansible_collections.strata.layers.plugins.module_utils._store import Store

# Downloads in flight at once: the streamed layer and PARALLEL - 1 ahead of it.  Enough
# to hide per-request latency; more only competes with the applier for CPU and disk.
PARALLEL = 3
# Records of the last pull of each name and platform: a directory of its own, so the
# store's checks of distribution/ (blob digest -> diff_id files only) stay as they are.
RECORDS = "pulls"
# Blobs downloaded before the store lock is taken (see Downloads).
DOWNLOADS = "downloads"


def layer_entry(record: LayerRecord, imported: bool) -> Dict[str, Any]:
    return {"diff_id": record.diff_id, "chain_id": record.chain_id, "size": record.size,
            "imported": imported}


class PullJob:
    """One pull of one reference for one platform into one store."""

    def __init__(self, store: Store, registry: Registry, wanted: Platform, explicit: bool,
                 tags: List[str], max_size: Optional[int]) -> None:
        self.store, self.registry, self.wanted = store, registry, wanted
        self.explicit, self.tags, self.max_size = explicit, tags, max_size
        self.reference: Reference = registry.reference
        self.detected: Dict[int, str] = {}  # layer -> compression of its bytes, if applied

    # -- the record of the last pull of this name and platform
    def record_path(self) -> str:
        key = "%s %s" % (self.reference, self.wanted)
        return os.path.join(self.store.root, RECORDS,
                            hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json")

    def _record(self) -> Optional[Dict[str, Any]]:
        try:
            data = read_json(self.record_path())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("name") != str(self.reference) or \
                not is_digest(data.get("digest")) or not is_digest(data.get("image_id")):
            return None
        return data

    def _write_record(self, manifest: Manifest, image_id: str) -> None:
        """Written under the exclusive lock, which also makes the temp files a crashed
        write left here debris to sweep (the store's recovery does not know this dir)."""
        directory = os.path.dirname(self.record_path())
        makedirs(directory)
        for name in os.listdir(directory):
            if name.startswith(TEMP_PREFIX):
                remove_tree(os.path.join(directory, name))
        write_json(self.record_path(), {
            "name": str(self.reference), "platform": str(self.wanted),
            "digest": manifest.top_digest, "manifest": manifest.digest, "image_id": image_id,
            "layers": [d.digest for d in manifest.layers]})

    # -- the reason idiom
    def run(self, check_mode: bool) -> Dict[str, Any]:
        if self.reference.digest is not None:
            result = self._from_record(self.reference.digest, check_mode)
            if result is not None:
                return result
        top = self._top()
        result = self._from_record(top[2], check_mode)
        if result is not None:
            return result
        manifest = self.registry.resolve(self.wanted, top)
        config = self._config(manifest)
        if check_mode:
            with self.store.read():
                return self._plan(manifest, config)
        if not self.store.exists():
            # nothing else can be using a store that does not exist yet: download and
            # apply in one pass under the lock (and leave nothing behind if it fails)
            with self.store.write("image_pull of %s" % self.reference):
                return self._pull(manifest, config, {})
        with Downloads(self.store.root) as downloads:
            return self._pull_ahead(manifest, config, downloads)

    def _pull_ahead(self, manifest: Manifest, config: ImageConfig,
                    downloads: "Downloads") -> Dict[str, Any]:
        """The missing layers' blobs download, verified, without the store lock (the slow
        part of a pull: other changes to the store go on meanwhile); each is applied
        under the lock as soon as it and those below it are in, while the rest still
        download.  The lock is taken per layer, so a layer applied earlier may be gone
        by the next turn (store_prune of a layer no image uses yet): each turn, and the
        final commit, first applies whatever below it is missing again (its file is
        still there)."""
        with self.store.read():
            chains = chain_ids(config.diff_ids)
            self.store.check_depth(len(chains), str(self.reference))
            self._check_known_blobs(manifest, config)
            missing = [n for n, chain in enumerate(chains) if not self.store.layers.exists(chain)]
        prefetch = LayerFetch(self.store, self.registry, manifest.layers, config.diff_ids,
                              self.max_size, str(self.reference), self.detected)
        futures = prefetch.start(missing, downloads.path)
        imported: Set[int] = set()
        try:
            for number in missing:
                futures[number].result()
                with self.store.write("image_pull of %s (layer %d of %d)"
                                      % (self.reference, number + 1, len(chains))):
                    imported |= self._apply_below(manifest, config, number + 1, futures)
        finally:
            prefetch.stop()
        with self.store.write("image_pull of %s" % self.reference):
            files = {n: f.result() for n, f in futures.items()}
            result = self._pull(manifest, config, files)
        result["layers"] = [dict(layer, imported=layer["imported"] or n in imported)
                            for n, layer in enumerate(result["layers"])]
        result["changed"] = result["changed"] or bool(imported)
        return result

    def _apply_below(self, manifest: Manifest, config: ImageConfig, top: int,
                     futures: Dict[int, Future]) -> Set[int]:
        """Under the lock: apply the layers below ``top`` the store lacks, from their
        downloaded files (a layer never downloaded, gone since, is streamed)."""
        chains = chain_ids(config.diff_ids)[:top]
        todo = [n for n, chain in enumerate(chains) if not self.store.layers.exists(chain)]
        files = {n: futures[n].result() for n in todo if n in futures}
        fetch = LayerFetch(self.store, self.registry, manifest.layers, config.diff_ids,
                           self.max_size, str(self.reference), self.detected)
        return fetch.run(todo, files)

    def _top(self) -> Tuple[bytes, str, str]:
        """The reference's manifest from the first source that has it (mirrors in order,
        then the registry), which then serves the whole pull."""
        sources = self.registry
        if not isinstance(sources, Sources):
            return self.registry.top()
        self.registry, top = sources.first()
        return top

    def _from_record(self, top_digest: str, check_mode: bool) -> Optional[Dict[str, Any]]:
        """The result when the last pull of this name got ``top_digest`` and its image is
        still complete in the store (at most the tags need moving), else None."""
        with self.store.read():
            known = self._known(top_digest)
            if known is None:
                return None
            record, layers = known
            current = self.store.images.tags()
            stale = [tag for tag in self.tags if current.get(tag) != record["image_id"]]
        if stale and not check_mode:
            with self.store.write("image_pull of %s (tags)" % self.reference):
                stale = self.store.tag(record["image_id"], self.tags)
        return self._result(bool(stale), record["image_id"],
                            [layer_entry(r, False) for r in layers],
                            record.get("manifest") or top_digest, top_digest)

    def _known(self, top_digest: str) -> Optional[Tuple[Dict[str, Any], List[LayerRecord]]]:
        if not self.store.exists():
            return None
        record = self._record()
        if record is None or record["digest"] != top_digest or \
                not self.store.images.exists(record["image_id"]):
            return None
        image = self.store.images.get(record["image_id"])
        layers = [self.store.layers.find(ChainID(c)) for c in image.chain]
        if any(layer is None for layer in layers):
            return None
        return record, [layer for layer in layers if layer is not None]

    def _result(self, changed: bool, image_id: str, layers: List[Dict[str, Any]],
                manifest_digest: str, top_digest: str) -> Dict[str, Any]:
        return {"changed": changed, "image_id": image_id, "image_ids": [image_id],
                "layers": layers, "tags": sorted(self.tags), "digest": top_digest,
                "manifest_digest": manifest_digest, "platform": str(self.wanted)}

    def _config(self, manifest: Manifest) -> ImageConfig:
        raw = self.registry.blob_bytes(manifest.config, "config")
        config = parse_config(raw, "%s (config %s)" % (self.reference, manifest.config.digest))
        if len(config.diff_ids) != len(manifest.layers):
            raise Corrupt("%s: manifest %s lists %d layers but its config names %d diff_ids"
                          % (self.reference, manifest.digest, len(manifest.layers),
                             len(config.diff_ids)))
        if self.explicit and manifest.platform is None:
            self._check_platform(config)
        return config

    def _check_platform(self, config: ImageConfig) -> None:
        """A single-platform image asked for by platform must be that platform's."""
        osname, arch = config.data.get("os"), config.data.get("architecture")
        got = normalize(Platform(str(osname), str(arch))) if osname and arch else None
        wanted = (self.wanted.os, self.wanted.architecture)
        if got is not None and (got.os, got.architecture) != wanted:
            raise NotFound("%s is an image for %s/%s only (not an index), not for platform %s"
                           % (self.reference, osname, arch, self.wanted), offered=[
                               "%s/%s" % (osname, arch)])

    def _plan(self, manifest: Manifest, config: ImageConfig) -> Dict[str, Any]:
        exists = self.store.exists()
        layers = []
        for diff_id, chain in zip(config.diff_ids, chain_ids(config.diff_ids)):
            record = self.store.layers.find(chain) if exists else None
            layers.append({"diff_id": diff_id, "chain_id": chain, "imported": record is None,
                           "size": record.size if record is not None else None})
        present = exists and self.store.images.exists(config.id)
        current = self.store.images.tags() if exists else {}
        moved = any(current.get(tag) != config.id for tag in self.tags)
        changed = not present or moved or any(layer["imported"] for layer in layers)
        return self._result(changed, config.id, layers, manifest.digest, manifest.top_digest)

    def _pull(self, manifest: Manifest, config: ImageConfig,
              files: Dict[int, str]) -> Dict[str, Any]:
        store = self.store
        chains = chain_ids(config.diff_ids)
        store.check_depth(len(chains), str(self.reference))
        self._check_known_blobs(manifest, config)
        missing = [n for n, chain in enumerate(chains) if not store.layers.exists(chain)]
        fetch = LayerFetch(store, self.registry, manifest.layers, config.diff_ids, self.max_size,
                           str(self.reference), self.detected)
        imported = fetch.run(missing, files)
        record, added = store.put_image(config, {
            "source": "registry:%s@%s" % (self.reference.name, manifest.digest)})
        moved = store.tag(record.id, self.tags)
        self._write_record(manifest, record.id)
        self._remember_blobs(manifest, config)
        layers = [layer_entry(store.layers.get(chain), n in imported)
                  for n, chain in enumerate(chains)]
        return self._result(bool(imported) or added or bool(moved), record.id, layers,
                            manifest.digest, manifest.top_digest)

    def _remember_blobs(self, manifest: Manifest, config: ImageConfig) -> None:
        """For pushes: which blob holds each layer (when verified: applied now in the
        compression its media type names, or known to decompress to it) and that it lives
        in this repository (a mount source)."""
        records = BlobRecords(self.store.root)
        name = "%s/%s" % (self.registry.address, self.reference.repository)
        for number, (desc, diff_id) in enumerate(zip(manifest.layers, config.diff_ids)):
            kind = blob_compression(desc.media_type)
            found = self.detected.get(number)   # what its bytes were, when applied now
            if found is not None:
                verified = found == kind
            else:
                verified = self.store.known_diff_id(desc.digest) == diff_id \
                    or (desc.digest == diff_id and kind == "none")
            if kind is not None and verified:
                records.remember_compressed(diff_id, kind, desc.digest, desc.size)
            records.remember_origin(desc.digest, name)
        records.remember_origin(manifest.config.digest, name)

    def _check_known_blobs(self, manifest: Manifest, config: ImageConfig) -> None:
        """A blob seen before decompressed to one diff_id; a config naming another for it
        does not belong to this manifest (caught before any download)."""
        for number, (desc, diff_id) in enumerate(zip(manifest.layers, config.diff_ids), 1):
            known = self.store.known_diff_id(desc.digest)
            if known is not None and known != diff_id:
                raise DigestMismatch(
                    "%s failed verification: layer %d is blob %s, which holds diff_id %s (seen "
                    "before), but the config names %s; the manifest and config do not belong "
                    "together" % (self.reference, number, desc.digest, known, diff_id),
                    expected=diff_id, actual=known)


def blob_compression(media_type: str) -> Optional[str]:
    if media_type.endswith("+gzip") or media_type.endswith(".tar.gzip"):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    if media_type.endswith(".tar") or media_type.endswith(".diff.tar"):
        return "none"
    return None


class Sources:
    """The registry a pull names and its mirrors, tried in order (as registries.conf
    does): a mirror that lacks the image, refuses us or cannot be reached is passed over,
    and the registry's own answer (or error) is what counts in the end."""

    def __init__(self, reference: Reference, settings: RegistrySettings) -> None:
        self.reference = reference
        self.settings = settings
        self.skipped: List[str] = []

    def registry(self, mirror: Optional[str]) -> Registry:
        settings, ref = self.settings, self.reference
        creds = settings.credentials(mirror or ref.registry, ref.repository,
                                     explicit=mirror is None)
        return Registry(ref, insecure=settings.insecure, ca_path=settings.ca_path,
                        timeout=settings.timeout, connect_timeout=settings.connect_timeout,
                        deadline=settings.blob_timeout, credentials=creds, host=mirror)

    def first(self) -> Tuple[Registry, Tuple[bytes, str, str]]:
        for mirror in self.settings.mirrors:
            candidate = self.registry(mirror)
            try:
                return candidate, candidate.top()
            except StoreError as exc:
                self.skipped.append("%s: %s" % (mirror, exc))
        main = self.registry(None)
        return main, main.top()


class LayerFetch:
    """The missing layers of one image: downloaded ahead in parallel, applied in order."""

    def __init__(self, store: Store, registry: Registry, blobs: List[Descriptor],
                 diff_ids: List[DiffID], max_size: Optional[int], name: str,
                 detected: Optional[Dict[int, str]] = None) -> None:
        self.store, self.registry, self.blobs = store, registry, blobs
        self.diff_ids, self.max_size, self.name = diff_ids, max_size, name
        # layer number -> compression found in the bytes of a blob applied (as
        # blob_compression names it), for Pull._remember_blobs
        self.detected: Dict[int, str] = {} if detected is None else detected
        self.chains = chain_ids(diff_ids)
        self._stop = threading.Event()
        self._pool: Optional[ThreadPoolExecutor] = None

    def what(self, number: int) -> str:
        return "layer %d/%d (blob %s) of %s" % (number + 1, len(self.blobs),
                                                self.blobs[number].digest, self.name)

    def start(self, missing: List[int], directory: str) -> Dict[int, Future]:
        """Start downloading ``missing`` into ``directory``, PARALLEL at a time, bottom
        first, each verified as it arrives: layer number -> its file's future."""
        self._check_sizes(missing)
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="strata-pull")
        return {n: self._pool.submit(self._download, n, directory) for n in missing}

    def stop(self) -> None:
        """Stop the downloads still running (between chunks) and wait for them."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, missing: List[int], files: Dict[int, str]) -> Set[int]:
        """Fetch and apply ``missing`` (layer numbers, bottom up); returns those imported.
        A layer in ``files`` was downloaded before the lock was taken."""
        if not missing:
            return set()
        self._check_sizes(missing)
        staging = self.store.staging("pull")
        pool = ThreadPoolExecutor(max_workers=PARALLEL - 1, thread_name_prefix="strata-pull")
        try:
            ahead: Dict[int, Future] = {n: pool.submit(self._download, n, staging)
                                        for n in missing[1:] if n not in files}
            imported: Set[int] = set()
            for number in missing:
                future = ahead.get(number)
                if number in files:
                    path = files[number]
                    new = self._ingest(number, lambda path=path, n=number: open_file(
                        path, self.what(n)))
                elif future is None or future.cancel():
                    new = self._ingest(number, self._stream_opener(number))
                else:
                    path = future.result()
                    new = self._ingest(number, lambda path=path, n=number: open_file(
                        path, self.what(n)))
                    os.unlink(path)
                if new:
                    imported.add(number)
            return imported
        finally:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            remove_tree(staging)

    def _check_sizes(self, missing: List[int]) -> None:
        """With ``max_size``, a blob much larger than it cannot decompress to less (gzip and
        zstd add a few bytes a block at worst): refused before anything is downloaded,
        so no download ahead fills ``tmp/`` with it."""
        if self.max_size is None:
            return
        bound = self.max_size + self.max_size // 64 + (64 << 10)
        for number in missing:
            if self.blobs[number].size > bound:
                raise InvalidInput("%s is %d bytes compressed, beyond max_size (%d bytes): "
                                   "refused before downloading" % (
                                       self.what(number), self.blobs[number].size,
                                       self.max_size))

    def _download(self, number: int, staging: str) -> str:
        path = os.path.join(staging, "%d-%s" % (number, hex_of(self.blobs[number].digest)))
        try:
            self.registry.download(self.blobs[number], path, self.what(number), self._stop.is_set)
        except OSError as exc:
            raise wrap_os_error(exc, "downloading %s into %s" % (self.what(number), staging)) \
                from exc
        return path

    def _stream_opener(self, number: int) -> "Opener":
        return Opener(self.registry, self.blobs[number], self.what(number))

    def _ingest(self, number: int, opener: Callable[[], DecodedStream]) -> bool:
        parent = self.chains[number - 1] if number else None
        desc = self.blobs[number]

        def opened() -> DecodedStream:
            stream = opener()
            self.detected[number] = "none" if stream.compression == "plain" \
                else stream.compression
            return stream

        try:
            _record, imported, _digests = self.store.ingest_layer(
                opened, parent, self.what(number), expect_blob=desc.digest,
                expect_diff=self.diff_ids[number], max_size=self.max_size)
        except (DigestMismatch, Corrupt) as exc:
            if "failed verification" in str(exc):  # the registry client said so already
                raise
            raise DigestMismatch("blob %s failed verification (the registry's copy does not "
                                 "match what the image's manifest and config name: it is "
                                 "damaged or was tampered with): %s" % (desc.digest, exc),
                                 **exc.details) from exc
        finally:
            close = getattr(opener, "close", None)
            if close is not None:
                close()
        return imported


class Opener:
    """Opens a blob as a DecodedStream for ``ingest_layer``; ``close`` ends the response
    (the DecodedStream only closes what it owns)."""

    def __init__(self, registry: Registry, desc: Descriptor, what: str) -> None:
        self.registry, self.desc, self.what = registry, desc, what
        self.blob: Optional[BlobStream] = None

    def __call__(self) -> DecodedStream:
        self.blob = self.registry.open_blob(self.desc, self.what)
        return DecodedStream(self.blob.read, what=self.what)

    def close(self) -> None:
        if self.blob is not None:
            self.blob.close()
            self.blob = None


class Downloads:
    """A private directory under ``<data_root>/downloads/`` for blobs fetched without
    the store lock, held with flock for as long as it is in use.

    ``tmp/`` cannot hold them: every exclusive open sweeps it, and other changes take
    the lock while a download runs.  A directory left by a killed pull is unlocked; the
    next pull removes it (older than a minute, so one being created right now, between
    its mkdir and its flock, is never taken for debris)."""

    STALE_AFTER = 60.0

    def __init__(self, root: str) -> None:
        self.base = os.path.join(root, DOWNLOADS)
        self.path = os.path.join(self.base, secrets.token_hex(8))
        self._fd = -1

    def __enter__(self) -> "Downloads":
        try:
            makedirs(self.base)
            self._sweep()
            os.mkdir(self.path, 0o700)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise wrap_os_error(exc, "making a download directory in %s" % self.base) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        remove_tree(self.path)
        if self._fd >= 0:
            os.close(self._fd)

    def _sweep(self) -> None:
        for name in os.listdir(self.base):
            path = os.path.join(self.base, name)
            try:
                if time.time() - os.lstat(path).st_mtime < self.STALE_AFTER:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue                    # in use by a pull running now
            finally:
                os.close(fd)
            remove_tree(path)
