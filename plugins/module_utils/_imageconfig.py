# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image configs: the OCI / Docker image config JSON and the host's platform in its terms.

An image's id is the sha256 of its config bytes, so a config is kept as the exact bytes
it arrived as (``ImageConfig.raw``) beside the parsed parts the store relies on.  A new
config (a build step, a commit, a layer import) is derived from its base by
``derive_config``.  No file, no store: records live in ``_imagerecords.py``.
"""
from __future__ import annotations

import functools
import json
import platform
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._atomic import dumps
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    DiffID, ImageID, sha256_bytes, validate_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import DEFAULT, Bounds, load_object

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
          "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64"}


ARM_VARIANTS = {"armv5tel": "v5", "armv6l": "v6", "armv7l": "v7"}


# ---------------------------------------------------------------------- platforms
@dataclass(frozen=True)
class Platform:
    """An image's platform in the image-spec's terms (``architecture`` a GOARCH name)."""

    os: str
    architecture: str
    variant: Optional[str] = None

    def __str__(self) -> str:
        base = "%s/%s" % (self.os, self.architecture)
        return base + "/" + self.variant if self.variant else base


def host_platform() -> Platform:
    machine = platform.machine()
    return Platform("linux", GOARCH.get(machine, machine), ARM_VARIANTS.get(machine))


def parse_platform(value: Optional[str]) -> Platform:
    """``os/arch[/variant]`` (e.g. ``linux/arm64``, ``linux/arm/v7``); None: this host's."""
    if not value:
        return host_platform()
    parts = value.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(re.match(r"\A[a-z0-9_.-]+\Z", p) for p in parts):
        raise InvalidInput("platform %r is not OS/ARCH[/VARIANT] (e.g. linux/amd64, "
                           "linux/arm64, linux/arm/v7)" % value)
    arch = GOARCH.get(parts[1], parts[1])
    return Platform(parts[0], arch, parts[2] if len(parts) == 3 else None)


def _normal_variant(arch: str, variant: Optional[str]) -> Optional[str]:
    if arch == "arm64" and variant in (None, "", "v8"):
        return None
    return variant or None


def platform_of(desc: Dict[str, Any]) -> Optional[Platform]:
    """The platform a descriptor of an index names (None: it names none)."""
    value = desc.get("platform")
    if not isinstance(value, dict) or not value.get("os") or not value.get("architecture"):
        return None
    arch = GOARCH.get(str(value["architecture"]), str(value["architecture"]))
    return Platform(str(value["os"]), arch, _normal_variant(arch, value.get("variant")))


def _variant_rank(wanted: Platform, offered: Platform) -> Optional[int]:
    """0 for the best match; None when ``offered`` cannot run as ``wanted``."""
    if offered.os != wanted.os or offered.architecture != wanted.architecture:
        return None
    want = _normal_variant(wanted.architecture, wanted.variant)
    if want is None or offered.variant == want:
        return 0
    # An ARM v7 host runs v6 and v5 images (as containerd's matcher allows), worse first.
    if wanted.architecture == "arm" and offered.variant and offered.variant < want:
        return 1 + ord(want[-1]) - ord(offered.variant[-1])
    return None


def pick_platform(manifests: List[Dict[str, Any]], wanted: Platform, where: str,
                  advice: str = "") -> Dict[str, Any]:
    """The descriptor of ``manifests`` (an index's) that best suits ``wanted``: the
    registry client's and the OCI archive reader's one choice.  ``advice``: appended to
    the error when none suits (what the caller's user can do about it)."""
    ranked = []
    for position, desc in enumerate(manifests):
        offered = platform_of(desc)
        rank = _variant_rank(wanted, offered) if offered is not None else None
        if rank is not None:
            ranked.append((rank, position, desc))
    if ranked:
        return min(ranked, key=lambda item: (item[0], item[1]))[2]
    if len(manifests) == 1 and platform_of(manifests[0]) is None:
        return manifests[0]
    offered_names = sorted({str(p) for p in map(platform_of, manifests)
                            if p is not None and p.os != "unknown"})
    raise NotFound("%s offers no image for platform %s (it offers: %s)%s"
                   % (where, wanted, ", ".join(offered_names) or "no platforms", advice),
                   offered=offered_names)


def platform_config(where: Platform) -> Dict[str, Any]:
    """A config with no layers yet for ``where`` (``scratch``; an imported layer's)."""
    data: Dict[str, Any] = {"architecture": where.architecture, "os": where.os}
    if where.variant:
        data["variant"] = where.variant
    data.update({"config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []})
    return data


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
    data: Dict[str, Any] = json.loads(base.raw) if base else platform_config(host_platform())
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
