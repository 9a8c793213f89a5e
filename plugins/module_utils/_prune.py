# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``store_prune``: remove what nothing references (``docker image prune``).

An image is unreferenced when no tag points at it, no container uses it and it is not
the parent of a kept image (a build step another image was made from); a layer when no
remaining image or container needs it.  Reclaimed bytes are measured on disk (what
the driver's directories really took), not the layers' logical sizes.

With ``build_cache``, the directories of ``RUN --mount=type=cache`` go too (as
``docker builder prune`` removes BuildKit's cache mounts); they are never removed
otherwise, since nothing references them but the next build.
"""
from __future__ import annotations

from typing import Any, Dict, List, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import allocated_bytes
from ansible_collections.strata.layers.plugins.module_utils._runsetup import prune_caches
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def dangling_images(store: Store) -> List[str]:
    tagged = set(store.images.tags().values())
    used = {c.image_id for c in containers.ContainerDB(store.root).all()}
    images = store.images.all()
    keep: Set[str] = tagged | used
    parents = {i.id: i.meta.get("parent") for i in images}
    frontier = list(keep)
    while frontier:
        parent = parents.get(frontier.pop())
        if parent and parent not in keep:
            keep.add(parent)
            frontier.append(parent)
    return sorted(i.id for i in images if i.id not in keep)


def plan(store: Store) -> Tuple[List[str], List[ChainID]]:
    """What a prune removes: dangling images, then every layer nothing else needs."""
    images = dangling_images(store)
    return images, store.unused_layers(set(images))


def store_prune(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    store = Store.from_params(params)
    caches = bool(params.get("build_cache"))
    if check_mode or not store.exists():
        with store.read():
            return _with_caches(_plan(store), store, caches, True)
    with store.write("store_prune"):
        return _with_caches(_prune(store), store, caches, False)


def _with_caches(result: Dict[str, Any], store: Store, caches: bool, dry: bool
                 ) -> Dict[str, Any]:
    if not caches:
        return result
    names, size = prune_caches(store.root, dry) if store.exists() else ([], 0)
    result["removed"]["build_cache"] = names
    result["reclaimed"] += size
    result["changed"] = result["changed"] or bool(names)
    return result


def _plan(store: Store) -> Dict[str, Any]:
    if not store.exists():
        return {"changed": False, "removed": {"images": [], "layers": []}, "reclaimed": 0}
    images, layers = plan(store)
    reclaimed = sum(allocated_bytes(store.driver.layer_dir(c)) for c in layers)
    return {"changed": bool(images or layers),
            "removed": {"images": images, "layers": [str(c) for c in layers]},
            "reclaimed": reclaimed}


def _prune(store: Store) -> Dict[str, Any]:
    images, layers = plan(store)
    for image_id in images:
        store.remove_image(image_id)
    reclaimed = sum(store.remove_layer(chain) for chain in layers)
    return {"changed": bool(images or layers),
            "removed": {"images": images, "layers": [str(c) for c in layers]},
            "reclaimed": reclaimed}
