# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container records: thin writable layers on images (``container_layer``'s entry point
is ``_ops/container_layer.py``; the ``container`` module's ``_ops/container.py``).

A container's record is ``ContainerRecord`` (``container.json``); the writable layer
itself is the driver's (an overlay upper + work dir, or a full copy).  Whether a
container is mounted is read from the kernel (``/proc/self/mountinfo``), never trusted
from the record, so a mount lost at reboot is noticed and re-made.

On-disk layout: docs/design.md, "Layout of a store".  Creating and removing, step by
step, and what a crash after each leaves: docs/design.md, "Crash-safety rules".
"""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, fsync_dir, makedirs, read_json, remove_tree, rename_durable, temp_name,
    write_json)
from ansible_collections.strata.layers.plugins.module_utils._changes import (
    BaseTree, InitBase, TreeDiff, UpperDiff, chunk_reader, touched_dirs)
from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    AlreadyExists, Busy, Corrupt, InvalidInput, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import (
    MS_BIND, MS_NODEV, MS_NOSUID, MS_REMOUNT, allocated_bytes, mount_at)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount as fs_mount
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._initlayer import populate
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord, now_iso
from ansible_collections.strata.layers.plugins.module_utils._runtime import read_state
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._trust import inside, overlaps
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Driver, InitFiller

RECORD_FILE = "container.json"
_NAME_RE = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}\Z")


@dataclass
class ContainerRecord:
    id: str
    name: str
    image_id: str
    created: str
    mount_point: Optional[str] = None
    kind: str = "container"
    # the entries of its init layer (None: a container made without one, before init
    # layers existed or by container_layer); what the container runs (the container
    # module's run config, fixed at creation as with docker create)
    init: Optional[List[str]] = None
    run: Optional[Dict[str, Any]] = None
    # what its init layer allocates (full-copy drivers), and the init root's inode and
    # ctime when that was counted: ``store_info``'s ``on_disk`` takes the figure while
    # they still match (the init layer is never written after it is made)
    init_usage: Optional[Dict[str, int]] = None

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


class ContainerDB:
    def __init__(self, data_root: str) -> None:
        self.data_root = data_root
        self.dir = os.path.join(data_root, "containers")

    def path(self, cid: str) -> str:
        if not re.match(r"\A[0-9a-f]{64}\Z", cid):
            raise InvalidInput("container id %r is not 64 hex digits" % cid)
        return os.path.join(self.dir, cid)

    def ids(self) -> List[str]:
        try:
            return sorted(n for n in os.listdir(self.dir) if not n.startswith(TEMP_PREFIX))
        except FileNotFoundError:
            return []

    def get(self, cid: str) -> ContainerRecord:
        return read_record(self.path(cid), cid)

    def all(self) -> List[ContainerRecord]:
        out = []
        for cid in self.ids():
            try:
                out.append(self.get(cid))
            except NotFound:
                continue
        return out

    def by_name(self, name: str) -> Optional[ContainerRecord]:
        for record in self.all():
            if record.name == name:
                return record
        return None

    def save(self, record: ContainerRecord) -> None:
        write_json(os.path.join(self.path(record.id), RECORD_FILE), record.to_json())


def read_record(path: str, cid: str) -> ContainerRecord:
    """The record in ``path`` (``containers/<cid>``), the one reader of ``container.json``
    (the store's references, store_check and the modules all read it here).  NotFound
    when there is none; Corrupt when it cannot be read or does not name container
    ``cid``, its name and its image.  Both carry the ``problem`` in a few words."""
    file = os.path.join(path, RECORD_FILE)
    try:
        data = read_json(file)
    except FileNotFoundError as exc:
        raise NotFound("container %s is not in the store" % cid,
                       problem="%s cannot be read (%s)" % (RECORD_FILE, exc)) from exc
    except (OSError, ValueError) as exc:
        raise _damaged(file, "%s cannot be read (%s)" % (RECORD_FILE, exc)) from exc
    if not isinstance(data, dict) or data.get("id") != cid or \
            not isinstance(data.get("name"), str) or not isinstance(data.get("image_id"), str):
        raise _damaged(file, "%s does not name this container, its name and its image"
                       % RECORD_FILE)
    try:
        return ContainerRecord(**{k: data[k] for k in data
                                  if k in ContainerRecord.__dataclass_fields__})
    except TypeError as exc:
        raise _damaged(file, "%s lacks a field (%s)" % (RECORD_FILE, exc)) from exc


def _damaged(file: str, problem: str) -> Corrupt:
    return Corrupt("container record %s is damaged (%s): run strata.layers.store_check"
                   % (file, problem), problem=problem)


def image_chain(store: Store, image: ImageRecord) -> List[ChainID]:
    return [ChainID(c) for c in image.chain]


def default_mount_point(store: Store, cid: str) -> str:
    return os.path.join(store.root, "mounts", cid)


def changes(store: Store, record: ContainerRecord, chain: Sequence[ChainID],
            bases: Optional[Dict[str, BaseTree]] = None) -> Union[UpperDiff, TreeDiff]:
    """``bases``: the diff bases already read in this call, by path (shared, read once)."""
    driver = store.driver
    if bases is None or driver.whiteouts == "device":
        return changes_with(driver, record, chain)
    base = driver.diff_base(list(chain), record.id)
    tree: Optional[BaseTree] = None
    touched = touched_dirs(record.init) if record.init is not None else None
    if base is not None and chain and touched is not None and driver.has_init(record.id):
        # its own init layer: read where the init entries are, the rest from the
        # image's top layer that the containers on the image share
        top = driver.layer_dir(chain[-1])
        image = bases.setdefault(top, BaseTree(top, keep=True))
        tree = bases.setdefault(base, InitBase(base, image, touched))
    elif base is not None:
        tree = bases.setdefault(base, BaseTree(base, keep=True))
    return TreeDiff(base, driver.container_root(record.id), base_tree=tree)


def changes_with(driver: Driver, record: ContainerRecord, chain: Sequence[ChainID],
                 exact_times: bool = False) -> Union[UpperDiff, TreeDiff]:
    """The container's changes as ``driver`` stores them (native or naive diff)."""
    return changes_in(driver, driver.container_root(record.id), chain, exact_times,
                      cid=record.id)


def changes_in(driver: Driver, root: str, chain: Sequence[ChainID],
               exact_times: bool = False, shadow: Optional[Shadow] = None,
               cid: Optional[str] = None) -> Union[UpperDiff, TreeDiff]:
    """The changes held in ``root``, the root of container ``cid`` on ``chain``: against
    its init layer when it has one, so the runtime's mount points are never a change."""
    if driver.whiteouts == "device":
        return UpperDiff(root, exact_times, shadow, markers=driver.name == "fuse-overlayfs")
    return TreeDiff(driver.diff_base(list(chain), cid), root, exact_times, shadow)


def container_facts(store: Store, layers: Optional[Dict[ChainID, LayerRecord]] = None,
                    sizes: bool = True, sizing: "Optional[Sizing]" = None
                    ) -> List[Dict[str, Any]]:
    """One row per container, as ``docker ps -s`` shows it (plus the chain, internal);
    ``sizes=False``: as ``docker ps`` shows it, ``size`` and ``virtual_size`` null (a
    container's size is a walk of its changes on drivers without an upper directory)."""
    layers = store.layers.by_chain() if layers is None else layers
    sizing = sizing if sizing is not None else Sizing(store)
    return [container_row(store, record, layers, sizes, sizing)
            for record in ContainerDB(store.root).all()]


class Sizing:
    """The container sizes of one ``store_info`` call.

    ``bases``: the diff bases read so far (containers on one image compare against it
    once); ``check``: the driver's test for a container still exactly its diff base,
    size 0 without a walk (btrfs); ``same``: the roots it found so, with their base,
    which ``on_disk`` counts as allocating what the base does instead of walking them;
    ``walked``: the roots walked for their size, with what the walk saw them allocate
    (and their inodes with several links), which ``on_disk`` takes as they are, as it
    takes what a base read whole allocates (``BaseTree.allocated``)."""

    def __init__(self, store: Store, shared: bool = True) -> None:
        self.bases: Optional[Dict[str, BaseTree]] = {} if shared else None
        self.check = (store.driver.snapshot_check() if shared and store.driver_name
                      else None)
        self.same: Dict[str, str] = {}
        self.walked: Dict[str, Tuple[int, Set[Tuple[int, int]]]] = {}
        self.inits: Dict[str, int] = {}

    def size(self, store: Store, record: ContainerRecord, chain: Sequence[ChainID]) -> int:
        driver = store.driver
        if self.check is not None:
            root, base = driver.container_root(record.id), driver.diff_base(list(chain), record.id)
            if base is not None and self.check.unchanged(root, base):
                self.same[root] = base
                return 0
        diff = changes(store, record, chain, self.bases)
        size = diff.size()
        if isinstance(diff, TreeDiff) and self.bases is not None:
            self.walked[os.path.realpath(diff.root)] = (diff.allocated or 0, diff.linked)
            usage = recorded_init_usage(driver, record)
            if usage is not None:
                self.inits[os.path.realpath(driver.init_dir(record.id))] = usage
        return size

    def on_disk(self, store: Store) -> int:
        """``allocated_bytes`` of the store, without walking a container twice: one
        walked for its size counts what that walk saw it allocate, an unchanged one
        what its base does."""
        below: Dict[str, int] = {}
        known: Dict[str, Tuple[int, Set[Tuple[int, int]]]] = {}
        linked: Set[Tuple[int, int]] = set()
        for root, (allocated, inodes) in self.walked.items():
            if not inodes & linked:  # else an inode linked into two copies: walk this one
                known[root] = (allocated, inodes)
                linked |= inodes
        for init, allocated in self.inits.items():  # as counted when it was made
            known[init] = (allocated, set())
        for base, tree in (self.bases or {}).items():
            read = tree.allocated()  # a base the size walks read whole (an init layer)
            if read is not None and not read[1] & linked:
                known[os.path.realpath(base)] = read
                linked |= read[1]
        for root, base in self.same.items():
            if base not in below:
                below[base] = allocated_bytes(base)
                # the base is walked once: the store's walk takes this figure too
                known[os.path.realpath(base)] = (below[base], set())
            # a snapshot's inodes have its own st_dev: none is linked from elsewhere
            known[os.path.realpath(root)] = (below[base], set())
        return allocated_bytes(store.root, known)


def init_usage(driver: Driver, cid: str) -> Optional[Dict[str, int]]:
    """What container ``cid``'s init layer allocates, with its root's inode and ctime:
    on full-copy drivers that walk every container for ``store_info`` (vfs), one walk of
    the init layer when it is made instead of one per ``store_info``; None elsewhere
    (overlay: the init layer is a few entries; btrfs: ``snapshot_check`` measures an
    unchanged container's base once per call, and a creation stays a snapshot)."""
    if driver.whiteouts != "delete" or driver.snapshot_check() is not None \
            or not driver.has_init(cid):
        return None
    st = os.lstat(driver.init_dir(cid))
    return {"bytes": allocated_bytes(driver.init_dir(cid)), "inode": st.st_ino,
            "ctime_ns": st.st_ctime_ns}


def recorded_init_usage(driver: Driver, record: ContainerRecord) -> Optional[int]:
    """The init layer's allocated bytes as recorded, while its root is still the one
    they were counted on (a migration or a repair makes it again: then None)."""
    usage = record.init_usage
    if not isinstance(usage, dict) or driver.whiteouts != "delete" \
            or not driver.has_init(record.id):
        return None
    try:
        st = os.lstat(driver.init_dir(record.id))
    except OSError:
        return None
    counted = usage.get("bytes")
    if (st.st_ino, st.st_ctime_ns) != (usage.get("inode"), usage.get("ctime_ns")) \
            or not isinstance(counted, int) or isinstance(counted, bool) or counted < 0:
        return None  # made again since, or a record edited by hand: walk it
    return counted


def container_row(store: Store, record: ContainerRecord,
                  layers: Optional[Dict[ChainID, LayerRecord]] = None,
                  sizes: bool = True, sizing: Optional[Sizing] = None
                  ) -> Dict[str, Any]:
    try:
        chain = image_chain(store, store.images.get(record.image_id))
    except NotFound:
        chain = []
    if layers is None:
        layers = {c: store.layers.get(c) for c in chain if store.layers.exists(c)}
    image_size = sum(layers[c].size for c in chain if c in layers)
    size: Optional[int] = None
    if sizes:
        sizing = sizing if sizing is not None else Sizing(store, shared=False)
        size = sizing.size(store, record, chain) if store.driver_name else 0
    mounted = is_mounted(record)
    return {"id": record.id, "name": record.name, "image_id": record.image_id,
            "status": status(store, record),
            "size": size, "virtual_size": None if size is None else size + image_size,
            "mounted": mounted,
            "mount_point": record.mount_point if mounted else None,
            "created": record.created, "chain": chain}


def status(store: Store, record: ContainerRecord) -> str:
    """``created``, ``running`` or ``exited`` (the container module's run state)."""
    return read_state(ContainerDB(store.root).path(record.id))["status"]


def is_mounted(record: ContainerRecord) -> bool:
    """Whether the container's root filesystem is mounted where it was last asked to be."""
    return record.mount_point is not None and mount_at(record.mount_point) is not None


def refuse_running(store: Store, records: Sequence[ContainerRecord], doing: str) -> None:
    running = sorted(r.name for r in records if status(store, r) == "running")
    if running:
        raise Busy("container%s %s %s running; stop %s first (strata.layers.container state: "
                   "stopped, or state: absent with force: true) before %s"
                   % ("s" if len(running) > 1 else "", ", ".join(running),
                      "are" if len(running) > 1 else "is", "them" if len(running) > 1 else "it",
                      doing), containers=running)


def commit_changes(store: Store, record: ContainerRecord, chain: Sequence[ChainID],
                   what: str) -> Tuple[LayerRecord, bool]:
    """The container's changes as a layer on ``chain`` (commit, a build's RUN step), and
    whether it is new to the store.

    The change stream reads each changed file from a reflink clone (``Shadow``) that
    the new layer then takes instead of writing the same data again: on btrfs and xfs a
    commit writes no file data, and the layer's data is the stream's by construction.
    Everything else (directories, whiteouts, modes, attributes, times) is applied from
    the stream as for any import."""
    from ansible_collections.strata.layers.plugins.module_utils._compression import (
        DecodedStream)
    shadow = Shadow()

    def open_stream() -> DecodedStream:
        diff = changes_in(store.driver, store.driver.container_root(record.id), chain,
                          shadow=shadow, cid=record.id)
        return DecodedStream(chunk_reader(iter(diff.tar())), what=what)

    layer, imported, _digests = store.ingest_layer(
        open_stream, chain[-1] if chain else None, what, shadow=shadow)
    return layer, imported


# ---------------------------------------------------------------------- mutations

def init_filler(entries: Optional[Sequence[str]]) -> Optional[InitFiller]:
    """What fills a container's init layer with ``entries`` (None: no init layer)."""
    if entries is None:
        return None
    wanted = list(entries)
    return lambda root: populate(root, wanted)


def create(store: Store, name: str, image: ImageRecord, kind: str = "container",
           cid: Optional[str] = None, init: Optional[Sequence[str]] = None,
           run: Optional[Dict[str, Any]] = None) -> ContainerRecord:
    """A new container on ``image``; with an init layer holding ``init`` (the entries
    ``_initlayer.populate`` takes) unless None."""
    driver = store.driver
    cid = cid or secrets.token_hex(32)
    db = ContainerDB(store.root)
    staged = os.path.join(store.tmp, temp_name("container"))
    mark = store.marks.begin("create-container").set(
        record=db.path(cid), if_absent=[(driver.name, driver.container_dir(cid)),
                                        (driver.name, driver.init_dir(cid)),
                                        (None, staged)])
    crash_point("container-create.marked")
    try:
        driver.create_container(cid, image_chain(store, image), init_filler(init))
        fsync_dir(driver.container_dir(cid))
        fsync_dir(os.path.dirname(driver.container_dir(cid)))
        crash_point("container-create.driver")
        record = ContainerRecord(id=cid, name=name, image_id=image.id, created=now_iso(),
                                 kind=kind, init=list(init) if init is not None else None,
                                 run=run, init_usage=init_usage(driver, cid))
        makedirs(store.tmp)
        os.mkdir(staged, 0o700)
        write_json(os.path.join(staged, RECORD_FILE), record.to_json())
        makedirs(db.dir)
        rename_durable(staged, db.path(cid))
        crash_point("container-create.recorded")
    except BaseException:
        store._rollback(mark)
        raise
    mark.done()
    return record


def remove(store: Store, record: ContainerRecord) -> None:
    driver = store.driver
    if record.mount_point:
        driver.unmount(record.mount_point)
    db = ContainerDB(store.root)
    mark = store.marks.begin("remove-container").set(
        record=db.path(record.id),
        if_absent=[(driver.name, driver.container_dir(record.id)),
                   (driver.name, driver.init_dir(record.id)),
                   (None, default_mount_point(store, record.id))])
    crash_point("container-remove.marked")
    makedirs(store.tmp)
    parked = os.path.join(store.tmp, temp_name("removed"))
    rename_durable(db.path(record.id), parked)
    crash_point("container-remove.unrecorded")
    for home in store.driver_homes():  # a kept previous driver has a copy too
        if home.container_exists(record.id):
            home.remove_container(record.id)
    crash_point("container-remove.driver")
    remove_tree(default_mount_point(store, record.id))
    mark.done()
    remove_tree(parked)


def check_mount_point(store: Store, target: str) -> str:
    """A mount point the user chose: outside the store's tree, and not a directory that
    holds the data root (mounting there would hide the store itself)."""
    if not os.path.isabs(target):
        raise InvalidInput("mount_point %r must be an absolute path" % target)
    real = os.path.realpath(target)
    if os.path.exists(real) and not os.path.isdir(real):
        raise InvalidInput("mount_point %s exists and is not a directory" % target)
    clash = overlaps(store.root, target)
    if clash:
        raise InvalidInput("mount_point %s is refused: %s; choose a path outside the store "
                           "(or leave mount_point unset: the container is then mounted "
                           "under %s, reachable by root only)"
                           % (target, clash, os.path.join(store.root, "mounts")))
    return real


def mount(store: Store, record: ContainerRecord, target: str) -> bool:
    """Mount ``record`` at ``target``; False when it already is."""
    driver = store.driver
    current = record.mount_point
    if current == target and driver.is_mounted(target):
        return False
    refuse_busy_target(target)
    if current and current != target and driver.is_mounted(current):
        driver.unmount(current)
    # default mount points sit in mounts/, root's alone: no other user reaches them
    makedirs(os.path.join(store.root, "mounts"), 0o700)
    makedirs(target, 0o755)
    image = store.images.get(record.image_id)
    # the record names the mount point before the mount exists: a kill in between leaves
    # a mount its container owns (found by the next run), never one nobody knows of
    record.mount_point = target
    ContainerDB(store.root).save(record)
    crash_point("container-mount.recorded")
    driver.mount(record.id, image_chain(store, image), target)
    if not inside(store.root, target):
        try:
            restrict_mount(target)
        except StoreError:
            driver.unmount(target)
            raise
    crash_point("container-mount.mounted")
    return True


def restrict_mount(target: str) -> None:
    """A mount point the user chose outside the store is as reachable as its parent
    directories make it: it is mounted ``nosuid,nodev``, so no local user can run the
    image's setuid programs or open its device nodes through it (the default mount
    points, in the store's 0700 ``mounts/``, are reachable by root only)."""
    try:
        fs_mount("none", target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    except OSError as exc:
        raise StoreError("making the mount at %s nosuid,nodev failed: %s" % (target, exc)) \
            from exc


def refuse_busy_target(target: str) -> None:
    """Checked before anything changes: a failed ``mounted`` leaves the store as it was."""
    if mount_at(target) is not None:
        raise AlreadyExists("something else is already mounted at %s; unmount it or choose "
                            "another mount_point" % target)


def unmount(store: Store, record: ContainerRecord) -> bool:
    if not record.mount_point:
        return False
    was = store.driver.is_mounted(record.mount_point)
    store.driver.unmount(record.mount_point)
    record.mount_point = None
    ContainerDB(store.root).save(record)
    return was
