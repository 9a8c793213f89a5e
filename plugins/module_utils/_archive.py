# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading image archives: ``docker-archive`` (``docker save``), ``oci-archive`` and
``oci-layout`` directories.

An archive is indexed once (tar headers only: data is skipped with seeks), then
manifests and configs are read and verified, and each layer is handed to the store
as a stream over its byte range, so nothing is copied out of the archive first.
Symlinked duplicate layers (older ``docker save``) resolve inside the archive, never
outside it.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._compression import (
    CHUNK, DecodedStream, RangeReader, detect)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    hex_of, is_digest, sha256_bytes)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, NotFound, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._images import (
    ImageConfig, host_platform, normalize_tag, parse_config)
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    BLOCK, DIRTYPE, LNKTYPE, SYMTYPE, ChunkReader, HeaderParser)

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
MAX_JSON = 16 << 20
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


class TarIndex:
    """Members of an uncompressed tar file, by normalised name."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.entries: Dict[str, Entry] = {}
        self.order: List[str] = []
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
            name = _norm(member.name.decode("utf-8", "surrogateescape"))
            self.entries[name] = Entry(name, member.typeflag, pos[0], member.size,
                                       member.linkname.decode("utf-8", "surrogateescape"))
            self.order.append(name)
            pos[0] += member.size + member.padding
            if pos[0] > end:
                # a size past the end (up to 2^95 in base-256) would overflow pread
                raise Corrupt("archive %s is truncated: member %r runs past its end"
                              % (self.path, name), member=name)

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

    def opener(self, name: str) -> Tuple[RawRead, int]:
        entry = self.resolve(name)
        if entry.typeflag == DIRTYPE:
            raise InvalidInput("archive %s: %r is a directory, not a blob" % (self.path, name))
        return RangeReader(self.fd, entry.offset, entry.size).read, entry.size

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        entry = self.resolve(name)
        if entry.size > limit:
            raise InvalidInput("archive %s: %r is %d bytes, more than the %d a manifest or config "
                               "may have" % (self.path, name, entry.size, limit))
        data = os.pread(self.fd, entry.size, entry.offset)
        if len(data) != entry.size:
            raise Corrupt("archive %s is truncated inside %r" % (self.path, name))
        return data


class DirIndex:
    """An OCI layout directory, with the same interface as TarIndex."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fds: List[int] = []

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _full(self, name: str) -> str:
        name = _norm(name)
        if name.startswith("..") or "/../" in "/" + name + "/":
            raise InvalidInput("OCI layout %s: %r lies outside the layout" % (self.path, name))
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.isfile(self._full(name))

    def _open_regular(self, name: str, what: str) -> int:
        """A descriptor of a regular file of the layout.  Never through a final symlink
        (it could name any file of the host) nor of a FIFO or device: /dev/zero as
        index.json is an endless read, a FIFO a read that never starts."""
        try:
            fd = os.open(self._full(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW |
                         os.O_NONBLOCK)
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

    def opener(self, name: str) -> Tuple[RawRead, int]:
        fd = self._open_regular(name, "blob ")
        self._fds.append(fd)
        size = os.fstat(fd).st_size
        return RangeReader(fd, 0, size).read, size

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


def _json(index: Any, name: str, what: str) -> Any:
    raw = index.read(name)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt("%s %s in %s is not valid JSON" % (what, name, index.path)) from exc


def _verified_blob(index: Any, digest: str, what: str) -> bytes:
    if not is_digest(digest):
        raise Corrupt("%s in %s names an invalid digest %r" % (what, index.path, digest))
    raw = index.read("blobs/sha256/" + hex_of(digest))
    if sha256_bytes(raw) != digest:
        raise DigestMismatch("%s blob %s in %s does not match its digest (it hashes to %s)"
                             % (what, digest, index.path, sha256_bytes(raw)))
    return raw


def read_docker_archive(index: Any) -> List[ArchiveImage]:
    manifest = _json(index, "manifest.json", "manifest")
    if not isinstance(manifest, list) or not manifest:
        raise Corrupt("manifest.json in %s lists no images" % index.path)
    images = []
    for number, item in enumerate(manifest, 1):
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str) or \
                not isinstance(item.get("Layers", []), list):
            raise Corrupt("manifest.json in %s: entry %d has no Config/Layers" % (index.path, number))
        config_name = item["Config"]
        raw = index.read(config_name)
        config = parse_config(raw, "%s:%s" % (index.path, config_name))
        expected = os.path.basename(config_name).replace(".json", "")
        if len(expected) == 64 and config.id[7:] != expected:
            raise DigestMismatch("config %s in %s does not match its name (it hashes to %s)"
                                 % (config_name, index.path, config.id))
        layers = item.get("Layers") or []
        if len(layers) != len(config.diff_ids):
            raise Corrupt("image %d of %s lists %d layers but its config has %d diff_ids"
                          % (number, index.path, len(layers), len(config.diff_ids)))
        refs = []
        sources = item.get("LayerSources") or {}
        for member, diff_id in zip(layers, config.diff_ids):
            if not isinstance(member, str):
                raise Corrupt("manifest.json in %s names a layer that is not a path" % index.path)
            source = sources.get(diff_id) if isinstance(sources, dict) else None
            digest = source.get("digest") if isinstance(source, dict) else None
            if member.startswith("blobs/sha256/") and digest is None:
                digest = "sha256:" + os.path.basename(member)
            refs.append(LayerRef(member=member, diff_id=diff_id,
                                 digest=digest if is_digest(digest) else None))
        tags = [normalize_tag(t) for t in item.get("RepoTags") or [] if isinstance(t, str)]
        images.append(ArchiveImage(config=config, layers=refs, tags=tags))
    return images


