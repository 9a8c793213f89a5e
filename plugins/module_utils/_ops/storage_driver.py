# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``storage_driver``: this collection's store (``engine: strata``: ``_migrate`` moves
its content) or dockerd's own storage (``engine: docker``).

Docker: the current driver is the running daemon's (``GET /info``), else daemon.json's
``storage-driver``, else the one driver tree under ``image/`` that holds content.
``driver: auto`` keeps a current driver (as dockerd keeps a prior one) and otherwise
takes the probe's first usable candidate.  The reason a run changes something is one
of: a migration (content under another driver), a daemon.json change, an interrupted
switch to finish, a kept previous tree to drop; check mode stops there.

A migration, step by step (``_docker.migrate`` for the conversion itself): refuse,
before writing anything, a running daemon, live containers (unless
``stop_containers``), mounts under the source tree, a source this module cannot read,
a target the probe rejects, too little free space; pin ``storage-driver`` to the
source in daemon.json (a restart during the conversion then starts on the source even
though two driver trees exist, which dockerd otherwise refuses); materialise and
verify; install ``image/<new>``; write daemon.json (the commit point); point every
container's config.v2.json at the new driver; remove the previous tree unless
``keep_previous``.  Killed before the commit point, dockerd starts on the source with
everything; after it, on the target, and the next run (any run not asking for a third
driver) finishes the containers' switch: the journal says ``switching``.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Any, Dict, Iterator, List, Optional

from ansible_collections.strata.layers.plugins.module_utils import _migrate as migration
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Busy, InvalidInput, Locked, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mounts_below, umount
from ansible_collections.strata.layers.plugins.module_utils._lock import holder_pids
from ansible_collections.strata.layers.plugins.module_utils._probe import PRIORITY, select
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._docker import daemon as engine
from ansible_collections.strata.layers.plugins.module_utils._docker.candidates import probe
from ansible_collections.strata.layers.plugins.module_utils._docker.graph import GRAPHS, graph
from ansible_collections.strata.layers.plugins.module_utils._docker.layout import (
    DriverMeta, driver_trees)
from ansible_collections.strata.layers.plugins.module_utils._docker.migrate import (
    Conversion, kept_driver, remove_driver_tree)
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Candidate

STRATA_ROOT = "/var/lib/strata"


