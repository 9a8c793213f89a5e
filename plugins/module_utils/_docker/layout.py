# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The metadata dockerd (20.10) keeps for one graph driver, read and written here.

Under the data root::

    image/<driver>/imagedb/content/sha256/<image-hex>    image configs (driver independent)
    image/<driver>/imagedb/metadata/sha256/<image-hex>/  parent, lastUpdated
    image/<driver>/layerdb/sha256/<chain-hex>/           diff, parent, size, cache-id,
                                                         tar-split.json.gz (descriptor.json)
    image/<driver>/layerdb/mounts/<container-id>/        mount-id, init-id, parent
    image/<driver>/layerdb/tmp/                          dockerd's own staging
    image/<driver>/repositories.json                     tags -> image ids
    image/<driver>/distribution/                         registry digests <-> diff ids
    containers/<container-id>/config.v2.json             "Driver", "State", ...
    <driver>/...                                         the graph driver's files (``graph``)

``cache-id`` names the layer's directory in the graph driver, ``mount-id`` the
container's read-write layer and ``init-id`` (``<mount-id>-init``) its init layer.  Every
id read from disk is validated before a path is built from it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, DiffID, hex_of, is_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt

_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_CACHE_ID = re.compile(r"\A[0-9a-f]{64}(-init)?\Z")


def is_hex64(value: str) -> bool:
    return _HEX64.match(value) is not None


@dataclass
class LayerMeta:
    """One ``layerdb/sha256/<chain>/`` record."""

    chain_id: ChainID
    diff_id: DiffID
    parent: Optional[ChainID]
    size: int
    cache_id: str
    depth: int = 0


@dataclass
class MountMeta:
    """One ``layerdb/mounts/<container>/`` record."""

    container_id: str
    mount_id: str
    init_id: Optional[str]
    parent: Optional[ChainID]


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise Corrupt("%s is not text: %s" % (path, exc)) from exc


def _read_optional(path: str) -> Optional[str]:
    try:
        return _read(path)
    except FileNotFoundError:
        return None


def _cache_id(value: str, path: str) -> str:
    if not _CACHE_ID.match(value):
        raise Corrupt("%s holds %r, not a graph driver id (64 hex digits)" % (path, value))
    return value


def _digest_in(path: str, value: Optional[str]) -> Optional[str]:
    if value is None or value == "":
        return None
    if not is_digest(value):
        raise Corrupt("%s holds %r, not a sha256 digest" % (path, value))
    return value


class DriverMeta:
    """``<data_root>/image/<driver>/``: the layer and image metadata of one driver."""

    def __init__(self, data_root: str, driver: str) -> None:
        self.data_root = data_root
        self.driver = driver
        self.root = os.path.join(data_root, "image", driver)

    @property
    def layerdb(self) -> str:
        return os.path.join(self.root, "layerdb")

    def layer_dir(self, chain: str) -> str:
        return os.path.join(self.layerdb, "sha256", hex_of(chain))

    def mount_dir(self, container_id: str) -> str:
        return os.path.join(self.layerdb, "mounts", container_id)

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def chain_hexes(self) -> List[str]:
        try:
            names = os.listdir(os.path.join(self.layerdb, "sha256"))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_hex64(n))

    def container_ids(self) -> List[str]:
        try:
            names = os.listdir(os.path.join(self.layerdb, "mounts"))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_hex64(n))

    def image_hexes(self) -> List[str]:
        try:
            names = os.listdir(os.path.join(self.root, "imagedb", "content", "sha256"))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_hex64(n))

    def has_content(self) -> bool:
        return bool(self.chain_hexes() or self.container_ids() or self.image_hexes())

    def layer(self, chain_hex: str) -> LayerMeta:
        base = os.path.join(self.layerdb, "sha256", chain_hex)
        try:
            diff = _digest_in(base + "/diff", _read(os.path.join(base, "diff")))
            parent = _digest_in(base + "/parent", _read_optional(os.path.join(base, "parent")))
            size = int(_read(os.path.join(base, "size")) or 0)
            cache = _cache_id(_read(os.path.join(base, "cache-id")), base + "/cache-id")
        except (OSError, ValueError) as exc:
            raise Corrupt("Docker layer record %s cannot be read (%s); run dockerd on its "
                          "driver and remove the broken image, then migrate again"
                          % (base, exc)) from exc
        if diff is None:
            raise Corrupt("Docker layer record %s has an empty diff file" % base)
        return LayerMeta(ChainID("sha256:" + chain_hex), DiffID(diff),
                         ChainID(parent) if parent else None, size, cache)

    def layers(self) -> List[LayerMeta]:
        """Every layer, parents before children (``depth`` filled in)."""
        found = {m.chain_id: m for m in (self.layer(h) for h in self.chain_hexes())}
        for meta in found.values():
            depth, parent = 0, meta.parent
            while parent is not None:
                if parent not in found:
                    raise Corrupt("Docker layer %s names parent %s, which %s does not hold"
                                  % (meta.chain_id, parent, self.layerdb))
                depth += 1
                parent = found[parent].parent
            meta.depth = depth
        return sorted(found.values(), key=lambda m: (m.depth, m.chain_id))

    def mount(self, container_id: str) -> MountMeta:
        base = self.mount_dir(container_id)
        try:
            mount_id = _cache_id(_read(os.path.join(base, "mount-id")), base + "/mount-id")
            init = _read_optional(os.path.join(base, "init-id"))
            parent = _digest_in(base + "/parent", _read_optional(os.path.join(base, "parent")))
        except OSError as exc:
            raise Corrupt("Docker mount record %s cannot be read (%s)" % (base, exc)) from exc
        return MountMeta(container_id, mount_id,
                         _cache_id(init, base + "/init-id") if init else None,
                         ChainID(parent) if parent else None)

    def mounts(self) -> List[MountMeta]:
        return [self.mount(cid) for cid in self.container_ids()]

    def split_path(self, chain: str) -> str:
        return os.path.join(self.layer_dir(chain), "tar-split.json.gz")


class ContainerConfig:
    """``containers/<id>/config.v2.json``: which driver a container belongs to, its state."""

    def __init__(self, data_root: str, container_id: str) -> None:
        self.id = container_id
        self.path = os.path.join(data_root, "containers", container_id, "config.v2.json")

    def load(self) -> Dict[str, Any]:
        try:
            with open(self.path, "rb") as handle:
                data = json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise Corrupt("container config %s cannot be read (%s)" % (self.path, exc)) from exc
        if not isinstance(data, dict):
            raise Corrupt("container config %s is not a JSON object" % self.path)
        return data

    @property
    def name(self) -> str:
        return str(self.load().get("Name") or self.id[:12]).lstrip("/")


def container_ids(data_root: str) -> List[str]:
    try:
        names = os.listdir(os.path.join(data_root, "containers"))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_hex64(n))


def driver_trees(data_root: str) -> List[str]:
    """Drivers with metadata under ``image/`` that holds content (the prior drivers)."""
    try:
        names = os.listdir(os.path.join(data_root, "image"))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith(".")
                  and DriverMeta(data_root, n).has_content())
