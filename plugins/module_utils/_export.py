# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing images as ``docker-archive``, ``oci-archive`` or ``oci-layout`` (``image_export``'s
entry point is ``_ops/image_export.py``).

Layers are re-emitted from their header records and the driver's files, byte for byte
as they were imported (the original tar is never kept): every blob is hashed while it
is written and must match its diff_id, or the export fails and leaves nothing.

Archives use the layout ``docker save`` writes since Docker 25 (an OCI image layout
plus ``manifest.json`` and ``repositories``), which ``docker load``, ``podman load`` and
``skopeo`` read; layers are uncompressed tars, so their blob digest is their diff_id.
Member headers are deterministic (mtime 0, root-owned): exporting the same image twice
gives the same bytes.  Archives are written to a temp file beside ``dest`` and renamed.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _files as files
from ansible_collections.strata.layers.plugins.module_utils._archive import MAX_JSON
from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    dumps, wrap_os_error, write_file, write_stream)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, chain_ids, hex_of, sha256_bytes)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._imageref import split_reference
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import loads
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._safepath import (
    Beneath, NotBeneath)
from ansible_collections.strata.layers.plugins.module_utils._sparse import SparseWriter
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    DIRTYPE, REGTYPE, encode_header, end_of_archive, padding)
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import emit

FORMATS = ("docker-archive", "oci-archive", "oci-layout")
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
Sink = Callable[[Any], object]


@dataclass
class Blob:
    """One blob of the export: bytes in memory, or a layer re-emitted on demand."""

    digest: str
    size: int
    data: Optional[bytes] = None
    layer: Optional[LayerRecord] = None

    @property
    def name(self) -> str:
        return "blobs/sha256/" + hex_of(self.digest)


class Plan:
    """Every blob and metadata file of one image's export."""

    def __init__(self, store: Store, image: ImageRecord, tags: List[str],
                 omit: Optional[Set[str]] = None) -> None:
        self.image = image
        self.tags = tags
        records = [store.layers.get(ChainID(c)) for c in chain_ids(image.config.diff_ids)]
        self.layers: List[Blob] = []
        # the layers a receiving store already holds (by chain id): named by the
        # manifests, their blobs left out (layer_import skips a held layer unread)
        self.omitted = [r.chain_id for r in records if omit and r.chain_id in omit]
        seen = set()
        for record in records:
            if record.chain_id not in self.omitted and record.diff_id not in seen:
                seen.add(record.diff_id)
                self.layers.append(Blob(record.diff_id, record.tar_size, layer=record))
        self.layer_digests = [r.diff_id for r in records]
        sizes = {r.diff_id: r.tar_size for r in records}
        self.config = Blob(image.id, len(image.config.raw), data=image.config.raw)
        manifest = dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                          "config": {"mediaType": MT_CONFIG, "digest": image.id,
                                     "size": len(image.config.raw)},
                          "layers": [{"mediaType": MT_LAYER, "digest": d, "size": sizes[d]}
                                     for d in self.layer_digests]})
        self.manifest = Blob(sha256_bytes(manifest), len(manifest), data=manifest)

    def index(self) -> bytes:
        desc: Dict[str, Any] = {"mediaType": MT_MANIFEST, "digest": self.manifest.digest,
                                "size": self.manifest.size}
        if self.tags:
            desc["annotations"] = {"io.containerd.image.name": self.tags[0],
                                   "org.opencontainers.image.ref.name": self.tags[0]}
        return dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc]})

    def docker_manifest(self) -> bytes:
        return dumps([{"Config": self.config.name, "RepoTags": self.tags or None,
                       "Layers": ["blobs/sha256/" + hex_of(d) for d in self.layer_digests]}])

    def repositories(self) -> bytes:
        repos: Dict[str, Dict[str, str]] = {}
        top = hex_of(self.layer_digests[-1]) if self.layer_digests else ""
        for tag in self.tags:
            name, version = split_reference(tag)
            repos.setdefault(name, {})[version] = top
        return dumps(repos)

    def blobs(self) -> List[Blob]:
        return self.layers + [self.config, self.manifest]


