# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Switching the driver of a store that holds content, without losing any of it.

Layer records are driver independent; only the files move.  Step by step:

1. refuse if a container is mounted (its writable layer would change under us), or if
   any image or container record cannot be read (references fail closed: the old
   driver's home, with that container's data, is removed at the end);
2. every layer, parents first, that the new driver does not hold yet is re-emitted
   from its header record and the old driver's files, and streamed through the
   applier into a staging directory of the new driver; the stream must hash to the
   layer's diff_id, then the staging directory is renamed to its final name.  A layer
   the new driver already holds (an earlier, interrupted run, or data kept by
   ``keep_previous``) is reused: final names only ever hold verified layers;
3. every container's writable layer is carried over: its changes are read as a layer
   tar from the old driver (native or naive diff), applied onto a fresh container of
   the new driver, and read back from the new driver: both change sets must match
   entry for entry (type, mode, owner, size, content digest, link target);
4. ``store.json`` is rewritten to name the new driver (atomic: the commit point);
5. unless ``keep_previous``, the old driver's home is dropped, only now that the
   switch is durable: renamed into ``tmp/`` as ``.tmp-removed-previous-<driver>-*`` (the
   store's idiom for a removal: one rename is the commit point, and the next open for
   writing sweeps what is left), then removed by a detached process that holds the
   store's exclusive lock while it unlinks, so the module returns without waiting for
   every file of the old copies to go.  A crash before the rename is finished by the
   next storage_driver run; a remover killed part-way leaves the rest in ``tmp/`` for
   the next open for writing.

