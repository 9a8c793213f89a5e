# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image records and references.

``<data_root>/images/<id-hex>/config.json`` holds the config bytes exactly as
imported (the image id is their digest), ``image.json`` what the store adds (when it
was stored, where from, the parent image of a build step).  ``tags.json`` maps
``NAME:TAG`` to image ids and is replaced atomically as a whole.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, dumps, read_json, write_file, write_json)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    DiffID, ImageID, chain_ids, hex_of, is_digest, sha256_bytes, validate_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, InvalidReference, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import DEFAULT, Bounds, load_object

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*" \
          r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_NAME_RE = re.compile(r"\A(?:%s/)?%s(?:/%s)*\Z" % (_DOMAIN, _COMPONENT, _COMPONENT))
_TAG_RE = re.compile(r"\A[\w][\w.-]{0,127}\Z")
_HEX_PREFIX_RE = re.compile(r"\A(?:sha256:)?([0-9a-f]{12,64})\Z")

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
          "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64"}


def host_platform() -> Tuple[str, str]:
    machine = platform.machine()
    return "linux", GOARCH.get(machine, machine)


def split_reference(ref: str) -> Tuple[str, str]:
    """``NAME[:TAG]`` -> (name, tag), ``latest`` when omitted; validated."""
    if not isinstance(ref, str) or not ref or "@" in ref:
        raise InvalidReference("image reference %r is not NAME[:TAG]" % (ref,))
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    if not _NAME_RE.match(name) or len(name) > 255:
        raise InvalidReference("image name %r is not valid: lowercase letters, digits and "
                               "separators (. _ -), optionally a registry host first" % name)
    if not _TAG_RE.match(tag):
        raise InvalidReference("tag %r of %r is not valid (letters, digits, _ . -; at most 128)"
                               % (tag, ref))
    return name, tag


def familiar(name: str) -> str:
    """Docker Hub names in the short form the Docker CLI shows and accepts
    (``docker.io/library/busybox`` is ``busybox``, ``docker.io/acme/app`` is ``acme/app``)."""
    for hub in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(hub):
            name = name[len(hub):]
            break
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/"):]
    return name


def normalize_tag(ref: str) -> str:
    name, tag = split_reference(ref)
    return "%s:%s" % (familiar(name), tag)


def hex_prefix(ref: str) -> Optional[str]:
    match = _HEX_PREFIX_RE.match(ref or "")
    return match.group(1) if match else None


@dataclass
class ImageConfig:
    """The parts of an image config the store relies on (validated)."""

    raw: bytes
    data: Dict[str, Any]
    diff_ids: List[DiffID]

    @functools.cached_property
    def id(self) -> ImageID:
        # hashed once: an archive's thousand entries may name one large config
        return ImageID(sha256_bytes(self.raw))

    @property
    def created(self) -> str:
        return str(self.data.get("created") or "")

    @property
    def history(self) -> List[Dict[str, Any]]:
        return list(self.data.get("history") or [])


def json_object(raw: bytes, what: str) -> Dict[str, Any]:
    """``raw`` parsed as a JSON object (a config, manifest or index); Corrupt naming
    ``what`` otherwise.  Depth and fan-out are bounded here; size by whoever read ``raw``
    (each reader has its own limit and option)."""
    return load_object(raw, what, Bounds(size=max(len(raw), DEFAULT.size)))


def parse_config(raw: bytes, where: str) -> ImageConfig:
    data = json_object(raw, "image config %s" % where)
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or \
            not isinstance(rootfs.get("diff_ids", []), list):
        raise Corrupt("image config %s has no rootfs of type 'layers' with diff_ids" % where)
    diff_ids = []
    for value in rootfs.get("diff_ids") or []:
        diff_ids.append(DiffID(validate_digest(value, "diff_id in image config %s" % where)))
    return ImageConfig(raw=raw, data=data, diff_ids=diff_ids)


