# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""btrfs: every layer a subvolume, a child layer a snapshot of its parent, every
container a snapshot of its image's top layer.

Copy-on-write happens per block inside btrfs (no whole-file copy-up), a container
costs one snapshot whatever the image's size, and a layer directory is a full root
filesystem (like vfs, so whiteouts are applied as deletions and a container's changes
are found by walk-and-compare).  ``store_info`` first asks the btrfs tree search whether
a container is still exactly its base's snapshot (``SnapshotCheck``): then its size is 0
with no walk.  Subvolumes are made with the btrfs ioctls directly
(standard library only; btrfs-progs is only needed to make the filesystem).

On-disk layout: docs/design.md, "Layout of a store" ("Each driver's home").
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, exchange_durable, remove_tree, syncfs, temp_name)
from ansible_collections.strata.layers.plugins.module_utils._copytree import TreeCopier
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import (
    Candidate, FullCopyDriver, HostFacts, UnchangedCheck)

# _IOW(0x94, nr, struct btrfs_ioctl_vol_args), the struct being {s64 fd; char name[4088]}
SUBVOL_CREATE = 0x5000940E
SNAP_CREATE = 0x50009401
SNAP_DESTROY = 0x5000940F
FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory
LAST_FREE_OBJECTID = 2 ** 64 - 257  # above: the tree's own items (orphans, free space)
# _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args), 504 bytes (kernel 4.18)
GET_SUBVOL_INFO = 0x81F8943C
# _IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2): a 104-byte key, then the buffer size
TREE_SEARCH_V2 = 0xC0709411
_SEARCH_KEY = struct.Struct("=7Q4I4Q")
_SEARCH_HEADER = struct.Struct("=3Q2I")
_SEARCH_BUFFER = 1024 * 1024
INODE_ITEM_KEY = 1
_U64 = 2 ** 64 - 1
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


def _vol_args(fd: int, name: str) -> bytearray:
    raw = os.fsencode(name)
    if len(raw) >= 4088 or b"/" in raw:
        raise StoreError("btrfs subvolume name %r is invalid" % name)
    buf = bytearray(4096)
    struct.pack_into("q", buf, 0, fd)
    buf[8:8 + len(raw)] = raw
    return buf


def _ioctl_in_parent(path: str, request: int, source_fd: int = 0) -> None:
    parent = os.open(os.path.dirname(path), _DIR)
    try:
        fcntl.ioctl(parent, request, _vol_args(source_fd, os.path.basename(path)))
    finally:
        os.close(parent)


def create_subvolume(path: str) -> None:
    _ioctl_in_parent(path, SUBVOL_CREATE)


def snapshot(source: str, path: str) -> None:
    src = os.open(source, _DIR)
    try:
        _ioctl_in_parent(path, SNAP_CREATE, src)
    finally:
        os.close(src)


