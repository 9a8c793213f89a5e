# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.container_commit``: commit a container's changes as a new image.

Check mode hashes the change stream to learn the layer's diff_id and the config the
commit would make (``_commit.commit_config``); ``changed`` is whether that image or a
tag is missing.  A commit ingests the changes as a layer (``_containers.commit_changes``),
records the image with the container's image as its parent, then moves the tags.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List

from ansible_collections.strata.layers.plugins.module_utils._commit import commit_config
from ansible_collections.strata.layers.plugins.module_utils._containers import (
    ContainerDB, ContainerRecord, changes, commit_changes)
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, DiffID, chain_id)
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound
from ansible_collections.strata.layers.plugins.module_utils._imageref import validate_tags
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def container_commit(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    name = params.get("name")
    if not name:
        raise InvalidInput("name (the container to commit) is required")
    tags = validate_tags(params.get("tag") or [])
    message = params.get("comment") or ""
    changes_ = params.get("changes") or {}
    store = Store.from_params(params)
    if check_mode:
        with store.read():
            return _plan(store, name, tags, message, changes_)
    with store.write("container_commit of %s" % name):
        return _commit(store, name, tags, message, changes_)


def _container(store: Store, name: str) -> ContainerRecord:
    record = ContainerDB(store.root).by_name(name) if store.exists() else None
    if record is None:
        raise NotFound("container %r is not in the store %s (create it with "
                       "strata.layers.container_layer)" % (name, store.root))
    return record


def _plan(store: Store, name: str, tags: List[str], message: str,
          changes_: Dict[str, Any]) -> Dict[str, Any]:
    record = _container(store, name)
    image = store.images.get(record.image_id)
    hasher = hashlib.sha256()
    mtime_max = 0
    for chunk in changes(store, record, [ChainID(c) for c in image.chain]).tar():
        hasher.update(chunk)
    diff_id = DiffID("sha256:" + hasher.hexdigest())
    layer = store.layers.find(chain_id(ChainID(image.top) if image.top else None, diff_id))
    if layer is not None:
        mtime_max = layer.mtime_max
    config = commit_config(image, diff_id, mtime_max, message, changes_=changes_)
    present = layer is not None and store.images.exists(config.id)
    current = store.images.tags()
    changed = not present or any(current.get(t) != config.id for t in tags)
    return {"changed": changed, "image_id": config.id if present else None,
            "layers": list(image.config.diff_ids) + [diff_id], "tags": tags}


def _commit(store: Store, name: str, tags: List[str], message: str,
            changes_: Dict[str, Any]) -> Dict[str, Any]:
    record = _container(store, name)
    image = store.images.get(record.image_id)
    chain = [ChainID(c) for c in image.chain]
    layer, imported = commit_changes(store, record, chain, "the changes of container %s" % name)
    crash_point("commit.layer")
    config = commit_config(image, layer.diff_id, layer.mtime_max, message, changes_=changes_)
    new, added = store.put_image(config, {"source": "commit:" + name, "parent": image.id,
                                          "container": record.id})
    moved = store.tag(new.id, tags)
    return {"changed": imported or added or bool(moved), "image_id": new.id,
            "layers": list(new.config.diff_ids), "tags": tags}
