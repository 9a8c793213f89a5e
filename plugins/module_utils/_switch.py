# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``storage_driver``: choose, initialise and switch the driver of a store.

``driver: auto`` means "the best usable driver here", except that a store which
already holds content keeps its (still usable) driver unless ``migrate`` is set,
as Docker keeps a prior driver.  A named driver that differs from the store's
refuses to strand content: without ``migrate`` it fails naming both drivers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, Unsupported
from ansible_collections.strata.layers.plugins.module_utils import _migrate as migration
from ansible_collections.strata.layers.plugins.module_utils._probe import PRIORITY, select
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Candidate


def storage_driver(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    requested = params.get("driver") or "auto"
    if requested != "auto" and requested not in PRIORITY:
        raise InvalidInput("driver %r is not one of auto, %s" % (requested, ", ".join(PRIORITY)))
    store = Store.from_params(params)
    migrate = bool(params.get("migrate"))
    keep = params.get("keep_previous")  # None: not said (leave what a migration kept)
    if check_mode:
        with store.read():
            return _plan(store, requested, migrate, keep, dry=True)
    with store.write("storage_driver %s" % requested, init=False):
        return _plan(store, requested, migrate, keep, dry=False)


def _plan(store: Store, requested: str, migrate: bool, keep: Optional[bool],
          dry: bool) -> Dict[str, Any]:
    probe_dir = store._probe_dir() if not dry else None
    best, facts, found = select(store.root, requested, probe_dir)
    current = store.driver_name
    target = _target(store, requested, best, current, found, migrate)
    result: Dict[str, Any] = {
        "changed": target != current, "driver": target, "previous_driver": current
        if target != current else store.state().get("previous_driver"),
        "backing_filesystem": facts.backing_filesystem, "supports_d_type": facts.supports_d_type,
        "candidates": [c.as_dict() for c in found], "migrated": None}
    if dry:
        if target != current and current is not None and store.has_content():
            result["migrated"] = migration.preview(store, target)
        elif target == current and store.exists():
            result["changed"] = migration.previous_to_drop(store, keep) is not None
        return result
    if target == current:
        result["changed"] = migration.finish_previous(store, keep)
        return result
    if current is None or not store.has_content():
        _switch_empty(store, current, target)
        return result
    result["migrated"] = migration.migrate(store, target, keep)
    return result


def _target(store: Store, requested: str, best: str, current: Optional[str],
            found: List[Candidate], migrate: bool) -> str:
    if current is None:
        return best
    if requested == "auto":
        usable = {c.name for c in found if c.usable}
        if current in usable and not migrate:
            return current
        if current not in usable and not migrate and store.has_content():
            raise Unsupported("the store's driver %s cannot run here any more (%s) and the store "
                              "holds content: set migrate: true to move it to %s"
                              % (current, _reason_of(found, current), best))
        return best
    if requested != current and store.has_content() and not migrate:
        raise InvalidInput(
            "the store %s holds content under driver %s; switching to %s needs migrate: true "
            "(every layer and container is re-materialised under %s and verified before the "
            "switch)" % (store.root, current, requested, requested))
    return requested


def _reason_of(found: List[Candidate], name: str) -> str:
    return next((c.reason for c in found if c.name == name), "not probed")


def _switch_empty(store: Store, current: Optional[str], target: str) -> None:
    store.initialize(target, previous=current)
    if current is not None and current != target:
        migration.remove_home(store, current)
