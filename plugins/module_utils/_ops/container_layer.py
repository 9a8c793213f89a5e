# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.container_layer``: a container's writable layer on an image, created,
mounted, unmounted or removed (the records and their steps: ``_containers``).

The reason (create, mount, unmount, remove or None) is decided under the shared lock; a
run with nothing to do neither waits for writers nor sweeps the store, and check mode
stops there.  A container a ``container`` run keeps running is neither unmounted nor
removed.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.strata.layers.plugins.module_utils._containers import (
    _NAME_RE, ContainerDB, ContainerRecord, check_mount_point, container_row, create,
    default_mount_point, is_mounted, mount, refuse_busy_target, refuse_running, remove, unmount)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    AlreadyExists, InvalidInput, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount_at
from ansible_collections.strata.layers.plugins.module_utils._store import Store

STATES = ("present", "mounted", "unmounted", "absent")


def _reason(store: Store, record: Optional[ContainerRecord], image_id: Optional[str],
            state: str, target: Optional[str]) -> Optional[str]:
    if state == "absent":
        if record is not None:
            refuse_running(store, [record], "removing its layer")
        return "remove" if record is not None else None
    if record is None:
        return "create"
    if image_id is not None and record.image_id != image_id:
        raise AlreadyExists(
            "container %r already exists on image %s, not on %s; remove it first (state: "
            "absent) or choose another name" % (record.name, record.image_id[7:19], image_id[7:19]))
    if state == "mounted":
        if record.mount_point == target and mount_at(target) is not None:
            return None
        return "mount"
    if state == "unmounted":
        if is_mounted(record):
            refuse_running(store, [record], "unmounting its root filesystem")
            return "unmount"
        return None
    return None


def container_layer(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    name = params["name"]
    state = params.get("state") or "present"
    if state not in STATES:
        raise InvalidInput("state %r is not one of %s" % (state, ", ".join(STATES)))
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput("container name %r is not valid: letters, digits, _ . - (not first), "
                           "at most 128" % (name,))
    if state in ("present", "mounted") and not params.get("image"):
        raise InvalidInput("image is required for state %s" % state)
    store = Store.from_params(params)
    if store.exists() or check_mode or state in ("absent", "unmounted"):
        # decide under the shared lock: a run with nothing to do (the common case in a
        # playbook run again) neither waits for writers' turn nor sweeps the store
        with store.read():
            planned = _run(store, params, state, dry=True)
        if check_mode or not planned["changed"]:
            return planned
    with store.write("container_layer %s (%s)" % (name, state)):
        return _run(store, params, state, dry=False)


def _run(store: Store, params: Dict[str, Any], state: str, dry: bool) -> Dict[str, Any]:
    name = params["name"]
    exists = store.exists()
    db = ContainerDB(store.root)
    record = db.by_name(name) if exists else None
    image_id = None
    if params.get("image") and state != "absent":
        if not exists:
            raise NotFound("image %r is not in the store (the store is empty)" % params["image"])
        image_id = store.images.resolve(params["image"])
    target = None
    if state == "mounted":
        wanted = params.get("mount_point")
        target = check_mount_point(store, wanted) if wanted else None
        if target is None:
            target = record.mount_point if record and record.mount_point else None
    reason = _reason(store, record, image_id, state,
                     target or (default_mount_point(store, record.id) if record else None))
    if dry or reason is None:
        return _result(store, record, reason is not None, state, reason)
    if reason == "remove" and record is not None:
        remove(store, record)
        return {"changed": True, "id": record.id, "name": name, "image_id": record.image_id,
                "state": "absent", "action": "removed"}
    if record is None:
        if state == "mounted" and target is not None:
            refuse_busy_target(target)
        record = create(store, name, store.images.get(image_id))
    if state == "mounted":
        mount(store, record, target or default_mount_point(store, record.id))
    elif state == "unmounted":
        unmount(store, record)
    return _result(store, db.get(record.id), True, state, reason)


def _result(store: Store, record: Optional[ContainerRecord], changed: bool, state: str,
            reason: Optional[str]) -> Dict[str, Any]:
    if record is None:
        return {"changed": changed, "id": None, "name": None, "image_id": None,
                "size": 0, "virtual_size": 0, "mounted": False, "action": reason}
    row = container_row(store, record)
    row.pop("chain")
    row.update(changed=changed, action=reason)
    return row
