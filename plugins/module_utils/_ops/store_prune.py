# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.store_prune``: remove what nothing references (``docker image prune``).

What goes is ``_prune.plan``'s: dangling images, then every layer nothing else needs;
nothing while a record cannot be read (the result's ``unreadable`` says which to repair).
Reclaimed bytes are measured on disk (what the driver's directories really took), not
the layers' logical sizes.

With ``build_cache``, the directories of ``RUN --mount=type=cache`` go too (as
``docker builder prune`` removes BuildKit's cache mounts); they are never removed
otherwise, since nothing references them but the next build.
"""
from __future__ import annotations

from typing import Any, Dict, List

from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import allocated_bytes
from ansible_collections.strata.layers.plugins.module_utils._prune import plan
from ansible_collections.strata.layers.plugins.module_utils._runsetup import prune_caches
from ansible_collections.strata.layers.plugins.module_utils._store import Store


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
    if result["unreadable"]:
        # fail closed as a whole: the warning says nothing was pruned, and it is so
        result["removed"]["build_cache"] = []
        return result
    names, size = prune_caches(store.root, dry) if store.exists() else ([], 0)
    result["removed"]["build_cache"] = names
    result["reclaimed"] += size
    result["changed"] = result["changed"] or bool(names)
    return result


def _plan(store: Store) -> Dict[str, Any]:
    if not store.exists():
        return _result([], [], [], 0)
    images, layers, held = plan(store)
    reclaimed = sum(allocated_bytes(store.driver.layer_dir(c)) for c in layers)
    return _result(images, layers, held, reclaimed)


def _prune(store: Store) -> Dict[str, Any]:
    images, layers, held = plan(store)
    for image_id in images:
        store.remove_image(image_id)
    reclaimed = sum(store.remove_layer(chain) for chain in layers)
    return _result(images, layers, held, reclaimed)


def _result(images: List[str], layers: List[ChainID], held: List[str],
            reclaimed: int) -> Dict[str, Any]:
    result: Dict[str, Any] = {
        "changed": bool(images or layers),
        "removed": {"images": images, "layers": [str(c) for c in layers]},
        "reclaimed": reclaimed, "unreadable": held}
    if held:
        result["warnings"] = ["nothing was pruned: %d image or container record(s) cannot be "
                              "read, and any layer may be theirs (%s). Run "
                              "strata.layers.store_check (repair: true), re-import the missing "
                              "images or remove those containers, then prune again"
                              % (len(held), "; ".join(held[:3]))]
    return result