Killed at any point before step 4, the store still works under the old driver and a
re-run resumes (verified layers stay; staging debris is swept on open; containers are
carried again).
"""
from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils import _files as files
from ansible_collections.strata.layers.plugins.module_utils._apply import Applier
from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    fsync_dir, remove_tree, rename_durable, syncfs)
from ansible_collections.strata.layers.plugins.module_utils._changes import chunk_reader
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Busy, Corrupt, DigestMismatch)
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._lock import StoreLock
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._tarformat import ChunkReader
from ansible_collections.strata.layers.plugins.module_utils import _tarsplit as tarsplit
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount_at
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath
from ansible_collections.strata.layers.plugins.module_utils._docker.tarsplit import Clones
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Driver


def preview(store: Store, target: str) -> Dict[str, Any]:
    """What a migration to ``target`` would move (check mode)."""
    new = store.driver_named(target)
    todo = [r for r in store.layers.all() if not new.has_layer(r.chain_id)]
    return {"layers": len(todo), "containers": len(store.container_ids()),
            "bytes": sum(r.tar_size for r in todo),
            "reused_layers": len(list(store.layers.all())) - len(todo)}


def migrate(store: Store, target: str, keep_previous: Optional[bool]) -> Dict[str, Any]:
    started = time.monotonic()
    old, new = store.driver, store.driver_named(target)
    _refuse_unreadable(store)
    _refuse_mounted(store)
    new.init()
    moved, reused, nbytes = _layers(store, old, new)
    carried = _containers(store, old, new)
    syncfs(new.home)
    crash_point("migrate.materialized")
    store.initialize(target, previous=old.name, keep_previous=bool(keep_previous))
    crash_point("migrate.switched")
    finish_previous(store, keep_previous)
    return {"layers": moved, "reused_layers": reused, "containers": carried, "bytes": nbytes,
            "seconds": round(time.monotonic() - started, 3)}


def previous_to_drop(store: Store, keep: Optional[bool]) -> Optional[str]:
    """The previous driver whose data should go now, if any.

    ``keep`` is this run's ``keep_previous``: True keeps it, False drops it, None (not
    said) leaves what the migration decided: data it kept stays, data it did not keep
    (a crash came between the switch and the removal) is removed.  Check mode asks
    this too, so it reports what the real run does."""
    state = store.state()
    previous = state.get("previous_driver")
    if not previous or previous == state.get("driver") or keep:
        return None
    if keep is None and state.get("keep_previous"):
        return None
    if not os.path.isdir(store.driver_named(str(previous)).home):
        return None
    return str(previous)


def finish_previous(store: Store, keep: Optional[bool] = None) -> bool:
    """Drop the previous driver's data when ``previous_to_drop`` says so: parked in
    ``tmp/`` at once (the commit point), its files removed in the background."""
    previous = previous_to_drop(store, keep)
    if previous is None:
        return False
    state = store.state()
    parked = park_home(store, previous)
    if parked is None:  # the home cannot be moved (a mount point of its own): removed here
        remove_home(store, previous)
    if state.get("keep_previous"):
        store.initialize(str(state["driver"]), previous=str(previous), keep_previous=False)
    if parked is not None:
        remove_in_background(store, parked, previous)
    return True


def park_home(store: Store, name: str) -> Optional[str]:
    """Rename a driver's home into ``tmp/``, where nothing reads it and the next open for
    writing sweeps it; return the directory that holds it (its data root, so that the
    driver's own removal still applies: subvolumes deleted, not emptied).  None when the
    home cannot be renamed (a filesystem mounted there: EBUSY, EXDEV)."""
    parked = store.staging("removed-previous-%s" % name)
    try:
        rename_durable(store.driver_named(name).home, os.path.join(parked, name))
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        os.rmdir(parked)
        return None
    crash_point("migrate.previous-parked")
    return parked


def remove_parked(store: Store, parked: str, name: str) -> None:
    """Remove a home parked by ``park_home`` under the store's exclusive lock (a sweep of
    ``tmp/`` by another run never overlaps it); nothing when a sweep came first."""
    with StoreLock(os.path.join(store.root, "lock"), True, 24 * 3600.0,
                   "removing the previous driver's data"):
        _remove_parked(store, parked, name)


def _remove_parked(store: Store, parked: str, name: str) -> None:
    if not os.path.isdir(parked):
        return
    driver = type(store.driver_named(name))(parked)
    if os.path.isdir(driver.home):
        for chain in driver.layer_hexes():
            driver.remove_path(driver.layer_dir(ChainID("sha256:" + chain)))
        for cid in driver.container_ids():
            driver.remove_container(cid)
    remove_tree(parked)
    fsync_dir(store.tmp)


def remove_in_background(store: Store, parked: str, name: str) -> None:
    """``_remove_parked`` in a detached process (its own session, no standard streams, no
    descriptor of ours but the lock): Ansible's connection ends when the module does, the
    process goes on.  The exclusive lock is handed over, not released: the process keeps a
    copy of this run's locked descriptor (one open file description, one flock), so the
    lock is held from this run to the end of the removal with no gap, and the next run on
    the store waits for the removal as it would for this run.  Where fork is refused, or
    the store is not held (a caller outside ``Store.write``), the removal happens here."""
    lock = store.held_lock
    fd = lock.descriptor() if lock is not None else None
    if lock is None or fd is None:
        remove_parked(store, parked, name)
        return
    try:
        pid = os.fork()
    except OSError:
        _remove_parked(store, parked, name)
        return
    if pid:
        os.waitpid(pid, 0)
        lock.hand_over()
        return
    status = 0
    try:  # the intermediate child: only os-level calls, then os._exit
        os.setsid()
        if os.fork() == 0:
            _detach(fd)
            note = "pid %d: removing the previous driver's data\n" % os.getpid()
            os.ftruncate(LOCK_FD, 0)
            os.pwrite(LOCK_FD, note.encode(), 0)
            _remove_parked(store, parked, name)
    except BaseException:  # pylint: disable=broad-except
        status = 1  # nothing to report to: what is left is swept on the next open
    finally:
        os._exit(status)


LOCK_FD = 3   # where the detached remover keeps its copy of the locked descriptor


def _detach(lock_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if lock_fd != LOCK_FD:
        os.dup2(lock_fd, LOCK_FD)   # the same open file description: the flock goes with it
    os.closerange(LOCK_FD + 1, _max_fd())
    os.chdir("/")


def _max_fd() -> int:
    try:
        return max(int(n) for n in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return 4096


def remove_home(store: Store, name: str) -> bool:
    """Remove a driver's home with all its layers and containers (subvolumes too)."""
    driver = store.driver_named(name)
    if not os.path.isdir(driver.home):
        return False
    for chain in driver.layer_hexes():
        driver.remove_path(driver.layer_dir(ChainID("sha256:" + chain)))
        crash_point("migrate.previous-removed")
    for cid in driver.container_ids():
        driver.remove_container(cid)
    remove_tree(driver.home)
    fsync_dir(store.root)
    return True


