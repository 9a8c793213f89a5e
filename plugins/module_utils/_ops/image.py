# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.image``: tag, untag and remove images (``docker tag`` / ``docker rmi``).

``state: present`` points ``tag`` at the image ``name`` resolves to.  ``state: absent``
with a tag that is not the image's last one only removes that tag (as ``docker rmi
NAME:TAG`` does); otherwise the image is removed with every tag, and then every layer
no other image or container needs.  An image a container uses is not removed unless
``force``, which removes those containers first and says so.  References fail closed:
a container record that cannot be read refuses the removal (it may use the image), and
while any record cannot be read the image's layers are kept (``removed.unreadable``).
"""
from __future__ import annotations

from typing import Any, Dict, List

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    AlreadyExists, Corrupt, InvalidInput, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._imageref import (
    normalize_tag, validate_tags)
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def image(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    state = params.get("state") or "present"
    if state not in ("present", "absent"):
        raise InvalidInput("state %r is not present or absent" % state)
    name = params.get("name")
    if not name:
        raise InvalidInput("name (an image reference) is required")
    tags = validate_tags(params.get("tag") or [])
    store = Store.from_params(params)
    if check_mode or not store.exists():
        with store.read():
            return _apply(store, state, name, tags, bool(params.get("force")), dry=True)
    with store.write("image %s %s" % (state, name)):
        return _apply(store, state, name, tags, bool(params.get("force")), dry=False)


def _apply(store: Store, state: str, name: str, tags: List[str], force: bool,
           dry: bool) -> Dict[str, Any]:
    if state == "present":
        return _present(store, name, tags, dry)
    return _absent(store, name, force, dry)


def _present(store: Store, name: str, tags: List[str], dry: bool) -> Dict[str, Any]:
    if not store.exists():
        raise NotFound("image %r is not in the store (the store is empty)" % name)
    image_id = store.images.resolve(name)
    current = store.images.tags()
    moved = [t for t in tags if current.get(t) != image_id]
    if moved and not dry:
        store.tag(image_id, moved)
    return {"changed": bool(moved), "image_id": image_id,
            "tags": sorted(set(store.images.tags_of(image_id, current)) | set(tags)),
            "removed": None}


def _absent(store: Store, name: str, force: bool, dry: bool) -> Dict[str, Any]:
    try:
        image_id = store.images.resolve(name) if store.exists() else None
    except NotFound:
        image_id = None
    if image_id is None:
        return {"changed": False, "image_id": None, "tags": [], "removed": None}
    current = store.images.tags()
    mine = store.images.tags_of(image_id, current)
    untag = _as_tag(name)
    if untag in mine and len(mine) > 1:
        if not dry:
            store.images.write_tags({t: i for t, i in current.items() if t != untag})
        return {"changed": True, "image_id": image_id, "tags": [t for t in mine if t != untag],
                "removed": {"tags": [untag], "images": [], "layers": [], "containers": []}}
    refs = store.references()
    if refs.unreadable_containers:
        raise Corrupt("cannot tell whether image %s is in use: container record(s) %s cannot be "
                      "read; nothing was removed. Run strata.layers.store_check with repair: "
                      "true (it moves damaged records aside), then remove the image again"
                      % (name, ", ".join(c[:12] for c in refs.unreadable_containers)),
                      unreadable=refs.unreadable)
    users = [containers.ContainerDB(store.root).get(cid)
             for cid, used in sorted(refs.container_images.items()) if used == image_id]
    if users and not force:
        raise AlreadyExists("image %s is used by container(s) %s; remove them first or set "
                            "force: true (which removes them too)"
                            % (name, ", ".join(sorted(c.name for c in users))),
                            containers=sorted(c.name for c in users))
    # docker rmi -f refuses an image a running container uses; so do we
    containers.refuse_running(store, users, "removing image %s" % name)
    # only the image's own layers that nothing else needs go with it (docker rmi): a
    # layer kept untagged for later use as a parent is not this image's to remove
    chain = set(store.images.get(image_id).chain)
    gone = {image_id} | {"container:" + c.id for c in users}
    freed = [c for c in store.unused_layers(gone) if c in chain]
    removed = {"tags": mine, "images": [image_id], "containers": sorted(c.name for c in users),
               "layers": [str(c) for c in freed], "unreadable": refs.unreadable}
    if dry:
        return {"changed": True, "image_id": image_id, "tags": [], "removed": removed}
    for user in users:
        containers.remove(store, user)
    store.remove_image(image_id, freed)
    return {"changed": True, "image_id": image_id, "tags": [], "removed": removed}


def _as_tag(name: str) -> str:
    try:
        return normalize_tag(name)
    except StoreError:
        return ""
