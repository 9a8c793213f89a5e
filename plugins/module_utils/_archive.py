# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading image archives: ``docker-archive`` (``docker save``), ``oci-archive`` and
``oci-layout`` directories.

An archive is indexed once (tar headers only: data is skipped with seeks), then
manifests and configs are read and verified, and each layer is handed to the store
as a stream over its byte range, so nothing is copied out of the archive first.
Symlinked duplicate layers (older ``docker save``) resolve inside the archive, never
outside it.  Blob sizes are checked against their descriptors before a blob is read.

A compressed archive is decompressed into the store's tmp/ and indexed there; check
mode, which writes nothing, reads it once as a stream instead and keeps only its
metadata in memory (MemIndex).  ``auto`` detection takes a tar for an archive only when
its manifest.json or index.json parses as one: a layer may hold a web app's
manifest.json.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._compression import (
    CHUNK, DecodedStream, RangeReader, detect, open_regular, read_head)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    hex_of, is_digest, sha256_bytes)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, NotFound, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    ImageConfig, Platform, host_platform, json_object, parse_config, pick_platform)
from ansible_collections.strata.layers.plugins.module_utils._imageref import normalize_tag
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import Bounds, loads
from ansible_collections.strata.layers.plugins.module_utils._safepath import (
    Beneath, NotBeneath)
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    BLOCK, DIRTYPE, GNU_LONGLINK, GNU_LONGNAME, LNKTYPE, MAX_EXTENSION, PAX_GLOBAL, PAX_LOCAL,
    SYMTYPE, ZERO_BLOCK, ChunkReader, HeaderParser, Member, parse_pax)

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
MAX_JSON = 16 << 20
MAX_KEPT = 4 * MAX_JSON
RawRead = Callable[[int], bytes]


@dataclass
class Entry:
    name: str
    typeflag: bytes
    offset: int
    size: int
    linkname: str = ""