def storage_driver(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    engine_name = params.get("engine") or "strata"
    if engine_name == "strata":
        params = dict(params, data_root=params.get("data_root") or STRATA_ROOT)
        result = strata_storage_driver(params, check_mode=check_mode)
        result["engine"] = "strata"
        return result
    if engine_name != "docker":
        raise InvalidInput("engine %r is not one of strata, docker" % engine_name)
    config = engine.DaemonConfig(params.get("daemon_config") or engine.DEFAULT_CONFIG)
    root = params.get("data_root") or config.data_root()
    with _lock(root, params, check_mode):
        return DockerHost(params).run(check_mode)


# ---------------------------------------------------------------------- engine: strata

def strata_storage_driver(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """``engine: strata``: choose, initialise or switch the driver of a store.

    ``driver: auto`` means "the best usable driver here", except that a store which
    already holds content keeps its (still usable) driver unless ``migrate`` is set,
    as Docker keeps a prior driver.  A named driver that differs from the store's
    refuses to strand content: without ``migrate`` it fails naming both drivers."""
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


# ---------------------------------------------------------------------- engine: docker

@contextlib.contextmanager
def _lock(root: str, params: Dict[str, Any], check_mode: bool) -> Iterator[None]:
    """Two runs that change one data root take turns: ``flock`` on the data root
    directory itself (no file is added to dockerd's tree).  Check mode only reads."""
    if check_mode or not os.path.isdir(root):
        yield
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        timeout = float(params.get("lock_timeout") or 300.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holders = ", ".join("pid %d" % p for p in holder_pids(fd)) or "unknown"
                    raise Locked("another storage_driver run holds %s (%s); gave up after %gs: "
                                 "wait for it to finish and run again" % (root, holders, timeout)
                                 ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


OPTION_PREFIXES = {"overlay2": "overlay2.", "btrfs": "btrfs.", "vfs": "vfs.", "zfs": "zfs.",
                   "devicemapper": "dm.", "fuse-overlayfs": "fuse-overlayfs."}


def _foreign_option(option: str, target: str) -> bool:
    """``option`` belongs to a driver other than ``target`` (``overlay2.size=...``)."""
    key = option.split("=", 1)[0].strip().lower()
    return any(key.startswith(prefix) for name, prefix in OPTION_PREFIXES.items()
               if name != target)


class DockerHost:
    """One run of the module against dockerd's data root."""

    def __init__(self, params: Dict[str, Any]) -> None:
        self.config = engine.DaemonConfig(params.get("daemon_config") or engine.DEFAULT_CONFIG)
        self.root = params.get("data_root") or self.config.data_root()
        self.requested = params.get("driver") or "auto"
        self.migrate = bool(params.get("migrate"))
        self.keep = params.get("keep_previous")
        self.stop_containers = bool(params.get("stop_containers"))
        self.daemon = engine.running_daemon(self.config)
        self.before = self.config.text

    # ------------------------------------------------------------ facts
    def current(self) -> Optional[str]:
        if self.daemon and self.daemon.get("Driver"):
            return str(self.daemon["Driver"])
        if self.config.driver:
            return self.config.driver
        trees = driver_trees(self.root)
        if len(trees) > 1:
            raise InvalidInput("%s holds images under several drivers (%s) and daemon_config %s "
                               "names none; dockerd refuses to start like this: set driver to "
                               "the one in use" % (self.root, ", ".join(trees), self.config.path))
        return trees[0] if trees else None

    def target(self, current: Optional[str], found: List[Candidate]) -> str:
        usable = [c.name for c in found if c.usable]
        if self.requested == "auto":
            if current and (current in usable or not self.migrate):
                return current
            if not usable:
                raise Unsupported("no storage driver can run for %s: %s" % (self.root, "; ".join(
                    "%s: %s" % (c.name, c.reason) for c in found)))
            return usable[0]
        return self.requested

    def refuse_target(self, target: str, found: List[Candidate]) -> None:
        chosen = next((c for c in found if c.name == target), None)
        if target not in GRAPHS or chosen is None:
            graph(target, self.root)  # raises, naming the driver
        if chosen is not None and not chosen.usable:
            raise Unsupported("storage driver %s cannot run for %s: %s"
                              % (target, self.root, chosen.reason),
                              candidates=[c.as_dict() for c in found])

    def settings(self, target: str) -> Dict[str, Any]:
        """daemon.json keys for ``target``: ``storage-driver``, and ``storage-opts`` without
        the options of other drivers (dockerd refuses to start on options it does not
        know; none of these four drivers needs one to start)."""
        out: Dict[str, Any] = {"storage-driver": target}
        opts = self.config.data.get("storage-opts")
        if isinstance(opts, list):
            kept = [o for o in opts if not _foreign_option(str(o), target)]
            out["storage-opts"] = kept or None
        return out

    # ------------------------------------------------------------ run
    def run(self, check_mode: bool) -> Dict[str, Any]:
        facts, found = probe(self.root)
        unfinished = self.unfinished()
        if unfinished is not None:
            return self.finish_switch(unfinished, facts, found, check_mode)
        current = self.current()
        target = self.target(current, found)
        content = bool(current) and DriverMeta(self.root, str(current)).has_content()
        moving = current is not None and target != current and content
        if target != current:
            self.refuse_target(target, found)
        if moving and not self.migrate:
            raise InvalidInput(
                "Docker's data root %s holds images and containers under %s; switching to %s "
                "needs migrate: true (every layer and container is converted and verified, "
                "with dockerd stopped)" % (self.root, current, target))
        result = self.result(facts, found, current, target)
        drop = self._kept_to_drop(target, moving)
        after = self.config.render(self.settings(target))
        writes = self.config.driver != target or after != self.config.render({})
        stale = self._stale_conversion(target)
        result["changed"] = bool(moving or writes or drop or stale)
        if writes:
            result["diff"] = self.diff(after)
        conversion = Conversion(self.root, str(current), target) if moving else None
        if conversion is not None:
            self._refuse_busy(str(current))
            plan = conversion.plan()
            conversion.check_space(plan)
            result["migrated"] = {k: plan[k] for k in ("layers", "images", "containers", "bytes")}
            result["migrated"]["seconds"] = 0.0
        if check_mode:
            return result
        if stale is not None and conversion is None:
            stale.abandon()
        if conversion is not None:
            result["stopped_containers"] = self._stop_live(str(current))
            result["migrated"] = self._convert(conversion)
        elif writes:
            self.config.write(after)
        if drop:
            remove_driver_tree(self.root, drop)
        return result

    def result(self, facts: Any, found: List[Candidate], current: Optional[str],
               target: str) -> Dict[str, Any]:
        return {"engine": "docker", "driver": target,
                "previous_driver": current if target != current else kept_driver(self.root),
                "backing_filesystem": facts.backing_filesystem,
                "supports_d_type": facts.supports_d_type, "data_root": self.root,
                "daemon_config": self.config.path, "candidates": [c.as_dict() for c in found],
                "migrated": None, "stopped_containers": [], "changed": False}

    def diff(self, after: str) -> Dict[str, str]:
        return {"before": self.before or "", "after": after,
                "before_header": self.config.path, "after_header": self.config.path}

    def unfinished(self) -> Optional[Conversion]:
        """A conversion killed during its switch (journal ``switching``): finished by any
        run that does not ask for another driver than it was switching to."""
        state = Conversion.journal_of(self.root)
        if not state or state.get("step") != "switching":
            return None
        if self.requested not in ("auto", state.get("target")):
            raise InvalidInput("a switch of %s from %s to %s was interrupted; finish it first "
                               "(run again with driver: %s), then choose another driver"
                               % (self.root, state.get("source"), state.get("target"),
                                  state.get("target")))
        return Conversion(self.root, str(state["source"]), str(state["target"]))

    def finish_switch(self, conversion: Conversion, facts: Any, found: List[Candidate],
                      check_mode: bool) -> Dict[str, Any]:
        result = self.result(facts, found, conversion.source, conversion.target)
        result["changed"] = True
        after = self.config.render(self.settings(conversion.target))
        if self.config.driver != conversion.target:
            result["diff"] = self.diff(after)
        if check_mode:
            return result
        self._refuse_busy(conversion.source, mounts=False)
        result["migrated"] = {"layers": 0, "images": 0, "containers": 0, "bytes": 0,
                              "seconds": 0.0, "finished_interrupted_switch": True}
        self._switch(conversion)
        return result

    def _stale_conversion(self, target: str) -> Optional[Conversion]:
        """A conversion to another driver that was interrupted before its switch (a
        failed or killed run, then a rollback asking for the source): its half-made
        tree is removed.  Under ``driver: auto`` it is left to be resumed."""
        state = Conversion.journal_of(self.root)
        if not state or self.requested == "auto" or state.get("target") == target:
            return None
        return Conversion(self.root, str(state["source"]), str(state["target"]))

    def _kept_to_drop(self, target: str, moving: bool) -> Optional[str]:
        kept = kept_driver(self.root)
        if moving or not kept or kept == target or self.keep is not False:
            return None
        return kept

    def _refuse_busy(self, current: str, mounts: bool = True) -> None:
        if self.daemon is not None:
            where = self.daemon.get("socket") or "pid %s" % self.daemon.get("pid")
            raise Busy("dockerd is running (it answers on %s); stop it first (systemctl stop "
                       "docker.socket docker, or the driver_rollout role): a migration converts "
                       "the data root offline and this module never stops or starts the engine"
                       % where)
        live = engine.running_containers(self.root)
        if live and not self.stop_containers:
            raise Busy("containers %s still run without dockerd (live-restore); stop them or set "
                       "stop_containers: true" % ", ".join(n for _c, n, _p in live),
                       containers=[n for _c, n, _p in live])
        if mounts and not live:  # a live container's root stays mounted until it is stopped
            self._refuse_mounted(current)

    def _refuse_mounted(self, current: str) -> None:
        busy = [m.mount_point for m in mounts_below(graph(current, self.root).home)]
        if busy:
            raise Busy("%s is mounted under Docker's %s tree (a container left mounted by a "
                       "killed dockerd?): unmount it and run again" % (busy[0], current),
                       mounts=busy)

    def _stop_live(self, current: str) -> List[str]:
        """With ``stop_containers``: stop what still runs, then release the root
        filesystems dockerd left mounted for them (it would unmount them at start)."""
        live = engine.running_containers(self.root)
        if not live:
            return []
        stopped = engine.stop_processes(live)
        still = engine.running_containers(self.root)
        if still:
            raise Busy("containers %s did not stop" % ", ".join(n for _c, n, _p in still))
        for entry in sorted(mounts_below(graph(current, self.root).home),
                            key=lambda m: len(m.mount_point), reverse=True):
            umount(entry.mount_point)
        self._refuse_mounted(current)
        return stopped

    def _convert(self, conversion: Conversion) -> Dict[str, Any]:
        if not self.config.driver:
            # pinned first: with two driver trees and no storage-driver, dockerd refuses to
            # start; pinned, a restart during the conversion starts on the source
            self.config.write(self.config.render({"storage-driver": conversion.source}))
        counts = conversion.materialize()
        self._switch(conversion)
        return counts

    def _switch(self, conversion: Conversion) -> None:
        keep = bool(self.keep)
        conversion.install()
        if self.config.driver != conversion.target:
            self.config.write(self.config.render(self.settings(conversion.target)))
        crash_point("docker-migrate.committed")
        conversion.flip_containers(keep)
        conversion.finish(keep)