def derive_config(base: Optional[ImageConfig], diff_id: Optional[DiffID], created: str,
                  created_by: str, comment: str = "",
                  changes: Optional[Dict[str, Any]] = None) -> bytes:
    """A child config: ``base`` (or a new one) plus one layer (or an empty layer)."""
    osname, arch = host_platform()
    data: Dict[str, Any] = json.loads(base.raw) if base else {
        "architecture": arch, "os": osname, "config": {},
        "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    data.pop("id", None)
    data.pop("parent", None)
    data.pop("container", None)
    data.pop("container_config", None)
    if changes:
        config = dict(data.get("config") or {})
        config.update(changes)
        data["config"] = config
    history = list(data.get("history") or [])
    entry: Dict[str, Any] = {"created": created, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if diff_id is None:
        entry["empty_layer"] = True
    else:
        data["rootfs"]["diff_ids"] = list(data["rootfs"].get("diff_ids") or []) + [diff_id]
    history.append(entry)
    data["history"] = history
    data["created"] = created
    return dumps(data)


@dataclass
class ImageRecord:
    id: ImageID
    config: ImageConfig
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def chain(self) -> List[str]:
        return list(chain_ids(self.config.diff_ids))

    @property
    def top(self) -> Optional[str]:
        chain = self.chain
        return chain[-1] if chain else None


class ImageDB:
    """Image records and the tag map of one store."""

    def __init__(self, data_root: str) -> None:
        self.dir = os.path.join(data_root, "images")
        self.tags_path = os.path.join(data_root, "tags.json")

    def path(self, image_id: str) -> str:
        return os.path.join(self.dir, hex_of(image_id))

    def exists(self, image_id: str) -> bool:
        return os.path.isfile(os.path.join(self.path(image_id), "config.json"))

    def get(self, image_id: str) -> ImageRecord:
        base = self.path(image_id)
        try:
            with open(os.path.join(base, "config.json"), "rb") as handle:
                raw = handle.read()
        except FileNotFoundError as exc:
            raise NotFound("image %s is not in the store" % image_id) from exc
        config = parse_config(raw, base)
        try:
            meta = read_json(os.path.join(base, "image.json"))
        except (FileNotFoundError, ValueError):
            meta = {}
        return ImageRecord(id=ImageID(image_id), config=config, meta=meta)

    def ids(self) -> List[ImageID]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [ImageID("sha256:" + n) for n in sorted(names)
                if not n.startswith(TEMP_PREFIX) and is_digest("sha256:" + n)]

    def all(self) -> List[ImageRecord]:
        return [self.get(i) for i in self.ids() if self.exists(i)]

    @staticmethod
    def write_staged(staged_dir: str, config: ImageConfig, meta: Dict[str, Any]) -> None:
        write_file(os.path.join(staged_dir, "config.json"), config.raw)
        write_json(os.path.join(staged_dir, "image.json"), meta)

    # ---------------------------------------------------------------- tags
    def tags(self) -> Dict[str, ImageID]:
        try:
            data = read_json(self.tags_path)
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise Corrupt("%s is not valid JSON: run strata.layers.store_check with repair"
                          % self.tags_path) from exc
        return {str(k): ImageID(v) for k, v in data.items() if is_digest(v)}

    def write_tags(self, tags: Dict[str, ImageID]) -> None:
        write_json(self.tags_path, dict(sorted(tags.items())))

    def tags_of(self, image_id: str, tags: Optional[Dict[str, ImageID]] = None) -> List[str]:
        tags = self.tags() if tags is None else tags
        return sorted(t for t, i in tags.items() if i == image_id)

    def resolve(self, ref: str, what: str = "image") -> ImageID:
        """Image id for ``NAME[:TAG]``, a full id, or a unique hex prefix (12+)."""
        if not isinstance(ref, str) or not ref:
            raise InvalidReference("%s reference is empty" % what)
        if is_digest(ref) and self.exists(ref):
            return ImageID(ref)
        try:
            tag: Optional[str] = normalize_tag(ref)
        except InvalidReference:
            tag = None
        if tag is not None:
            found = self.tags().get(tag)
            if found is not None and self.exists(found):
                return found
        prefix = hex_prefix(ref)
        if prefix is not None:
            matches = [i for i in self.ids() if i[7:].startswith(prefix)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InvalidReference("%s reference %r is ambiguous: it matches %s"
                                       % (what, ref, ", ".join(m[7:19] for m in matches)))
        if tag is None and prefix is None:
            raise InvalidReference("%s reference %r is not NAME[:TAG], an image id or a "
                                   "12+ digit id prefix" % (what, ref))
        raise NotFound("%s %r is not in the store (import, build or pull it first)" % (what, ref))


def validate_tags(tags: List[str]) -> List[str]:
    out = []
    for tag in tags or []:
        if not isinstance(tag, str):
            raise InvalidInput("tag %r is not a string" % (tag,))
        out.append(normalize_tag(tag))
    return out