def _norm(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


class _Members:
    """Members of a tar, by normalised name: what TarIndex and MemIndex share."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: Dict[str, Entry] = {}
        self.order: List[str] = []

    def _add(self, member: Member, offset: int) -> Entry:
        name = _norm(member.name.decode("utf-8", "surrogateescape"))
        entry = Entry(name, member.typeflag, offset, member.size,
                      member.linkname.decode("utf-8", "surrogateescape"))
        self.entries[name] = entry
        self.order.append(name)
        return entry

    def has(self, name: str) -> bool:
        return _norm(name) in self.entries

    def resolve(self, name: str) -> Entry:
        seen = 0
        name = _norm(name)
        while True:
            entry = self.entries.get(name)
            if entry is None:
                raise NotFound("archive %s has no member %r" % (self.path, name))
            if entry.typeflag == SYMTYPE:
                target = entry.linkname
                base = os.path.dirname(name)
                joined = os.path.normpath(os.path.join(base, target)) if not target.startswith("/") \
                    else os.path.normpath(target.lstrip("/"))
                if joined.startswith(".."):
                    raise InvalidInput("archive %s: member %r links outside the archive"
                                       % (self.path, name), member=name)
                name = _norm(joined)
            elif entry.typeflag == LNKTYPE:
                name = _norm(entry.linkname)
            else:
                return entry
            seen += 1
            if seen > 16:
                raise InvalidInput("archive %s: member %r is a link loop" % (self.path, name),
                                   member=name)

    def _blob(self, name: str) -> Entry:
        entry = self.resolve(name)
        if entry.typeflag == DIRTYPE:
            raise InvalidInput("archive %s: %r is a directory, not a blob" % (self.path, name))
        return entry

    def size(self, name: str) -> int:
        """Bytes of a blob, from its header: checked against a descriptor before reading."""
        return self._blob(name).size


class TarIndex(_Members):
    """Members of an uncompressed tar file, by normalised name.  ``shown`` is the name
    messages give the archive (``src`` when ``path`` is a decompressed copy of it)."""

    def __init__(self, path: str, shown: Optional[str] = None) -> None:
        super().__init__(shown or path)
        self.fd = open_regular(path, shown)
        try:
            self._scan()
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _scan(self) -> None:
        pos = [0]
        end = os.fstat(self.fd).st_size

        def source() -> bytes:
            data = os.pread(self.fd, BLOCK, pos[0])
            pos[0] += len(data)
            return data

        parser = HeaderParser(ChunkReader(source, what=self.path))
        while True:
            member = parser.next()
            if member is None:
                return
            entry = self._add(member, pos[0])
            pos[0] += member.size + member.padding
            if pos[0] > end:
                # a size past the end (up to 2^95 in base-256) would overflow pread
                raise Corrupt("archive %s is truncated: member %r runs past its end"
                              % (self.path, entry.name), member=entry.name)

    def opener(self, name: str) -> Tuple[RawRead, int]:
        entry = self._blob(name)
        return RangeReader(self.fd, entry.offset, entry.size).read, entry.size

    def stream(self, name: str, what: str) -> DecodedStream:
        """The decoded stream of member ``name`` (read from the archive's descriptor)."""
        return DecodedStream(self.opener(name)[0], what=what, read_ahead=True)

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        entry = self.resolve(name)
        if entry.size > limit:
            raise InvalidInput("archive %s: %r is %d bytes, more than the %d a manifest or config "
                               "may have" % (self.path, name, entry.size, limit))
        data = os.pread(self.fd, entry.size, entry.offset)
        if len(data) != entry.size:
            raise Corrupt("archive %s is truncated inside %r" % (self.path, name))
        return data


class MemIndex(_Members):
    """A tar stream read once, front to back, keeping in memory only what may be
    metadata (the archive's own files, ``*.json`` members and blobs that begin like
    JSON, each of up to MAX_JSON bytes, MAX_KEPT in all): how check mode reads a
    compressed archive without writing anything.  ``tar_digest`` is the digest of the
    whole stream once it was read to its end."""

    def __init__(self, path: str, limits: Optional["Limits"] = None) -> None:
        super().__init__(path)
        self.data: Dict[str, bytes] = {}
        self.kept = 0
        self.tar_digest: Optional[str] = None
        self.json_size = limits.json_size if limits else MAX_JSON
        self.json_total = limits.json_total if limits else MAX_KEPT

    def close(self) -> None:
        self.data = {}

    def add(self, member: Member, reader: ChunkReader) -> None:
        """Index ``member`` and consume its data (and padding) from ``reader``."""
        entry = self._add(member, -1)
        self.data.pop(entry.name, None)     # a later member of the same name replaces it
        left = member.size
        if member.is_file and left <= self.json_size and _may_be_metadata(entry.name):
            head = reader.read_exact(min(left, BLOCK), "member %r" % entry.name)
            left -= len(head)
            # blobs/ holds the layers too: only a blob that begins like JSON is kept
            if not entry.name.startswith("blobs/") or head.lstrip()[:1] in (b"{", b"["):
                self._keep(entry.name, head + reader.read_exact(left, "member %r" % entry.name))
                left = 0
        _skip(reader, left + member.padding, entry.name)

    def _keep(self, name: str, data: bytes) -> None:
        self.kept += len(data)
        if self.kept > self.json_total:
            raise InvalidInput("archive %s holds more than %d bytes of JSON: refused (raise "
                               "max_metadata_size if it is genuine)" % (self.path, self.json_total),
                               member=name)
        self.data[name] = data

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        entry = self.resolve(name)
        if entry.size > limit:
            raise InvalidInput("archive %s: %r is %d bytes, more than the %d a manifest or config "
                               "may have" % (self.path, name, entry.size, limit))
        data = self.data.get(entry.name)
        if data is None:
            raise Corrupt("archive %s: %r is not JSON (a layer where a manifest or config "
                          "belongs)" % (self.path, name))
        return data

    def opener(self, name: str) -> Tuple[RawRead, int]:
        raise Unsupported("internal error: archive %s was read as a stream; its blob %r "
                          "cannot be opened again" % (self.path, name))

    def stream(self, name: str, what: str) -> DecodedStream:
        return DecodedStream(self.opener(name)[0], what=what)


def _may_be_metadata(name: str) -> bool:
    return name in ARCHIVE_NAMES or name.endswith(".json") or name.startswith("blobs/")


def _skip(reader: ChunkReader, left: int, name: str) -> None:
    while left:
        piece = reader.read_some(min(left, CHUNK))
        if not piece:
            raise Corrupt("%s is truncated inside %r" % (reader.what, name), member=name)
        left -= len(piece)


def index_stream(source: Callable[[], bytes], what: str,
                 until: Optional[Callable[[MemIndex], bool]] = None,
                 limits: Optional["Limits"] = None) -> MemIndex:
    """A MemIndex of the tar stream ``source`` hands out in chunks: all of it (and its
    digest), or only its first members, until ``until`` says enough (to tell what it is)."""
    index = MemIndex(what, limits)
    reader = ChunkReader(source, what=what)
    parser = HeaderParser(reader)
    while until is None or not until(index):
        member = parser.next()
        if member is None:
            if until is None:
                _skip_to_end(reader)
                index.tar_digest = "sha256:" + reader.hasher.hexdigest()
            break
        index.add(member, reader)
    return index


def _skip_to_end(reader: ChunkReader) -> None:
    """Read what follows the end-of-archive marker: the stream's digest covers it."""
    while reader.read_some(CHUNK):
        pass


class DirIndex:
    """An OCI layout directory, read as TarIndex is (``has``, ``read``, ``size``,
    ``stream``), except that a blob has no ``opener``: each stream owns its descriptor.

    Every file is opened component by component from a descriptor of the layout
    (``Beneath``): a symlinked ``blobs`` or ``blobs/sha256`` would otherwise make the
    import read whatever directory of the host it names.  ``path`` itself is followed:
    the user named it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._beneath: Optional[Beneath] = None

    def close(self) -> None:
        if self._beneath is not None:
            self._beneath.close()
            self._beneath = None

    def _root(self) -> Beneath:
        if self._beneath is None:
            try:
                self._beneath = Beneath(os.path.realpath(self.path), cache_size=8)
            except OSError as exc:
                raise StoreError("cannot open OCI layout %s: %s"
                                 % (self.path, exc.strerror)) from exc
        return self._beneath

    def _rel(self, name: str) -> bytes:
        name = _norm(name)
        if name.startswith("..") or "/../" in "/" + name + "/":
            raise InvalidInput("OCI layout %s: %r lies outside the layout" % (self.path, name))
        return os.fsencode(name)

    def has(self, name: str) -> bool:
        try:
            fd = self._open_at(self._rel(name))
        except (OSError, NotBeneath):
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    def _open_at(self, rel: bytes) -> int:
        return self._root().open_file(rel, os.O_RDONLY | os.O_NONBLOCK)

    def _open_regular(self, name: str, what: str) -> int:
        """A descriptor of a regular file of the layout.  Never through a symlink (it
        could name any file or directory of the host) nor of a FIFO or device: /dev/zero
        as index.json is an endless read, a FIFO a read that never starts."""
        try:
            fd = self._open_at(self._rel(name))
        except NotBeneath as exc:
            shown = os.fsdecode(exc.blocker)
            message = "OCI layout %s: %s %s; the layout must hold its blobs and indexes " \
                "in directories of its own" % (self.path, shown, exc.reason)
            raise InvalidInput(message, member=shown) from exc
        except FileNotFoundError as exc:
            raise NotFound("OCI layout %s has no %s%s" % (self.path, what, name)) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidInput("OCI layout %s: %s is a symlink; the layout must hold its "
                                   "blobs and indexes as regular files" % (self.path, name),
                                   member=name) from exc
            raise StoreError("cannot read %s of OCI layout %s: %s"
                             % (name, self.path, exc.strerror)) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidInput("OCI layout %s: %s is not a regular file" % (self.path, name),
                               member=name)
        return fd

    def open_blob(self, name: str) -> int:
        """A descriptor of regular file ``name`` of the layout (the caller closes it)."""
        return self._open_regular(name, "blob ")

    def size(self, name: str) -> int:
        fd = self._open_regular(name, "blob ")
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def stream(self, name: str, what: str) -> DecodedStream:
        """The decoded stream of blob ``name``, owning its descriptor: closing the stream
        closes the file, so an import of a thousand layers never holds a thousand files
        open (with RLIMIT_NOFILE at 1024 it failed with EMFILE)."""
        fd = self._open_regular(name, "blob ")
        try:
            size = os.fstat(fd).st_size
            return DecodedStream(RangeReader(fd, 0, size).read, what=what, owned_fd=fd,
                                 read_ahead=True)
        except BaseException:
            os.close(fd)
            raise

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        fd = self._open_regular(name, "")
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise InvalidInput("OCI layout %s: %s is %d bytes, too large for JSON"
                                   % (self.path, name, size))
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)


@dataclass
class LayerRef:
    """One layer of an archived image: where its blob is and what it must hash to."""

    member: str
    diff_id: str
    digest: Optional[str] = None
    size: Optional[int] = None


@dataclass
class ArchiveImage:
    config: ImageConfig
    layers: List[LayerRef]
    tags: List[str] = field(default_factory=list)
    manifest_digest: Optional[str] = None


@dataclass(frozen=True)
class Limits:
    """What an archive may make the reader hold: bytes of one manifest, index or config,
    bytes of all of them together, images (entries of manifest.json or of an index) and
    layers of one image.  The defaults are far above any real archive; ``layer_import``
    options raise them."""

    json_size: int = MAX_JSON
    json_total: int = MAX_KEPT
    images: int = 1000
    layers: int = 1000


class Metadata:
    """The JSON members of an archive, read through one budget: each member once (a
    manifest named by a thousand index entries is read and kept once), and all of them
    together at most ``limits.json_total`` bytes, so memory does not grow with the fan-out."""

    def __init__(self, index: Any, limits: Limits) -> None:
        self.index, self.limits, self.path = index, limits, index.path
        self._read: Dict[str, bytes] = {}
        self._configs: Dict[str, ImageConfig] = {}
        self.parsed: Dict[str, Dict[str, Any]] = {}     # verified JSON blobs, by digest
        self.verified: Set[str] = set()                  # blobs that hashed to their digest
        self._total = 0

    def has(self, name: str) -> bool:
        return self.index.has(name)

    def size(self, name: str) -> int:
        return self.index.size(name)

    def read(self, name: str) -> bytes:
        data = self._read.get(name)
        if data is None:
            data = self.index.read(name, self.limits.json_size)
            self._total += len(data)
            if self._total > self.limits.json_total:
                raise InvalidInput("archive %s: its manifests, indexes and configs add up to more "
                                   "than %d bytes (max_metadata_size x 4): refused"
                                   % (self.path, self.limits.json_total), member=name)
            self._read[name] = data
        return data

    def config(self, name: str, raw: bytes, where: str) -> ImageConfig:
        """The config in member ``name``, parsed once however many entries name it."""
        config = self._configs.get(name)
        if config is None:
            config = self._configs[name] = parse_config(raw, where)
        return config


def _json(index: Metadata, name: str, what: str) -> Any:
    return loads(index.read(name), "%s %s in %s" % (what, name, index.path),
                 Bounds(size=index.limits.json_size))


def _count(items: List[Any], limit: int, what: str) -> None:
    if len(items) > limit:
        raise InvalidInput("%s lists %d entries, more than the %d allowed: refused (raise "
                           "max_entries if the archive is genuine)" % (what, len(items), limit))


def _verified_json(index: Metadata, desc: Dict[str, Any], what: str) -> Dict[str, Any]:
    """A blob the descriptor names, checked against its digest and parsed as an object
    (once per archive: a thousand index entries may name the same manifest)."""
    raw = _verified_blob(index, desc, what)
    parsed = index.parsed.get(desc["digest"])
    if parsed is None:
        parsed = index.parsed[desc["digest"]] = json_object(
            raw, "%s %s in %s" % (what, desc.get("digest"), index.path))
    return parsed


def _verified_blob(index: Metadata, desc: Dict[str, Any], what: str) -> bytes:
    """The bytes of the blob descriptor ``desc`` names, checked against its digest and size."""
    digest = desc.get("digest", "")
    if not is_digest(digest):
        raise Corrupt("%s in %s names an invalid digest %r" % (what, index.path, digest))
    size = descriptor_size(desc, what, index.path)
    raw = index.read("blobs/sha256/" + hex_of(digest))
    if digest not in index.verified and sha256_bytes(raw) != digest:
        raise DigestMismatch("%s blob %s in %s does not match its digest (it hashes to %s)"
                             % (what, digest, index.path, sha256_bytes(raw)))
    if size is not None and len(raw) != size:
        raise DigestMismatch("%s blob %s in %s is %d bytes, but its descriptor says %d"
                             % (what, digest, index.path, len(raw), size))
    index.verified.add(digest)
    return raw


def descriptor_size(desc: Dict[str, Any], what: str, where: str) -> Optional[int]:
    """The ``size`` of an OCI descriptor (None when it has none), validated."""
    size = desc.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise Corrupt("%s descriptor %s in %s has an invalid size %r"
                      % (what, desc.get("digest"), where, size))
    return size


def verify_sizes(index: Any, images: List[ArchiveImage]) -> None:
    """Refuse, before anything is read or stored, a layer blob whose size is not the one
    its descriptor names (a blob missing from the archive is left to the import: it
    fails there only if the layer is not in the store already)."""
    for image in images:
        for ref in image.layers:
            if ref.size is None or not index.has(ref.member):
                continue
            actual = index.size(ref.member)
            if actual != ref.size:
                raise DigestMismatch("layer blob %s in %s is %d bytes, but its descriptor says "
                                     "%d: the archive is damaged; nothing was imported"
                                     % (ref.member, index.path, actual, ref.size),
                                     expected=ref.size, actual=actual)


def read_docker_archive(index: Any, limits: Limits = Limits()) -> List[ArchiveImage]:
    index = Metadata(index, limits)
    manifest = _json(index, "manifest.json", "manifest")
    if not isinstance(manifest, list) or not manifest:
        raise Corrupt("manifest.json in %s lists no images" % index.path)
    _count(manifest, limits.images, "manifest.json of %s" % index.path)
    images = []
    for number, item in enumerate(manifest, 1):
        if not _docker_item(item, required=False):
            raise Corrupt("manifest.json in %s: entry %d has no Config/Layers" % (index.path, number))
        config_name = item["Config"]
        raw = index.read(config_name)
        config = index.config(config_name, raw, "%s:%s" % (index.path, config_name))
        expected = os.path.basename(config_name).replace(".json", "")
        if len(expected) == 64 and config.id[7:] != expected:
            raise DigestMismatch("config %s in %s does not match its name (it hashes to %s)"
                                 % (config_name, index.path, config.id))
        layers = item.get("Layers") or []
        _count(layers, limits.layers, "image %d of %s" % (number, index.path))
        if len(layers) != len(config.diff_ids):
            raise Corrupt("image %d of %s lists %d layers but its config has %d diff_ids"
                          % (number, index.path, len(layers), len(config.diff_ids)))
        sources = item.get("LayerSources") or {}
        refs = [_docker_ref(index, member, diff_id, sources)
                for member, diff_id in zip(layers, config.diff_ids)]
        tags = [normalize_tag(t) for t in item.get("RepoTags") or [] if isinstance(t, str)]
        images.append(ArchiveImage(config=config, layers=refs, tags=tags))
    return images


def _docker_ref(index: Any, member: Any, diff_id: str, sources: Any) -> LayerRef:
    """One layer of a docker-archive image; ``LayerSources`` (docker save of foreign
    layers) may give its blob's digest and size."""
    if not isinstance(member, str):
        raise Corrupt("manifest.json in %s names a layer that is not a path" % index.path)
    source = sources.get(diff_id) if isinstance(sources, dict) else None
    source = source if isinstance(source, dict) else {}
    digest = source.get("digest")
    if member.startswith("blobs/sha256/") and digest is None:
        digest = "sha256:" + os.path.basename(member)
    return LayerRef(member=member, diff_id=diff_id, digest=digest if is_digest(digest) else None,
                    size=descriptor_size(source, "layer", index.path))


def read_oci(index: Any, platform: Optional[Platform] = None,
             limits: Limits = Limits()) -> List[ArchiveImage]:
    index = Metadata(index, limits)
    if not index.has("oci-layout"):
        raise Corrupt("%s has no oci-layout file: not an OCI layout" % index.path)
    layout = _json(index, "oci-layout", "oci-layout")
    if not isinstance(layout, dict) or not str(layout.get("imageLayoutVersion", "")).startswith("1."):
        raise Unsupported("%s: unsupported OCI imageLayoutVersion %r"
                          % (index.path, layout.get("imageLayoutVersion")
                             if isinstance(layout, dict) else layout))
    top = _json(index, "index.json", "index")
    manifests = top.get("manifests") if isinstance(top, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise Corrupt("index.json of %s lists no manifests" % index.path)
    _count(manifests, limits.images, "index.json of %s" % index.path)
    images = []
    for desc in manifests:
        if not isinstance(desc, dict):
            raise Corrupt("index.json of %s lists a manifest that is not a descriptor object"
                          % index.path)
        name = _ref_name(desc, "index.json of %s" % index.path)
        manifest_desc = _pick(index, desc, platform or host_platform())
        image = _oci_image(index, manifest_desc, limits)
        if name:
            image.tags.append(name)
        images.append(image)
    return images


def _ref_name(desc: Dict[str, Any], where: str) -> Optional[str]:
    annotations = desc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise Corrupt("%s has a manifest descriptor whose annotations are not a JSON object"
                      % where)
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        value = annotations.get(key)
        if isinstance(value, str) and ":" in value.rsplit("/", 1)[-1]:
            try:
                return normalize_tag(value)
            except StoreError:
                continue
    return None


def _pick(index: Any, desc: Dict[str, Any], platform: Platform) -> Dict[str, Any]:
    depth = 0
    while desc.get("mediaType") in INDEX_TYPES:
        nested = _verified_json(index, desc, "index")
        options = nested.get("manifests") or []
        if not isinstance(options, list) or not all(isinstance(m, dict) for m in options):
            raise Corrupt("index %s in %s has no list of manifest descriptors"
                          % (desc.get("digest"), index.path))
        _count(options, index.limits.images, "index %s in %s" % (desc.get("digest"), index.path))
        # the only image is loaded whatever its platform, as docker load does
        desc = options[0] if len(options) == 1 else pick_platform(
            options, platform, "index %s in %s" % (desc.get("digest"), index.path))
        depth += 1
        if depth > 4:
            raise Corrupt("%s: indexes nested too deeply" % index.path)
    if desc.get("mediaType") not in MANIFEST_TYPES:
        raise Unsupported("%s: manifest media type %r is not supported"
                          % (index.path, desc.get("mediaType")))
    return desc


def _oci_image(index: Any, desc: Dict[str, Any], limits: Limits) -> ArchiveImage:
    manifest = _verified_json(index, desc, "manifest")
    config_desc = manifest.get("config") or {}
    if not isinstance(config_desc, dict):
        raise Corrupt("%s: manifest %s has no config descriptor" % (index.path, desc.get("digest")))
    config_raw = _verified_blob(index, config_desc, "config")
    config = index.config("blobs/sha256/" + hex_of(config_desc["digest"]), config_raw,
                          "%s config %s" % (index.path, config_desc.get("digest")))
    layer_descs = manifest.get("layers") or []
    if not isinstance(layer_descs, list):
        raise Corrupt("%s: manifest %s has no list of layers" % (index.path, desc.get("digest")))
    _count(layer_descs, limits.layers, "manifest %s in %s" % (desc.get("digest"), index.path))
    if len(layer_descs) != len(config.diff_ids):
        raise Corrupt("%s: manifest %s lists %d layers but its config has %d diff_ids"
                      % (index.path, desc.get("digest"), len(layer_descs), len(config.diff_ids)))
    refs = [_oci_ref(index, layer, diff_id) for layer, diff_id in zip(layer_descs, config.diff_ids)]
    return ArchiveImage(config=config, layers=refs, manifest_digest=desc.get("digest"))


def _oci_ref(index: Any, layer: Any, diff_id: str) -> LayerRef:
    digest = layer.get("digest", "") if isinstance(layer, dict) else None
    if not is_digest(digest):
        raise Corrupt("%s: a layer descriptor has an invalid digest %r" % (index.path, digest))
    return LayerRef(member="blobs/sha256/" + hex_of(digest), diff_id=diff_id, digest=digest,
                    size=descriptor_size(layer, "layer", index.path))


ARCHIVE_NAMES = ("manifest.json", "index.json", "oci-layout", "repositories")


class _Beyond:
    """What ``_parsed`` gives for a member beyond a bound (too large or too deep): it is
    neither proof of an archive nor of a layer."""

    def __init__(self, error: StoreError) -> None:
        self.error = error


def _parsed(index: Any, name: str, limit: int = MAX_JSON) -> Any:
    """The JSON value of member ``name``; None when it is absent or not JSON, a _Beyond
    when it is beyond the bounds of a JSON document."""
    if not index.has(name):
        return None
    try:
        return loads(index.read(name, limit), "%s in %s" % (name, index.path),
                     Bounds(size=limit))
    except InvalidInput as exc:
        return _Beyond(exc)
    except StoreError:
        return None


def is_docker_manifest(value: Any) -> bool:
    """A ``manifest.json`` as docker save writes it: a list of {Config, Layers} objects
    (Go writes the Layers of an image without layers as null)."""
    return isinstance(value, list) and bool(value) and all(_docker_item(i) for i in value)


def _docker_item(item: Any, required: bool = True) -> bool:
    """One image of a docker ``manifest.json``; ``required``: its Layers must be named
    (to tell an archive from a layer that holds some other manifest.json)."""
    if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
        return False
    if required and "Layers" not in item:
        return False
    return item.get("Layers") is None or isinstance(item.get("Layers"), list)


def is_oci_index(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("manifests"), list)


def is_oci_layout(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("imageLayoutVersion"), str)


METADATA = {"manifest.json": is_docker_manifest, "index.json": is_oci_index,
            "oci-layout": is_oci_layout, "repositories": lambda value: isinstance(value, dict)}


def archive_format(index: Any, limits: Limits = Limits()) -> Optional[str]:
    """``docker-archive`` or ``oci-archive`` when the tar's metadata parses as such; None
    for any other tar (a layer may well hold a web app's ``manifest.json``).

    A top-level manifest.json or index.json beyond the bounds of a JSON document proves
    nothing by itself; in a tar that otherwise looks like an archive (``blobs/``, members
    named by digests, an ``oci-layout``) it is refused rather than imported as a layer."""
    manifest = _parsed(index, "manifest.json", limits.json_size)
    if is_docker_manifest(manifest):
        return "docker-archive"
    top = _parsed(index, "index.json", limits.json_size)
    if is_oci_layout(_parsed(index, "oci-layout")) and is_oci_index(top):
        return "oci-archive"
    for value in (manifest, top):
        if isinstance(value, _Beyond) and _archive_names(index):
            raise InvalidInput("%s; %s looks like an image archive: raise max_metadata_size if "
                               "it is genuine, or give format: layer if it is a layer"
                               % (value.error, index.path))
    return None


def _archive_names(index: Any) -> bool:
    """Whether the tar holds the names an image archive has besides its manifest."""
    for name in index.order:
        first = name.split("/", 1)[0]
        if name == "oci-layout" or first == "blobs" or \
                (len(first) >= 64 and all(c in "0123456789abcdef" for c in first[:64])):
            return True
    return False


def looks_like_archive(head: MemIndex) -> bool:
    """Whether the first members of a tar are those of an image archive: its metadata
    files (parsing as such), OCI ``blobs/``, or entries named by a digest
    (``<hex>/layer.tar``, ``<hex>.json``, ``<hex>.tar`` as docker save and skopeo write them)."""
    for name in head.order:
        first = name.split("/", 1)[0]
        if name in METADATA:
            if METADATA[name](_parsed(head, name)):
                return True
        elif first == "blobs":
            return True
        elif len(first) >= 64 and all(c in "0123456789abcdef" for c in first[:64]):
            return True
    return False


def classify(path: str, limits: Limits = Limits()) -> str:
    """``auto`` format detection for a file or directory (any other kind of file is
    refused: detection must never block on a FIFO nor read a device forever)."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "oci-layout")) or \
                os.path.isfile(os.path.join(path, "index.json")):
            return "oci-layout"
        raise InvalidInput("src %s is a directory but not an OCI layout (no oci-layout or "
                           "index.json)" % path)
    if detect(read_head(path)) == "plain":
        return _classify_tar(path, limits)
    fd = open_regular(path)
    stream = None
    try:
        stream = DecodedStream(lambda n: os.read(fd, n), what=path)
        first = index_stream(stream.chunk, path,
                             until=lambda head: len(head.order) >= 4 or looks_like_archive(head),
                             limits=limits)
    except StoreError:
        return "layer"
    finally:
        if stream is not None:
            stream.close()
        os.close(fd)
    return "compressed-archive" if looks_like_archive(first) else "layer"


_ARCHIVE_KEYS = (b"manifest.json", b"oci-layout")


def _may_be_archive(path: str) -> bool:
    """False when the plain tar at ``path`` surely holds no top-level ``manifest.json``
    or ``oci-layout`` (so it is a layer), read from the member names alone.

    A lean pass for the common case, a layer (about 4 us a member against 14 for the
    full parser): anything it does not read plainly (a PAX global header, a base-256
    size, a truncated or garbled header) answers True and leaves the decision to the
    full scan, so it never changes what ``classify`` says."""
    fd = open_regular(path)
    try:
        end = os.fstat(fd).st_size
        pos = 0
        pax: Dict[bytes, bytes] = {}
        longname: Optional[bytes] = None
        while pos + BLOCK <= end:
            block = os.pread(fd, BLOCK, pos)
            if block == ZERO_BLOCK:
                return False
            typeflag = block[156:157]
            digits = block[124:136].split(b"\0", 1)[0].strip(b" ")
            if digits.strip(b"01234567"):
                return True                 # base-256 or garbage: the full scan decides
            size = int(digits, 8) if digits else 0
            data_at = pos + BLOCK
            if typeflag in (PAX_LOCAL, GNU_LONGNAME, GNU_LONGLINK):
                pos = data_at + size + ((-size) % BLOCK)
                if size > MAX_EXTENSION or pos > end:
                    return True
                if typeflag == GNU_LONGLINK:
                    continue
                data = os.pread(fd, size, data_at)
                if typeflag == GNU_LONGNAME:
                    longname = data.split(b"\0", 1)[0]
                    continue
                try:
                    pax.update(parse_pax(data, "a PAX header"))
                except StoreError:
                    return True
                continue
            if typeflag == PAX_GLOBAL:
                return True
            if b"size" in pax:
                digits = pax[b"size"]
                if not digits or digits.strip(b"0123456789"):
                    return True
                size = int(digits)
            # the long name wins, as the full parser (and Go's) reads it
            name = longname if longname is not None else pax.get(b"path")
            if name is None:
                name = block[0:100].split(b"\0", 1)[0]
                if block[257:263] == b"ustar\0":
                    prefix = block[345:500].split(b"\0", 1)[0]
                    if prefix:
                        name = prefix + b"/" + name
            if typeflag == DIRTYPE or typeflag == b"\0" and name.endswith(b"/"):
                size = 0                            # a directory carries no data
            pos = data_at + size + ((-size) % BLOCK)
            pax, longname = {}, None
            if (b"manifest.json" in name or b"oci-layout" in name) and \
                    _norm(name.decode("utf-8", "surrogateescape")).encode(
                        "utf-8", "surrogateescape") in _ARCHIVE_KEYS:
                return True
        return True                         # no end-of-archive marker: let the full scan say
    finally:
        os.close(fd)


def _classify_tar(path: str, limits: Limits) -> str:
    if not _may_be_archive(path):
        return "layer"
    try:
        index = TarIndex(path)
    except StoreError:
        return "layer"
    try:
        return archive_format(index, limits) or "layer"
    finally:
        index.close()