def read_oci(index: Any, platform: Optional[Tuple[str, str]] = None) -> List[ArchiveImage]:
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
    images = []
    for desc in manifests:
        name = _ref_name(desc)
        manifest_desc = _pick(index, desc, platform or host_platform())
        image = _oci_image(index, manifest_desc)
        if name:
            image.tags.append(name)
        images.append(image)
    return images


def _ref_name(desc: Dict[str, Any]) -> Optional[str]:
    annotations = desc.get("annotations") or {}
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        value = annotations.get(key)
        if isinstance(value, str) and ":" in value.rsplit("/", 1)[-1]:
            try:
                return normalize_tag(value)
            except StoreError:
                continue
    return None


def _pick(index: Any, desc: Dict[str, Any], platform: Tuple[str, str]) -> Dict[str, Any]:
    depth = 0
    while desc.get("mediaType") in INDEX_TYPES:
        nested = json.loads(_verified_blob(index, desc.get("digest", ""), "index"))
        options = nested.get("manifests") or []
        wanted = [m for m in options if (m.get("platform") or {}).get("os") == platform[0]
                  and (m.get("platform") or {}).get("architecture") == platform[1]]
        if not wanted and len(options) == 1:
            wanted = options
        if not wanted:
            offered = sorted("%s/%s" % ((m.get("platform") or {}).get("os"),
                                        (m.get("platform") or {}).get("architecture"))
                             for m in options)
            raise NotFound("%s offers no image for %s/%s (it offers: %s)"
                           % (index.path, platform[0], platform[1], ", ".join(offered)))
        desc = wanted[0]
        depth += 1
        if depth > 4:
            raise Corrupt("%s: indexes nested too deeply" % index.path)
    if desc.get("mediaType") not in MANIFEST_TYPES:
        raise Unsupported("%s: manifest media type %r is not supported"
                          % (index.path, desc.get("mediaType")))
    return desc


def _oci_image(index: Any, desc: Dict[str, Any]) -> ArchiveImage:
    raw_manifest = _verified_blob(index, desc.get("digest", ""), "manifest")
    manifest = json.loads(raw_manifest)
    config_desc = manifest.get("config") or {}
    config_raw = _verified_blob(index, config_desc.get("digest", ""), "config")
    config = parse_config(config_raw, "%s config %s" % (index.path, config_desc.get("digest")))
    layer_descs = manifest.get("layers") or []
    if len(layer_descs) != len(config.diff_ids):
        raise Corrupt("%s: manifest %s lists %d layers but its config has %d diff_ids"
                      % (index.path, desc.get("digest"), len(layer_descs), len(config.diff_ids)))
    refs = []
    for layer, diff_id in zip(layer_descs, config.diff_ids):
        digest = layer.get("digest", "")
        if not is_digest(digest):
            raise Corrupt("%s: a layer descriptor has an invalid digest %r" % (index.path, digest))
        refs.append(LayerRef(member="blobs/sha256/" + hex_of(digest), diff_id=diff_id,
                             digest=digest, size=layer.get("size")))
    return ArchiveImage(config=config, layers=refs, manifest_digest=desc.get("digest"))


def sniff_tar_names(raw_read: RawRead, limit: int = 4) -> List[str]:
    """The first few member names of a (possibly compressed) tar stream."""
    stream = DecodedStream(raw_read)
    names: List[str] = []
    try:
        parser = HeaderParser(ChunkReader(stream.chunk))
        while len(names) < limit:
            member = parser.next()
            if member is None:
                break
            names.append(_norm(member.name.decode("utf-8", "surrogateescape")))
            reader = parser.reader
            left = member.size + member.padding
            while left:
                piece = reader.read_some(min(left, CHUNK))
                if not piece:
                    break
                left -= len(piece)
    finally:
        stream.close()
    return names


ARCHIVE_NAMES = ("manifest.json", "index.json", "oci-layout", "repositories")


def looks_like_archive(names: List[str]) -> bool:
    """Whether member names are those of an image archive: its metadata files, OCI
    ``blobs/``, or entries named by a digest (``<hex>/layer.tar``, ``<hex>.json``,
    ``<hex>.tar`` as docker save and skopeo write them)."""
    for name in names:
        first = name.split("/", 1)[0]
        if name in ARCHIVE_NAMES or first == "blobs":
            return True
        if len(first) >= 64 and all(c in "0123456789abcdef" for c in first[:64]):
            return True
    return False


def classify(path: str) -> str:
    """``auto`` format detection for a file or directory."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "oci-layout")) or \
                os.path.isfile(os.path.join(path, "index.json")):
            return "oci-layout"
        raise InvalidInput("src %s is a directory but not an OCI layout (no oci-layout or "
                           "index.json)" % path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if detect(head) == "plain":
        try:
            index = TarIndex(path)
        except StoreError:
            return "layer"
        try:
            if index.has("manifest.json"):
                return "docker-archive"
            if index.has("oci-layout") and index.has("index.json"):
                return "oci-archive"
            return "layer"
        finally:
            index.close()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        names = sniff_tar_names(lambda n: os.read(fd, n))
    except StoreError:
        return "layer"
    finally:
        os.close(fd)
    if looks_like_archive(names):
        return "compressed-archive"
    return "layer"
