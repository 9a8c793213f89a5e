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
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import dumps
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    DiffID, ImageID, sha256_bytes, validate_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import DEFAULT, Bounds, load_object

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv8l": "arm", "armv7l": "arm",
          "armv6l": "arm", "armv5tel": "arm", "armv5tejl": "arm", "i686": "386",
          "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


ARM_VARIANTS = {"armv5tel": "v5", "armv5tejl": "v5", "armv6l": "v6", "armv7l": "v7",
                "armv8l": "v8"}


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
    return normalize(Platform("linux", GOARCH.get(machine, machine), ARM_VARIANTS.get(machine)))


def parse_platform(value: Optional[str]) -> Platform:
    """``os/arch[/variant]`` (e.g. ``linux/arm64``, ``linux/arm/v7``), normalized as
    ``normalize`` does; None: this host's."""
    if not value:
        return host_platform()
    parts = value.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(re.match(r"\A[a-z0-9_.-]+\Z", p) for p in parts):
        raise InvalidInput("platform %r is not OS/ARCH[/VARIANT] (e.g. linux/amd64, "
                           "linux/arm64, linux/arm/v7)" % value)
    return normalize(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))


def normalize(given: Platform) -> Platform:
    """``given`` in the canonical form containerd (so Docker) compares: lower case; GOARCH
    names (``i386`` is ``386``, ``armhf`` ``arm/v7``, ``armel`` ``arm/v6``); ``arm``
    without a variant (or ``7``) is ``arm/v7``; ``arm64/v8`` (``8``, ``v8.0``) is
    ``arm64`` and ``9``/``v9.0`` ``v9``; ``amd64/v1`` is ``amd64``."""
    arch = given.architecture.lower()
    variant = (given.variant or "").lower()
    if arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    arch = GOARCH.get(arch, "amd64" if arch == "x86-64" else arch)
    if arch == "386":
        variant = ""
    elif arch == "amd64" and variant == "v1":
        variant = ""
    elif arch == "arm64":
        variant = {"8": "", "v8": "", "v8.0": "", "9": "v9", "9.0": "v9", "v9.0": "v9"}.get(
            variant, variant)
    elif arch == "arm":
        variant = {"": "v7", "7": "v7", "5": "v5", "6": "v6", "8": "v8"}.get(variant, variant)
    return Platform(given.os.lower(), arch, variant or None)


def _number(variant: Optional[str]) -> Optional[int]:
    digits = (variant or "")[1:]
    return int(digits) if (variant or "").startswith("v") and digits.isdigit() else None


def _arm64_ladder(variant: Optional[str]) -> List[Tuple[int, int]]:
    """(major, minor) versions an arm64 host of ``variant`` runs, best first: the lower
    minors of its major; a v9.x host also v8.(x+5) down (v9.0 is v8.5's feature set)."""
    major, _dot, minor = (variant or "v8")[1:].partition(".")
    if major not in ("8", "9") or not (minor or "0").isdigit() or int(minor or 0) > 9:
        return []
    minor_number = int(minor or 0)
    ladder = [(int(major), m) for m in range(minor_number, -1, -1)]
    if major == "9":
        ladder += [(8, m) for m in range(min(minor_number + 5, 9), -1, -1)]
    return ladder


def compatible(wanted: Platform) -> List[Platform]:
    """What a host of platform ``wanted`` runs, best first (containerd's ``Only``):
    ``wanted`` itself; ``amd64/vN`` then the lower levels, then ``386``; ``arm/vN`` then
    the lower versions down to v5; ``arm64[/vX.Y]`` its lower versions, then 32-bit
    ``arm`` from v8 down."""
    wanted = normalize(wanted)
    out = [wanted]
    level = _number(wanted.variant)
    if wanted.architecture == "amd64":
        out += [normalize(Platform(wanted.os, "amd64", "v%d" % n))
                for n in range((level or 1) - 1, 0, -1)]
        out.append(Platform(wanted.os, "386"))
    elif wanted.architecture == "arm" and level is not None:
        out += [Platform(wanted.os, "arm", "v%d" % n) for n in range(level - 1, 4, -1)]
    elif wanted.architecture == "arm64":
        for major, minor in _arm64_ladder(wanted.variant):
            one = normalize(Platform(wanted.os, "arm64",
                                     "v%d.%d" % (major, minor) if minor else "v%d" % major))
            if one not in out:
                out.append(one)
        out += compatible(Platform(wanted.os, "arm", "v8"))
    return out


def platform_of(desc: Dict[str, Any]) -> Optional[Platform]:
    """The platform a descriptor of an index names, normalized (None: it names none)."""
    value = desc.get("platform")
    if not isinstance(value, dict) or not value.get("os") or not value.get("architecture"):
        return None
    variant = value.get("variant")
    return normalize(Platform(str(value["os"]), str(value["architecture"]),
                              str(variant) if variant else None))


def pick_platform(manifests: List[Dict[str, Any]], wanted: Platform, where: str,
                  advice: str = "") -> Dict[str, Any]:
    """The descriptor of ``manifests`` (an index's) that best suits ``wanted``: the
    registry client's and the OCI archive reader's one choice.  ``advice``: appended to
    the error when none suits (what the caller's user can do about it)."""
    runs = compatible(wanted)
    ranked = []
    for position, desc in enumerate(manifests):
        offered = platform_of(desc)
        if offered is None:  # names no platform: taken after every match, as dockerd does
            ranked.append((len(runs), position, desc))
        elif offered in runs:
            ranked.append((runs.index(offered), position, desc))
    if ranked:
        return min(ranked, key=lambda item: (item[0], item[1]))[2]
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