def _refuse_unreadable(store: Store) -> None:
    """References fail closed: a container the switch cannot carry (its record or its
    image cannot be read) would be lost with the old driver's home, and an unreadable
    image may be a container's, so nothing is switched while there is one."""
    problems = store.references().unreadable
    if problems:
        raise Corrupt("cannot switch drivers without losing data: %s; nothing was switched. "
                      "Run strata.layers.store_check with repair: true, re-import missing "
                      "images or remove those containers, then switch again"
                      % "; ".join(problems[:5]), unreadable=problems)


def _refuse_mounted(store: Store) -> None:
    containers.refuse_running(store, containers.ContainerDB(store.root).all(),
                              "switching drivers")
    mounted = [r.name for r in containers.ContainerDB(store.root).all()
               if r.mount_point and mount_at(r.mount_point) is not None]
    if mounted:
        raise Busy("containers %s are mounted; unmount them (container_layer state: unmounted) "
                   "before switching drivers" % ", ".join(sorted(mounted)), containers=mounted)


def _layers(store: Store, old: Driver, new: Driver) -> Tuple[int, int, int]:
    moved = reused = nbytes = 0
    for record in sorted(store.layers.all(), key=lambda r: r.depth):
        if new.has_layer(record.chain_id):
            reused += 1
            continue
        _layer(store, old, new, record)
        moved += 1
        nbytes += record.tar_size
        crash_point("migrate.layer")
    return moved, reused, nbytes


def _layer(store: Store, old: Driver, new: Driver, record: LayerRecord) -> None:
    """Re-emit one layer from the old driver into the new one, verified."""
    key = new.staging_key()
    staged = new.stage_layer(key, record.parent, record.depth)
    try:
        clones = Clones()
        chunks = _cloned_chunks(store.layers.split_path(record.chain_id),
                                old.layer_files(record.chain_id), clones)
        try:
            reader = ChunkReader(chunk_reader(chunks), what="layer %s" % record.diff_id)
            result = Applier(staged.path, new.whiteouts, None,
                             "layer %s (migrating to %s)" % (record.diff_id, new.name),
                             shadow=clones).apply(reader)
        finally:
            chunks.close()
        if result.diff_id != record.diff_id:
            raise DigestMismatch("layer %s re-emitted from %s hashes to %s: its files there are "
                                 "damaged; nothing was switched (run strata.layers.store_check)"
                                 % (record.diff_id, old.name, result.diff_id))
        new.commit_layer(staged, record.chain_id)
    except BaseException:
        new.remove_path(staged.top)
        raise


def _cloned_chunks(split_path: str, files: str, clones: Clones,
                   chunk: int = 1 << 20) -> Iterator[bytes]:
    """The layer's tar re-emitted from the old driver's files (``_tarsplit.chunks``),
    through ``clones``: before the segment holding a file's header is given out, the old
    file is opened and offered, so the applier makes the new file a reflink clone of it
    (no data written).  Where the filesystem cannot clone (ext4; old and new on
    different filesystems) ``clones`` turns off at the first file and the data is
    written, as before.

    The member's data is read from the *old* file either way (its pages are cached; the
    clone's are not: reading the clone back cost 1-1.7 s of cold reads per 243 MB
    here).  What guarantees the new file holds the bytes hashed against the diff_id:
    ``FICLONE`` shares the old file's extents as they are at that instant (dirty pages
    written back first), the clone is private to the staging directory, and the read
    comes after the clone, from the same old file, checked for its recorded size.  The
    store writes no layer file (this run holds the exclusive lock; no container is
    mounted), so the old file can only differ from the clone if something outside the
    store changed it after the clone and put back the very same bytes before the read;
    any change left in place hashes differently and the migration stops (DigestMismatch,
    nothing switched)."""
    try:
        with Beneath(files) as tree:
            records = tarsplit.records(split_path)
            ahead = next(records, None)
            while ahead is not None:
                kind, value = ahead
                ahead = next(records, None)
                if kind == "S":
                    if ahead is not None and ahead[0] == "F" and clones.enabled:
                        name, size = ahead[1]  # type: ignore[misc]
                        clones.offer(name, tarsplit.open_recorded(tree, name, size))
                    yield value  # type: ignore[misc]
                    continue
                name, size = value  # type: ignore[misc]
                fd = clones.made(name)
                if fd is None:  # not cloned: the applier writes what the old file holds
                    clones.drop(name)
                else:  # cloned: the applier only reads (and hashes) the stream
                    os.close(fd)
                yield from tarsplit._file_chunks(tree, name, size, chunk)
    finally:
        clones.close()


