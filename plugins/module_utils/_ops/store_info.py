# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.store_info``: the data behind ``docker info``, ``docker image ls``,
``docker ps -s``, ``docker history`` and ``docker system df -v``.  Read-only (shared
lock, writes nothing).

Sizes follow Docker: a layer's size is the bytes of the regular files its tar adds
(recorded at import, never re-walked); an image's size is the sum over its layers;
``shared_size`` counts the layers another image also uses; a container's ``size`` is
the bytes of the files in its writable layer and ``virtual_size`` adds its image.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._containers import (
    Sizing, container_facts)
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import (
    fs_type, supports_d_type)
from ansible_collections.strata.layers.plugins.module_utils._history import history_of
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._probe import nearest_existing
from ansible_collections.strata.layers.plugins.module_utils._prune import plan as prune_plan
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def store_info(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    store = Store.from_params(params)
    sizes = params.get("sizes")
    with store.read():
        return describe(store, sizes=True if sizes is None else bool(sizes))


def describe(store: Store, containers: Optional[List[Dict[str, Any]]] = None,
             sizes: bool = True) -> Dict[str, Any]:
    """The facts; ``sizes=False`` leaves out what needs a walk of the containers' files
    (their ``size``/``virtual_size``, ``disk_usage.containers`` and ``on_disk``: null),
    as ``docker ps`` without ``-s``."""
    where = store.root if os.path.isdir(store.root) else nearest_existing(store.root)
    result: Dict[str, Any] = {
        "changed": False, "data_root": store.root, "driver": store.driver_name,
        "previous_driver": store.state().get("previous_driver"),
        "backing_filesystem": fs_type(where), "supports_d_type": supports_d_type(where),
        "images": [], "layers": [], "containers": [],
        "disk_usage": {"images": 0, "containers": 0, "layers": 0, "reclaimable": 0,
                       "on_disk": 0}}
    if not store.exists():
        return result
    layers = store.layers.by_chain()
    images = store.images.all()
    tags = store.images.tags()
    users: Dict[ChainID, List[str]] = {}
    for image in images:
        for chain in image.chain:
            users.setdefault(ChainID(chain), []).append(image.id)
    sizing = Sizing(store)
    if containers is None:
        containers = container_facts(store, layers, sizes=sizes, sizing=sizing)
    result["images"] = [_image_row(image, layers, users, tags) for image in images]
    result["layers"] = [{"diff_id": r.diff_id, "chain_id": r.chain_id, "size": r.size,
                         "parent": r.parent, "depth": r.depth,
                         "referenced_by": sorted(users.get(r.chain_id, []))}
                        for r in layers.values()]
    result["containers"] = [{k: v for k, v in c.items() if k != "chain"} for c in containers]
    image_layers = set(users)
    result["disk_usage"] = {
        "images": sum(layers[c].size for c in image_layers if c in layers),
        "containers": sum(c["size"] for c in containers) if sizes else None,
        "layers": sum(r.size for r in layers.values()),
        "reclaimable": sum(layers[c].size for c in prune_plan(store)[1] if c in layers),
        "on_disk": sizing.on_disk(store) if sizes else None,
    }
    return result


def _image_row(image: ImageRecord, layers: Dict[ChainID, LayerRecord],
               users: Dict[ChainID, List[str]], tags: Dict[str, str]) -> Dict[str, Any]:
    chain = [ChainID(c) for c in image.chain]
    size = sum(layers[c].size for c in chain if c in layers)
    shared = sum(layers[c].size for c in chain if c in layers and len(set(users.get(c, []))) > 1)
    return {"id": image.id, "tags": sorted(t for t, i in tags.items() if i == image.id),
            "size": size, "shared_size": shared, "unique_size": size - shared,
            "layers": [layers[c].diff_id if c in layers else None for c in chain],
            "created": image.config.created, "history": history_of(image, layers),
            "parent": image.meta.get("parent")}
