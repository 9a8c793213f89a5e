# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline conversion of a Docker data root from one graph driver to another.

dockerd must be stopped (the caller checks).  Nothing of the source driver is
changed until the switch; everything new is built beside it:

1. *materialise* every layer of ``image/<old>/layerdb``, parents first: a fresh
   cache-id in the new graph (``graph``), the layer's tar re-emitted from the old
   driver's files with its tar-split and applied by the collection's tar applier (the
   stream must hash to the diff_id); then the tar is re-emitted again from the *new*
   files and must hash to the diff_id (where every file is a clone whose data the
   stream read back, a check by inode and size stands in: ``tarsplit.same_files``).
   Only then is its record (diff, parent, size,
   tar-split.json.gz, the new cache-id) written to the staged layerdb
   (``<data_root>/strata-migrate/image/layerdb``) by one directory rename;
2. every container: its ``-init`` layer and read-write layer are read as change tars
   from the old driver and applied to new ones (a new mount-id); the merged views under
   both drivers are mounted read-only and must agree on every path the changes touch
   (type, mode, owner, size, mtime, content, link target, device, xattrs).  Its record
   (mount-id, init-id, parent) is staged likewise.  On a btrfs or vfs target the
   directories a container deletes (from an overlay source's whiteouts) are moved aside
   and deleted on a worker while the next container is carried (``trash``), all gone
   before the ``syncfs``;
3. ``syncfs``, then the *switch* (journal state ``switching``): imagedb,
   repositories.json and distribution are copied into the staged tree, which becomes
   ``image/<new>`` by one rename (``install``); the caller writes daemon.json (the commit
   point for dockerd); every ``containers/<id>/config.v2.json`` gets ``"Driver": <new>``
   (``flip_containers``);
4. unless ``keep_previous``, the old driver's tree and ``image/<old>`` are removed.

A graph id is announced in ``strata-migrate/pending/`` before it is created and the
mark removed once its record is staged: a kill -9 during steps 1-2 leaves the source
untouched (dockerd starts on it with everything, daemon.json names it) and the next run
removes the pending ids, reuses every staged layer and carries the containers again
(they may have changed in between).  A kill during step 3 is finished by the next run
(the journal says ``switching``); before daemon.json is written dockerd still starts on
the source with everything, after it on the target.  A kept previous tree (``kept.json``) is adopted by a
migration back to it: its layers are immutable and reused, its containers redone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _migrate as strata_migrate
from ansible_collections.strata.layers.plugins.module_utils._apply import Applier
from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    fsync_dir, makedirs, read_json, remove_tree, rename_durable, syncfs, temp_name,
    write_file, write_json)
from ansible_collections.strata.layers.plugins.module_utils._changes import chunk_reader
from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._digest import hex_of
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    AlreadyExists, Corrupt, DigestMismatch, NoSpace)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import free_bytes
from ansible_collections.strata.layers.plugins.module_utils._tarformat import ChunkReader
from ansible_collections.strata.layers.plugins.module_utils._docker import tarsplit
from ansible_collections.strata.layers.plugins.module_utils._docker.trash import Trash
from ansible_collections.strata.layers.plugins.module_utils._docker.graph import (
    Graph, graph, new_id)
from ansible_collections.strata.layers.plugins.module_utils._docker.layout import (
    ContainerConfig, DriverMeta, LayerMeta, MountMeta, container_ids, is_hex64)

WORK = "strata-migrate"
SHADOW = "shadow-"  # Graph.shadow_dir's names in the work directory
_METADATA_COPIED = ("imagedb", "distribution", "repositories.json")


