# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a prune removes (``docker image prune``): the plan ``store_prune`` carries out
(``_ops/store_prune.py``) and ``store_info``'s reclaimable figure counts.

An image is unreferenced when no tag points at it, no container uses it and it is not
the parent of a kept image (a build step another image was made from); a layer when no
remaining image or container needs it.  References fail closed: while any image or
container record cannot be read (damaged, quarantined, or naming a missing image),
nothing is pruned and the plan's third list says which records to repair.
"""
from __future__ import annotations

from typing import List, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._store import References, Store


def dangling_images(store: Store, refs: References) -> List[str]:
    if refs.unreadable_containers:
        return []   # fail closed: a container record that cannot be read may use any image
    tagged = set(store.images.tags().values())
    used = set(refs.container_images.values())
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


def plan(store: Store) -> Tuple[List[str], List[ChainID], List[str]]:
    """What a prune removes: dangling images, then every layer nothing else needs; and
    the records that could not be read (while there are any, nothing is removed)."""
    refs = store.references()
    if refs.unreadable:
        return [], [], refs.unreadable
    images = dangling_images(store, refs)
    return images, store.unused_layers(set(images)), []