def is_subvolume(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == FIRST_FREE_OBJECTID and os.path.isdir(path)


def delete_subvolume(path: str) -> None:
    """Destroy a subvolume (and any left inside it, which the ioctl refuses to)."""
    for name in os.listdir(path):
        child = os.path.join(path, name)
        if is_subvolume(child):
            delete_subvolume(child)
    try:
        _ioctl_in_parent(path, SNAP_DESTROY)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


class SubvolumeInfo(NamedTuple):
    tree_id: int
    generation: int   # the transaction that last changed the subvolume's tree (committed)
    uuid: bytes
    parent_uuid: bytes  # the subvolume it is a snapshot of
    otransid: int     # the transaction that created it


def subvolume_info(path: str) -> SubvolumeInfo:
    buf = bytearray(504)
    fd = os.open(path, _DIR)
    try:
        fcntl.ioctl(fd, GET_SUBVOL_INFO, buf)
    finally:
        os.close(fd)
    tree_id = struct.unpack_from("=Q", buf, 0)[0]
    generation = struct.unpack_from("=Q", buf, 280)[0]
    otransid = struct.unpack_from("=Q", buf, 352)[0]
    return SubvolumeInfo(tree_id, generation, bytes(buf[296:312]), bytes(buf[312:328]),
                         otransid)


Batch = Tuple[bytearray, List[Tuple[int, int, int]]]


def tree_items(path: str, tree_id: int, min_transid: int = 0, objectid: Optional[int] = None,
               item_type: Optional[int] = None) -> Iterator[Batch]:
    """Batches of the items of subvolume tree ``tree_id`` in leaves written in
    transaction ``min_transid`` or later (BTRFS_IOC_TREE_SEARCH_V2; a leaf is returned
    whole, so unchanged neighbours of a changed item come too; root only): the buffer
    (reused by the next batch) and its items' ``(objectid, type, data offset)``."""
    fd = os.open(path, _DIR)
    try:
        low = (0 if objectid is None else objectid, 0 if item_type is None else item_type, 0)
        high = (_U64 if objectid is None else objectid, 255 if item_type is None else item_type)
        buf = bytearray(_SEARCH_BUFFER)
        header = _SEARCH_HEADER.unpack_from
        while low is not None:
            _SEARCH_KEY.pack_into(buf, 0, tree_id, low[0], high[0], low[2], _U64, min_transid,
                                  _U64, low[1], high[1], 0xFFFFFFFF, 0, 0, 0, 0, 0)
            struct.pack_into("=Q", buf, _SEARCH_KEY.size, _SEARCH_BUFFER - 112)
            fcntl.ioctl(fd, TREE_SEARCH_V2, buf)
            count = _SEARCH_KEY.unpack_from(buf, 0)[9]
            if not count:
                return
            found = []
            offset = 112
            for _index in range(count):
                _transid, oid, key_offset, kind, size = header(buf, offset)
                found.append((oid, kind, offset + 32))
                offset += 32 + size
            yield buf, found
            low = _next_key((oid, kind, key_offset))
    finally:
        os.close(fd)


def _next_key(key: Tuple[int, int, int]) -> Optional[Tuple[int, int, int]]:
    objectid, kind, offset = key
    if offset < _U64:
        return objectid, kind, offset + 1
    if kind < 255:
        return objectid, kind + 1, 0
    return (objectid + 1, 0, 0) if objectid < _U64 else None


def _inode_identity(objectid: int, data: bytes) -> bytes:
    """An inode item without what a read changes (atime, the last transid, sequence) or
    what is the allocator's (block group): generation, size, nbytes, nlink, uid, gid,
    mode, rdev, flags, ctime, mtime, otime.  The subvolume's root directory gets a new
    ctime from the snapshot itself: its ctime is left out (the walk never compares the
    root, only its entries, whose changes set its mtime and size)."""
    ctime = b"" if objectid == FIRST_FREE_OBJECTID else data[124:136]
    return data[0:8] + data[16:32] + data[40:72] + ctime + data[136:160]


class SnapshotCheck(UnchangedCheck):
    """Is a container still exactly the snapshot of its diff base, without walking it?

    Yes when its subvolume is a snapshot of that base (parent uuid) and every inode item
    in a leaf written since the snapshot's transaction is, except for its atime, the
    base's item of the same inode (a snapshot keeps inode numbers).  Any write, create,
    delete, rename, link, chmod/chown or xattr change sets the ctime of the inode or of
    its directory, so it shows (the kernel sets a ctime to the current time; only a clock
    set back to the base's ctime to the nanosecond could hide a change); an atime update
    (a read) does not count, as in the walk.  The filesystem is synced once first: until
    a transaction commits, the subvolume's generation and btrfs's delayed inode items do
    not show the latest writes.  The base is a layer or an init layer, which nothing
    writes after the container's snapshot.  A container found unchanged also allocates
    exactly what its base does (the same inode items, so the same ``st_blocks``).  Call
    scoped (one ``store_info``); any error means "walk it" (the exact answer)."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.synced = False
        self._bases: Dict[str, Tuple[SubvolumeInfo, Dict[int, bytes]]] = {}

    def unchanged(self, root: str, base: str) -> bool:
        try:
            if not self.synced:
                syncfs(self.home)
                self.synced = True
            info = subvolume_info(root)
            base_info, inodes = self._base(base)
            if info.parent_uuid != base_info.uuid:
                return False
            if info.generation <= info.otransid:
                return True  # nothing committed to its tree since the snapshot
            return self._same_inodes(root, info, inodes)
        except OSError:
            return False

    def _base(self, base: str) -> Tuple[SubvolumeInfo, Dict[int, bytes]]:
        if base not in self._bases:
            info = subvolume_info(base)
            inodes = {}
            for buf, found in tree_items(base, info.tree_id):
                for oid, kind, at in found:
                    if kind == INODE_ITEM_KEY:
                        inodes[oid] = _inode_identity(oid, buf[at:at + 160])
            self._bases[base] = (info, inodes)
        return self._bases[base]

    @staticmethod
    def _same_inodes(root: str, info: SubvolumeInfo, inodes: Dict[int, bytes]) -> bool:
        others: Set[int] = set()
        checked: Set[int] = set()
        for buf, found in tree_items(root, info.tree_id, info.otransid + 1):
            for oid, kind, at in found:
                if kind != INODE_ITEM_KEY:
                    others.add(oid)
                elif inodes.get(oid) != _inode_identity(oid, buf[at:at + 160]):
                    return False
                else:
                    checked.add(oid)
        if any(oid > LAST_FREE_OBJECTID for oid in others):
            return False  # an orphan (unlinked, still open) or the like: walk it
        for oid in others - checked:  # its other items' leaf changed, its inode item's not
            item = [buf[at:at + 160] for buf, found in
                    tree_items(root, info.tree_id, 0, oid, INODE_ITEM_KEY)
                    for _oid, _kind, at in found]
            if len(item) != 1 or inodes.get(oid) != _inode_identity(oid, item[0]):
                return False
        return True


class Btrfs(FullCopyDriver):
    """Snapshots on a btrfs data root; see the module docstring."""

    name = "btrfs"

    @classmethod
    def probe(cls, facts: HostFacts) -> Candidate:
        if facts.backing_filesystem != "btrfs":
            return Candidate(cls.name, False, "not a btrfs filesystem (the data root is on %s)"
                             % facts.backing_filesystem)
        test = os.path.join(facts.probe_dir, temp_name("btrfs-probe"))
        try:
            create_subvolume(test)
            snapshot(test, test + "-snap")
            delete_subvolume(test + "-snap")
            delete_subvolume(test)
        except OSError as exc:
            for path in (test + "-snap", test):
                if os.path.exists(path):
                    remove_tree(path)
            return Candidate(cls.name, False, "btrfs subvolume ioctls fail here: %s"
                             % (exc.strerror or exc))
        return Candidate(cls.name, True, "btrfs data root: layers and containers are "
                         "subvolume snapshots with block-level copy-on-write")

    def _copy_root(self, source: Optional[str], path: str) -> None:
        if source is not None and is_subvolume(source):
            snapshot(source, path)
            return
        create_subvolume(path)
        if source is None:
            os.chmod(path, 0o755)
        else:
            # a plain directory where a subvolume belongs (a home copied with cp -a or
            # rsync): a new subvolume holding a clone of it, so the store keeps working;
            # store_check names such directories (``plain_directories``)
            TreeCopier().copy(source, path, into=True)

    def make_subvolume(self, path: str) -> None:
        """Turn plain directory ``path`` (one of ``plain_directories``) into a subvolume
        with the same contents, in place: a clone is made in a new subvolume beside it
        (under a temporary name that ``sweep`` removes after a crash), flushed, and the
        two swapped in one step; at every moment ``path`` holds a whole root."""
        if not os.path.isdir(path) or is_subvolume(path):
            return
        # the init directory is not swept: its clone is made among the containers
        beside = os.path.dirname(path) if os.path.basename(os.path.dirname(path)) != "init" \
            else os.path.join(self.home, self.containers_dir)
        clone = os.path.join(beside, temp_name("subvolume"))
        create_subvolume(clone)
        try:
            TreeCopier().copy(path, clone, into=True)
            syncfs(self.home)
            crash_point("subvolume.cloned")
            exchange_durable(path, clone)
            crash_point("subvolume.swapped")
        finally:
            self.remove_path(clone)  # the clone, or after the swap the plain directory

    def plain_directories(self) -> List[str]:
        """Layer, init and container roots of this home that are plain directories, not
        subvolumes: each copy made from one is a clone of its files, not a snapshot."""
        found = []
        for base in (self.layers_dir, "init", self.containers_dir):
            top = os.path.join(self.home, base)
            try:
                names = sorted(os.listdir(top))
            except FileNotFoundError:
                continue
            found += [os.path.join(top, n) for n in names if not n.startswith(TEMP_PREFIX)
                      and os.path.isdir(os.path.join(top, n))
                      and not is_subvolume(os.path.join(top, n))]
        return found

    def snapshot_check(self) -> SnapshotCheck:
        return SnapshotCheck(self.home)

    def remove_path(self, path: str) -> None:
        if is_subvolume(path):
            delete_subvolume(path)
        else:
            remove_tree(path)