class Conversion:
    """One conversion of ``data_root`` from driver ``source`` to ``target``."""

    def __init__(self, data_root: str, source: str, target: str) -> None:
        self.data_root = data_root
        self.source, self.target = source, target
        self.old_meta = DriverMeta(data_root, source)
        self.old = graph(source, data_root)
        self.new = graph(target, data_root)
        self.work = os.path.join(data_root, WORK)
        self.staged = DriverMeta(self.work, "staged")  # <work>/image/staged/...
        self.journal = os.path.join(self.work, "journal.json")
        self._trash = Trash()

    # ------------------------------------------------------------ plan
    def plan(self) -> Dict[str, Any]:
        """What the conversion moves (check mode) and the bytes it needs."""
        layers = self.old_meta.layers()
        mounts = self.old_meta.mounts()
        done = set(self.staged.chain_hexes())
        todo = [m for m in layers if hex_of(m.chain_id) not in done]
        return {"layers": len(layers), "images": len(self.old_meta.image_hexes()),
                "containers": len(mounts), "bytes": sum(m.size for m in todo),
                "needed_bytes": self._needed(layers, todo, mounts)}

    def _needed(self, layers: List[LayerMeta], todo: List[LayerMeta],
                mounts: List[MountMeta]) -> int:
        """Bytes the new tree needs: each layer's own files for overlay and btrfs
        (snapshots share the rest); full copies for vfs (a layer holds all below it,
        a container its image twice: init and read-write)."""
        slack = 64 * 1024 * (len(todo) + 2 * len(mounts))
        if self.target != "vfs":
            return sum(m.size for m in todo) + slack
        by_chain = {m.chain_id: m for m in layers}
        full = {m.chain_id: _full_size(m, by_chain) for m in layers}
        images = sum(full[m.chain_id] for m in todo)
        return images + sum(2 * full.get(m.parent, 0) for m in mounts if m.parent) + slack

    def check_space(self, plan: Dict[str, Any]) -> None:
        free = free_bytes(self.data_root)
        if plan["needed_bytes"] > free:
            raise NoSpace("converting %s from %s to %s needs about %d MiB and %s has %d MiB free: "
                          "free space (docker image prune, remove unused containers) and run "
                          "again; nothing was changed"
                          % (self.data_root, self.source, self.target,
                             plan["needed_bytes"] >> 20, self.data_root, free >> 20))

    # ------------------------------------------------------------ journal
    def state(self) -> Optional[Dict[str, Any]]:
        try:
            return read_json(self.journal)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise Corrupt("the migration journal %s is damaged (%s)" % (self.journal, exc)) from exc

    def _set_state(self, step: str) -> None:
        write_json(self.journal, {"source": self.source, "target": self.target, "step": step})

    # ------------------------------------------------------------ run
    def materialize(self) -> Dict[str, Any]:
        """Steps 1-2; returns counts.  Resumes a run of the same conversion."""
        started = time.monotonic()
        self._prepare()
        try:
            moved, reused, nbytes = self._layers()
            carried = self._containers()
        finally:
            self._trash.close()
        syncfs(self.new.home)
        crash_point("docker-migrate.materialized")
        return {"layers": moved, "reused_layers": reused, "containers": carried,
                "bytes": nbytes, "images": len(self.old_meta.image_hexes()),
                "seconds": round(time.monotonic() - started, 3)}

    def _prepare(self) -> None:
        state = self.state()
        if state and (state.get("source"), state.get("target")) != (self.source, self.target):
            Conversion(self.data_root, str(state["source"]), str(state["target"])).abandon()
        makedirs(self.work)
        makedirs(os.path.join(self.staged.layerdb, "sha256"))
        makedirs(os.path.join(self.work, "pending"))
        self._set_state("materializing")
        self._adopt_kept()
        self.new.init_home()
        self._drop_pending()
        self._drop_staged_mounts()
        for name in os.listdir(self.work):
            if name.startswith(SHADOW):  # clones of a killed run
                remove_tree(os.path.join(self.work, name))

    def _adopt_kept(self) -> None:
        """A tree of ``target`` left by ``keep_previous`` gives its layers back."""
        meta = DriverMeta(self.data_root, self.target)
        if not meta.exists():
            return
        kept = _read_kept(self.data_root)
        if not meta.has_content():
            remove_tree(meta.root)
            return
        if kept.get("driver") != self.target:
            raise AlreadyExists(
                "%s already holds Docker metadata for %s (dockerd ran on %s here before?); "
                "this migration would hide it: remove %s and %s (after checking nothing there "
                "is needed) and run again" % (self.data_root, self.target, self.target,
                                              meta.root, self.new.home))
        for mount in meta.mounts():
            for gid in (mount.mount_id, mount.init_id):
                if gid:
                    self.new.remove(gid)
        for chain_hex in meta.chain_hexes():
            dst = os.path.join(self.staged.layerdb, "sha256", chain_hex)
            if not os.path.exists(dst):
                rename_durable(os.path.join(meta.layerdb, "sha256", chain_hex), dst)
        remove_tree(meta.root)
        _write_kept(self.data_root, None)

    def _drop_pending(self) -> None:
        pending = os.path.join(self.work, "pending")
        for gid in os.listdir(pending):
            if gid.startswith("."):
                continue
            self.new.remove(gid)
            os.unlink(os.path.join(pending, gid))

    def _drop_staged_mounts(self) -> None:
        for mount in self.staged.mounts():
            for gid in (mount.mount_id, mount.init_id):
                if gid:
                    self.new.remove(gid)
            remove_tree(self.staged.mount_dir(mount.container_id))

    def _announce(self, gid: str) -> str:
        mark = os.path.join(self.work, "pending", gid)
        write_file(mark, b"")
        return mark

    # ------------------------------------------------------------ layers
    def _layers(self) -> Tuple[int, int, int]:
        """Layers parents first.  Layer N's second check (its tar re-emitted from the new
        files) runs on a worker thread while layer N+1 is applied; N is staged only once
        its check passed, and N+1 after N."""
        moved = reused = nbytes = 0
        self._gids: Dict[str, str] = {}
        pending: Optional[Tuple[LayerMeta, str, str, Any]] = None
        with ThreadPoolExecutor(max_workers=1) as pool:
            try:
                for meta in self.old_meta.layers():
                    if self._staged_ok(meta):
                        reused += 1
                        continue
                    applied = self._apply_layer(meta, pool)
                    if pending is not None:
                        self._finish_layer(*pending)
                    pending = applied
                    moved += 1
                    nbytes += meta.size
                if pending is not None:
                    self._finish_layer(*pending)
                    pending = None
            finally:
                if pending is not None:
                    pending[3].cancel()
        return moved, reused, nbytes

    def _staged_ok(self, meta: LayerMeta) -> bool:
        chain_hex = hex_of(meta.chain_id)
        if chain_hex not in self.staged.chain_hexes():
            return False
        staged = self.staged.layer(chain_hex)
        if self.new.exists(staged.cache_id) and staged.diff_id == meta.diff_id:
            return True
        remove_tree(self.staged.layer_dir(meta.chain_id))
        return False

    def _new_cache(self, chain: Optional[str]) -> Optional[str]:
        if not chain:
            return None
        gids = getattr(self, "_gids", {})
        return gids.get(chain) or self.staged.layer(hex_of(chain)).cache_id

    def _apply_layer(self, meta: LayerMeta, pool: ThreadPoolExecutor
                     ) -> Tuple[LayerMeta, str, str, Any]:
        """Apply one layer from the old files; start its check from the new files."""
        gid = new_id()
        mark = self._announce(gid)
        self.new.create(gid, self._new_cache(meta.parent))
        self._gids[meta.chain_id] = gid
        what = "layer %s (%s to %s)" % (meta.diff_id, self.source, self.target)
        split = list(tarsplit.entries(self.old_meta.split_path(meta.chain_id)))
        clones = tarsplit.Clones()
        stream = tarsplit.chunks(split, self.old.files(meta.cache_id), clones=clones)
        try:
            result = Applier(self.new.files(gid), self.new.whiteouts, None, what,
                             shadow=clones).apply(ChunkReader(chunk_reader(stream), what=what))
        finally:
            stream.close()
        read_from = clones.read_from
        if result.diff_id != meta.diff_id:
            raise DigestMismatch("layer %s re-emitted from %s's files hashes to %s: its files "
                                 "under %s are damaged; nothing was switched"
                                 % (meta.diff_id, self.source, result.diff_id,
                                    self.old.layer_dir(meta.cache_id)))
        return meta, gid, mark, pool.submit(self._check_new, meta, split, gid, read_from)

    def _check_new(self, meta: LayerMeta, split: List[Tuple[int, bytes, int]], gid: str,
                   read_from: Dict[bytes, Tuple[int, int]]) -> str:
        """The layer's diff_id from the new driver's files.  When every file of the layer
        is the very (cloned) inode the applier read and hashed, that hash was already
        computed from the new files: the tree is checked by inode and size instead of
        being read a second time.  Otherwise (copied data) the tar is re-emitted from the
        new files and hashed again."""
        if read_from and tarsplit.same_files(split, self.new.files(gid), read_from):
            return meta.diff_id
        return tarsplit.digest(split, self.new.files(gid))[0]

    def _finish_layer(self, meta: LayerMeta, gid: str, mark: str, check: Any) -> None:
        again = check.result()
        if again != meta.diff_id:
            raise DigestMismatch("layer %s re-emitted from the new %s files hashes to %s; "
                                 "nothing was switched" % (meta.diff_id, self.target, again))
        syncfs(self.new.home)
        crash_point("docker-migrate.layer-applied")
        self._stage_layer(meta, gid)
        os.unlink(mark)
        crash_point("docker-migrate.layer")

    def _stage_layer(self, meta: LayerMeta, gid: str) -> None:
        src = os.path.dirname(self.old_meta.split_path(meta.chain_id))
        tmp = os.path.join(self.staged.layerdb, "sha256", temp_name("layer"))
        os.mkdir(tmp, 0o700)
        for name in os.listdir(src):
            if name != "cache-id" and os.path.isfile(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        write_file(os.path.join(tmp, "cache-id"), gid.encode("ascii"))
        fsync_dir(tmp)
        rename_durable(tmp, self.staged.layer_dir(meta.chain_id))

    # ------------------------------------------------------------ containers
    def _containers(self) -> int:
        carried = 0
        for mount in self.old_meta.mounts():
            self._container(mount)
            carried += 1
            crash_point("docker-migrate.container")
        # what the containers deleted goes on the worker while the next one is carried;
        # a staged container whose trash is not settled is carried again by any next
        # run (staged containers never outlive the run that made them)
        self._trash.settle()
        return carried

    def _container(self, mount: MountMeta) -> None:
        top_old = self.old_meta.layer(hex_of(mount.parent)).cache_id if mount.parent else None
        top_new = self._new_cache(mount.parent)
        gid = new_id()
        init = gid + "-init" if mount.init_id else None
        mark = self._announce(gid)
        marks = [mark] + ([self._announce(init)] if init else [])
        seen: Dict[bytes, int] = {}
        opaque = set()
        below_old, below_new = top_old, top_new
        for old_gid, new_gid in ((mount.init_id, init), (mount.mount_id, gid)):
            if old_gid is None or new_gid is None:
                continue
            applier = self._carry(mount, old_gid, below_old, new_gid, below_new)
            seen.update(applier.seen)
            opaque |= applier.opaque
            below_old, below_new = old_gid, new_gid
        self._verify(mount, mount.mount_id, gid, seen, opaque)
        syncfs(self.new.home)
        crash_point("docker-migrate.container-carried")
        self._stage_mount(mount, gid, init)
        for mark in marks:
            os.unlink(mark)

    def _carry(self, mount: MountMeta, old_gid: str, old_parent: Optional[str],
               new_gid: str, new_parent: Optional[str]) -> Applier:
        if new_parent:
            self._trash.settle(self.new.files(new_parent))  # before it is snapshotted
        self.new.create(new_gid, new_parent)
        if self.new.whiteouts == "delete":
            self._trash.move(self.new.files(new_gid), self.old.whited_out(old_gid),
                             new_gid[:16])
        what = "container %s (%s layer)" % (mount.container_id[:12],
                                            "init" if old_gid.endswith("-init") else "rw")
        with self._shadow(new_gid) as shadow:
            changes = self.old.changes(old_gid, old_parent, shadow).tar()
            applier = Applier(self.new.files(new_gid), self.new.whiteouts, None, what,
                              shadow=shadow)
            applier.apply(ChunkReader(chunk_reader(iter(changes)), what=what))
        return applier

    @contextlib.contextmanager
    def _shadow(self, gid: str) -> Iterator[Shadow]:
        """Reflink clones of the old files, read for the stream and taken by the new
        layer (no data written twice); on a filesystem that cannot clone (or across
        filesystems) it turns itself off at the first file and data is copied."""
        shadow = Shadow()
        shadow.open(self.new.shadow_dir(gid, self.work))
        try:
            yield shadow
        finally:
            shadow.close()

    def _verify(self, mount: MountMeta, old_gid: str, new_gid: str,
                seen: Dict[bytes, int], opaque: set) -> None:
        views = [os.path.join(self.work, temp_name("verify-%s" % n)) for n in ("old", "new")]
        done: List[Tuple[Graph, str]] = []
        who = _Named(ContainerConfig(self.data_root, mount.container_id).name)
        try:
            for grf, gid, view in zip((self.old, self.new), (old_gid, new_gid), views):
                os.mkdir(view, 0o700)
                grf.mount(gid, view)
                done.append((grf, view))
            for rel in sorted(seen):
                strata_migrate._same(who, views, rel, below=rel in opaque)
        finally:
            for grf, view in reversed(done):
                grf.unmount(view)
            for view in views:
                if os.path.isdir(view):
                    os.rmdir(view)

    def _stage_mount(self, mount: MountMeta, gid: str, init: Optional[str]) -> None:
        tmp = os.path.join(self.staged.layerdb, "mounts", temp_name("mount"))
        makedirs(tmp)
        write_file(os.path.join(tmp, "mount-id"), gid.encode("ascii"))
        if init:
            write_file(os.path.join(tmp, "init-id"), init.encode("ascii"))
        if mount.parent:
            write_file(os.path.join(tmp, "parent"), mount.parent.encode("ascii"))
        rename_durable(tmp, self.staged.mount_dir(mount.container_id))

    # ------------------------------------------------------------ switch
    @staticmethod
    def journal_of(data_root: str) -> Optional[Dict[str, Any]]:
        try:
            data = read_json(os.path.join(data_root, WORK, "journal.json"))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def install(self) -> None:
        """Step 3a: ``image/<new>`` in place (idempotent)."""
        self._set_state("switching")
        crash_point("docker-migrate.switching")
        self._install_metadata()

    def flip_containers(self, keep_previous: bool) -> None:
        """Step 3b, after daemon.json names the new driver (idempotent)."""
        for cid in container_ids(self.data_root):
            _set_driver(ContainerConfig(self.data_root, cid), self.source, self.target)
            crash_point("docker-migrate.container-driver")
        previous = kept_driver(self.data_root)
        if previous and previous not in (self.source, self.target):
            remove_driver_tree(self.data_root, previous)  # one kept tree at a time
        _write_kept(self.data_root, self.source if keep_previous else None)

    def _install_metadata(self) -> None:
        final = DriverMeta(self.data_root, self.target)
        if os.path.isdir(self.staged.root):
            for name in _METADATA_COPIED:
                src = os.path.join(self.old_meta.root, name)
                dst = os.path.join(self.staged.root, name)
                if os.path.lexists(dst):
                    remove_tree(dst)
                if os.path.isdir(src):
                    shutil.copytree(src, dst, symlinks=True)
                elif os.path.exists(src):
                    shutil.copy2(src, dst)
            makedirs(os.path.join(self.staged.layerdb, "tmp"))
            self._drop_unreferenced()
            syncfs(self.staged.root)
            if final.exists():
                remove_tree(final.root)
            makedirs(os.path.dirname(final.root))
            rename_durable(self.staged.root, final.root)
        crash_point("docker-migrate.metadata")

    def _drop_unreferenced(self) -> None:
        """Staged layers whose image went away between an interrupted run and this one."""
        wanted = set(self.old_meta.chain_hexes())
        for chain_hex in self.staged.chain_hexes():
            if chain_hex not in wanted:
                self.new.remove(self.staged.layer(chain_hex).cache_id)
                remove_tree(os.path.join(self.staged.layerdb, "sha256", chain_hex))

    def finish(self, keep_previous: bool) -> bool:
        """Step 4 after the caller's daemon.json write; True when the old tree went."""
        removed = False
        if not keep_previous:
            removed = remove_driver_tree(self.data_root, self.source)
        remove_tree(self.work)
        fsync_dir(self.data_root)
        return removed

    def abandon(self) -> None:
        """Undo an interrupted conversion that is not the one asked for now."""
        self._drop_pending_if_any()
        for mount in self.staged.mounts():
            for gid in (mount.mount_id, mount.init_id):
                if gid:
                    self.new.remove(gid)
        for chain_hex in self.staged.chain_hexes():
            self.new.remove(self.staged.layer(chain_hex).cache_id)
        remove_tree(self.work)

    def _drop_pending_if_any(self) -> None:
        if os.path.isdir(os.path.join(self.work, "pending")):
            self._drop_pending()


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def _full_size(meta: LayerMeta, by_chain: Dict[str, LayerMeta]) -> int:
    total, cur = 0, meta
    while cur is not None:
        total += cur.size
        cur = by_chain.get(cur.parent) if cur.parent else None
    return total


def _set_driver(config: ContainerConfig, source: str, target: str) -> None:
    data = config.load()
    if not data or data.get("Driver") == target:
        return
    if data.get("Driver") not in (source, None, ""):
        return  # a container of a third driver: dockerd ignores it on both, so do we
    raw = open(config.path, "rb").read()
    old = b'"Driver":"%s"' % source.encode()
    if raw.count(old) == 1:  # keep every other byte of dockerd's file as it wrote it
        new_raw = raw.replace(old, b'"Driver":"%s"' % target.encode())
    else:
        import json
        data["Driver"] = target
        new_raw = json.dumps(data, separators=(",", ":")).encode("utf-8")
    mode = os.stat(config.path).st_mode & 0o7777
    write_file(config.path, new_raw, mode)


def _kept_path(data_root: str) -> str:
    return os.path.join(data_root, "strata-kept.json")


def _read_kept(data_root: str) -> Dict[str, Any]:
    try:
        data = read_json(_kept_path(data_root))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_kept(data_root: str, driver: Optional[str]) -> None:
    if driver:
        write_json(_kept_path(data_root), {"driver": driver})
    elif os.path.exists(_kept_path(data_root)):
        os.unlink(_kept_path(data_root))
        fsync_dir(data_root)


def kept_driver(data_root: str) -> Optional[str]:
    driver = _read_kept(data_root).get("driver")
    return str(driver) if driver else None


def remove_driver_tree(data_root: str, driver: str) -> bool:
    """Remove ``image/<driver>`` and the driver's files (every layer, subvolumes too)."""
    meta = DriverMeta(data_root, driver)
    grf = graph(driver, data_root)
    if not meta.exists() and not os.path.isdir(grf.home):
        return False
    for gid in grf.ids():
        if gid != "l" and not gid.startswith("."):
            grf.remove(gid)
        crash_point("docker-migrate.previous-removed")
    remove_tree(meta.root)
    remove_tree(grf.home)
    if kept_driver(data_root) == driver:
        _write_kept(data_root, None)
    fsync_dir(data_root)
    return True


__all__ = ["Conversion", "remove_driver_tree", "kept_driver", "is_hex64"]
