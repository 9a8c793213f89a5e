# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""btrfs: every layer a subvolume, a child layer a snapshot of its parent, every
container a snapshot of its image's top layer.

Copy-on-write happens per block inside btrfs (no whole-file copy-up), a container
costs one snapshot whatever the image's size, and a layer directory is a full root
filesystem (like vfs, so whiteouts are applied as deletions and a container's changes
are found by walk-and-compare).  Subvolumes are made with the btrfs ioctls directly
(standard library only; btrfs-progs is only needed to make the filesystem).

On-disk layout: docs/design.md, "Layout of a store" ("Each driver's home").
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Optional

from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree, temp_name
from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import (
    Candidate, FullCopyDriver, HostFacts)

# _IOW(0x94, nr, struct btrfs_ioctl_vol_args), the struct being {s64 fd; char name[4088]}
SUBVOL_CREATE = 0x5000940E
SNAP_CREATE = 0x50009401
SNAP_DESTROY = 0x5000940F
FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory
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
        if source is not None:
            snapshot(source, path)
        else:
            create_subvolume(path)
            os.chmod(path, 0o755)

    def remove_path(self, path: str) -> None:
        if is_subvolume(path):
            delete_subvolume(path)
        else:
            remove_tree(path)
