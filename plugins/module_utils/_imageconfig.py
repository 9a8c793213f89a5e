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
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import dumps
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    DiffID, ImageID, sha256_bytes, validate_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import DEFAULT, Bounds, load_object

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
          "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64"}


def host_platform() -> Tuple[str, str]:
    machine = platform.machine()
    return "linux", GOARCH.get(machine, machine)


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