class Export:
    """The plans of every image one archive holds (``docker save a b c``): each blob
    once, one manifest (index entry, ``manifest.json`` entry) per image."""

    def __init__(self, plans: List[Plan]) -> None:
        self.plans = plans

    def blobs(self) -> List[Blob]:
        seen, out = set(), []
        for plan in self.plans:
            for blob in plan.blobs():
                if blob.digest not in seen:
                    seen.add(blob.digest)
                    out.append(blob)
        return out

    def index(self) -> bytes:
        if len(self.plans) == 1:
            return self.plans[0].index()
        entries = [json.loads(p.index())["manifests"][0] for p in self.plans]
        return dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries})

    def layout_entries(self) -> List[Dict[str, Any]]:
        """The index entries an oci-layout gets: one per tag, each naming it (as skopeo
        and ``docker save`` name every tag), one unnamed for an image exported by id."""
        entries = []
        for plan in self.plans:
            desc = json.loads(plan.index())["manifests"][0]
            desc.pop("annotations", None)
            for tag in plan.tags or [None]:
                entry = dict(desc)
                if tag is not None:
                    entry["annotations"] = {"io.containerd.image.name": tag, REF_NAME: tag}
                entries.append(entry)
        return entries

    def docker_manifest(self) -> bytes:
        return dumps([json.loads(p.docker_manifest())[0] for p in self.plans])

    def repositories(self) -> bytes:
        repos: Dict[str, Dict[str, str]] = {}
        for plan in self.plans:
            for name, versions in json.loads(plan.repositories()).items():
                repos.setdefault(name, {}).update(versions)
        return dumps(repos)

    def metadata(self, fmt: str) -> List[Tuple[str, bytes]]:
        files = [("oci-layout", dumps({"imageLayoutVersion": "1.0.0"})),
                 ("index.json", self.index())]
        if fmt == "docker-archive":
            files += [("manifest.json", self.docker_manifest()),
                      ("repositories", self.repositories())]
        return files


def write_blob(store: Store, blob: Blob, sink: Sink) -> None:
    """Send ``blob`` to ``sink``; a layer must re-emit to its diff_id."""
    if blob.data is not None:
        sink(blob.data)
        return
    layer = blob.layer
    if layer is None:
        raise StoreError("internal error: blob %s has no content" % blob.digest)
    digest, size = emit(store.layers.split_path(layer.chain_id),
                        store.driver.layer_files(layer.chain_id), sink)
    if digest != layer.diff_id or size != layer.tar_size:
        raise Corrupt("layer %s no longer matches its content (re-emitted as %s): the store "
                      "is damaged; run strata.layers.store_check" % (layer.diff_id, digest))