def _containers(store: Store, old: Driver, new: Driver) -> int:
    carried = 0
    for record in containers.ContainerDB(store.root).all():
        image = store.images.get(record.image_id)
        chain = [ChainID(c) for c in image.chain]
        if new.container_exists(record.id) or new.has_init(record.id):
            new.remove_container(record.id)
        # the init layer is made again from its entries, not carried as a change
        new.create_container(record.id, chain, containers.init_filler(record.init))
        changes = containers.changes_with(old, record, chain, exact_times=True).tar()
        applier = Applier(new.container_root(record.id), new.whiteouts, None,
                          "the writable layer of container %s" % record.name)
        applier.apply(ChunkReader(chunk_reader(iter(changes))))
        _verify_container(store, old, new, record, chain, applier)
        carried += 1
        crash_point("migrate.container")
    return carried


def _verify_container(store: Store, old: Driver, new: Driver, record: Any,
                      chain: List[ChainID], applier: Applier) -> None:
    """Mount the container under both drivers; every path its changes touch (and all
    below an opaque directory) must look the same: type, mode, owner, size, mtime,
    content, link target, device, xattrs."""
    views = [store.staging("verify-%s" % d.name) for d in (old, new)]
    mounted: List[Tuple[Driver, str]] = []
    try:
        for driver, view in zip((old, new), views):
            driver.mount(record.id, chain, view)
            mounted.append((driver, view))
        for rel in sorted(applier.seen):
            _same(record, views, rel, below=rel in applier.opaque)
    finally:
        for driver, view in reversed(mounted):
            driver.unmount(view)
        for view in views:
            remove_tree(view)


def _same(record: Any, views: List[str], rel: bytes, below: bool) -> None:
    """``rel`` looks the same in both views and, ``below`` an opaque directory, so does
    everything under it (pre-order, names sorted: the first difference is reported)."""
    seen = _same_entry(record, views, rel)
    if not below or not _is_dir(seen):
        return
    # a stack of listings, not recursion: the applier accepts paths up to PATH_MAX,
    # directories nested ~2000 deep, deeper than Python's recursion limit
    stack = [(rel, iter(_names(views, rel)))]
    while stack:
        parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        child = parent + b"/" + name
        if _is_dir(_same_entry(record, views, child)):
            stack.append((child, iter(_names(views, child))))


def _same_entry(record: Any, views: List[str], rel: bytes) -> Optional[Tuple[Any, ...]]:
    """What both views show of ``rel``; they must agree."""
    seen = [describe(os.path.join(os.fsencode(v), rel)) for v in views]
    if seen[0] != seen[1]:
        raise Corrupt("container %s: %s differs after carrying it over (%s before, %s after); "
                      "nothing was switched" % (record.name, rel.decode("utf-8", "replace"),
                                                seen[0], seen[1]))
    return seen[0]


def _is_dir(seen: Optional[Tuple[Any, ...]]) -> bool:
    return seen is not None and seen[0] == stat.S_IFDIR


def _names(views: List[str], rel: bytes) -> List[bytes]:
    """The names in directory ``rel`` of either view."""
    names = set(os.listdir(os.path.join(os.fsencode(views[0]), rel)))
    names |= set(os.listdir(os.path.join(os.fsencode(views[1]), rel)))
    return sorted(names)


_INTERNAL_XATTRS = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.", "security.selinux")


def describe(path: bytes) -> Optional[Tuple[Any, ...]]:
    """What a user of the container sees of one path (None: it does not exist)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = stat.S_IFMT(st.st_mode)
    entry: List[Any] = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
    if kind != stat.S_IFDIR:
        entry += [st.st_size, st.st_mtime_ns, st.st_rdev]
    if kind == stat.S_IFREG:
        entry.append(files.sha256(path))
    elif kind == stat.S_IFLNK:
        entry.append(os.readlink(path))
    names = [] if kind == stat.S_IFLNK else os.listxattr(path, follow_symlinks=False)
    entry.append(tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names
                              if not n.startswith(_INTERNAL_XATTRS))))
    return tuple(entry)