class _FileSink:
    """Writes an export; runs of zeros (a sparse file's holes) stay holes in it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.writer = SparseWriter(fd)

    def __call__(self, data: Any) -> None:
        view = memoryview(data)
        self.size += len(view)
        self.writer.write(view)

    def finish(self) -> None:
        self.writer.finish()


def write_archive(store: Store, plan: Export, fmt: str, dest: str) -> None:
    try:
        # 0600 as ``docker save -o`` writes it: the store is 0700 and an image may hold
        # secrets; an oci-layout's files stay 0644 (as skopeo writes them), their
        # directory being the operator's to restrict
        with write_stream(dest, mode=0o600) as out:
            sink = _FileSink(out.fileno())
            for name in ("blobs/", "blobs/sha256/"):
                sink(encode_header(name.encode(), DIRTYPE, 0o755))
            for blob in plan.blobs():
                sink(encode_header(blob.name.encode(), REGTYPE, 0o644, size=blob.size))
                write_blob(store, blob, sink)
                sink(padding(blob.size))
            for name, data in plan.metadata(fmt):
                sink(encode_header(name.encode(), REGTYPE, 0o644, size=len(data)))
                sink(data + padding(len(data)))
            sink(end_of_archive())
            sink.finish()
    except OSError as exc:
        raise wrap_os_error(exc, "writing %s" % dest) from exc


def write_layout(store: Store, plan: Export, dest: str) -> None:
    os.makedirs(dest, mode=0o755, exist_ok=True)
    with LayoutDest(dest) as layout:
        index = os.path.join(dest, "index.json")
        current = existing_entries(layout.path("index.json"), index)   # refused first
        for blob in plan.blobs():
            if layout.blob_ok(blob):
                continue
            with write_stream(layout.blob_path(blob)) as out:
                sink = _FileSink(out.fileno())
                write_blob(store, blob, sink)
                sink.finish()
        for name, data in plan.metadata("oci-layout"):
            if name == "index.json":
                data = _merged_index(current, plan)
            write_file(layout.path(name), data)


class LayoutDest:
    """An oci-layout ``dest`` opened once (``dest`` itself may be a symlink: the user
    named it, and it was checked against the store), with ``blobs/sha256`` made and
    opened one component at a time beneath it, never through a symlink: a ``blobs``
    linked to another directory (the store's ``layers/`` even) would have the export
    write there.  Files are written through ``/proc/self/fd/<dir>/<name>``: the temp
    file and the rename stay in the opened directory, and a symlink at ``name`` is
    replaced, never followed."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self._beneath = Beneath(os.path.realpath(dest), cache_size=4)
        try:
            self._blobs = self._beneath.dir_fd(b"blobs/sha256", create=_mkdir)
        except NotBeneath as exc:
            self._beneath.close()
            raise _linked(dest, exc) from exc
        except BaseException:
            self._beneath.close()
            raise

    def __enter__(self) -> "LayoutDest":
        return self

    def __exit__(self, *exc: object) -> None:
        self._beneath.close()

    def path(self, name: str) -> str:
        return "/proc/self/fd/%d/%s" % (self._beneath.root_fd, name)

    def blob_path(self, blob: Blob) -> str:
        return "/proc/self/fd/%d/%s" % (self._blobs, hex_of(blob.digest))

    def blob_ok(self, blob: Blob) -> bool:
        """The blob is a regular file (not a symlink) of its size and digest."""
        try:
            fd = os.open(hex_of(blob.digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                         os.O_CLOEXEC, dir_fd=self._blobs)
        except OSError:
            return False
        try:
            return blob_matches(fd, blob)
        finally:
            os.close(fd)


def check_layout_dest(dest: str) -> None:
    """What ``LayoutDest`` would refuse in ``dest`` (check mode makes nothing)."""
    try:
        with Beneath(os.path.realpath(dest), cache_size=4) as beneath:
            beneath.dir_fd(b"blobs/sha256")
    except NotBeneath as exc:
        raise _linked(dest, exc) from exc
    except OSError:
        pass                    # missing yet (made by the export), or refused there


def _linked(dest: str, exc: NotBeneath) -> InvalidInput:
    shown = os.path.join(dest, os.fsdecode(exc.blocker))
    return InvalidInput("dest %s: %s %s; an oci-layout export writes only into directories "
                        "of dest itself (remove it)" % (dest, shown, exc.reason))


def _mkdir(parent_fd: int, name: bytes, _rel: bytes) -> None:
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass


def blob_matches(fd: int, blob: Blob) -> bool:
    """``fd`` is a regular file of ``blob``'s size and digest."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != blob.size:
        return False
    return "sha256:" + files.fd_sha256(fd) == blob.digest


def _merged_index(current: List[Dict[str, Any]], plan: Export) -> bytes:
    """Our entries replace those of the same name (and unnamed ones of the same digest);
    other images, and other names of the same image, stay."""
    mine = plan.layout_entries()
    return dumps({"schemaVersion": 2, "mediaType": MT_INDEX,
                  "manifests": others_of(current, mine) + mine})


def ref_name(entry: Dict[str, Any]) -> Optional[str]:
    name = (entry.get("annotations") or {}).get(REF_NAME)
    return name if isinstance(name, str) else None


def others_of(current: List[Dict[str, Any]], mine: List[Dict[str, Any]]
              ) -> List[Dict[str, Any]]:
    """The entries of ``current`` a merge of ``mine`` keeps."""
    names = {ref_name(m) for m in mine} - {None}
    digests = {m["digest"] for m in mine}
    return [m for m in current if ref_name(m) not in names and
            not (ref_name(m) is None and m.get("digest") in digests)]


def layout_current(current: List[Dict[str, Any]], plan: Export) -> bool:
    """The index already names every tag of the export at its manifest, once (a merge
    would leave it as it is)."""
    mine = plan.layout_entries()
    kept = others_of(current, mine)
    return sorted(dumps(m) for m in current if m not in kept) == sorted(dumps(m) for m in mine)


def existing_entries(path: str, shown: Optional[str] = None) -> List[Dict[str, Any]]:
    """The manifest descriptors of the index.json already at ``path`` (none when there
    is none).  An export merges into it, so anything it cannot merge safely is refused,
    before anything is written, naming the file (``shown``): not a regular file (a
    symlink is not followed), larger than an index may be, not JSON (or too deep), or
    descriptors that are not objects with a string digest and object annotations.
    Dropping such entries silently would lose the other images of the layout."""
    shown = shown or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InvalidInput("dest index %s cannot be read (%s); an export merges its "
                           "entries: fix or remove it" % (shown, _why(exc))) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput("dest index %s is not a regular file; an export merges its "
                               "entries: fix or remove it" % shown)
        if st.st_size > MAX_JSON:
            raise InvalidInput("dest index %s is %d bytes, more than the %d an index may "
                               "have: fix or remove it" % (shown, st.st_size, MAX_JSON))
        raw = os.pread(fd, MAX_JSON + 1, 0)
    finally:
        os.close(fd)
    try:
        top = loads(raw, "dest index %s" % shown)
    except StoreError as exc:
        raise InvalidInput("dest index %s is not an OCI index an export can merge into (%s): "
                           "fix or remove it" % (shown, exc)) from exc
    entries = top.get("manifests", []) if isinstance(top, dict) else None
    if not isinstance(entries, list) or not all(_mergeable(m) for m in entries):
        raise InvalidInput("dest index %s is not an OCI index an export can merge into (its "
                           "manifests must be a list of descriptors with a string digest and "
                           "object annotations): fix or remove it" % shown)
    return entries


def _why(exc: OSError) -> str:
    return "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)


def _mergeable(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("digest"), str) and \
        isinstance(entry.get("annotations") or {}, dict)
