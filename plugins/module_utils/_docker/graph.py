# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How dockerd's graph drivers lay a layer out on disk (as dockerd 20.10 does it).

Every layer and container layer is named by an id (``cache-id``, ``mount-id``,
``<mount-id>-init``):

* ``overlay2`` and ``fuse-overlayfs`` (``<data_root>/<driver>/``): ``<id>/diff`` holds
  the layer's own files (whiteouts as 0/0 character devices, opaque directories marked
  ``trusted.overlay.opaque=y``), ``<id>/link`` a 26-character name with the symlink
  ``l/<name> -> ../<id>/diff``; a layer with a parent also has ``<id>/lower`` (the
  ``l/`` names of every layer below, nearest first, joined by ``:``) and ``<id>/work``;
  a parent gets an empty ``committed`` file once a child is made on it;
* ``vfs`` (``<data_root>/vfs/dir/<id>``): a full copy of the root filesystem up to and
  including the layer (deletions applied);
* ``btrfs`` (``<data_root>/btrfs/subvolumes/<id>``): a subvolume, a snapshot of its
  parent's with the layer applied.

``files(id)`` is the directory a layer's tar-split names its files in; ``changes``
reads a layer's own changes back as a tar (native diff for the overlay family,
walk-and-compare against the parent for full copies).
"""
from __future__ import annotations

import os
import secrets
import stat
from typing import Dict, List, Optional, Type, Union

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    makedirs, remove_tree, write_file)
from ansible_collections.strata.layers.plugins.module_utils._changes import TreeDiff, UpperDiff
from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow, TreeCopier
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt, Unsupported
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import (
    MS_BIND, mount, mount_at, umount)
from ansible_collections.strata.layers.plugins.module_utils.drivers import btrfs as btrfs_ops
from ansible_collections.strata.layers.plugins.module_utils.drivers.fuse_overlayfs import (
    PROGRAM as FUSE_PROGRAM, UNMOUNT as FUSE_UNMOUNT, _run)
from ansible_collections.strata.layers.plugins.module_utils.drivers.overlay2 import (
    kernel_has_overlay)

_LINK_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_LINK_LENGTH = 26


def new_id() -> str:
    """A fresh graph id, as dockerd makes them (64 random hex digits)."""
    return secrets.token_hex(32)


class Graph:
    """One graph driver's tree under the data root."""

    name = ""
    whiteouts = "delete"

    def __init__(self, data_root: str) -> None:
        self.data_root = data_root
        self.home = os.path.join(data_root, self.name)

    def layer_dir(self, gid: str) -> str:
        raise NotImplementedError

    def files(self, gid: str) -> str:
        return self.layer_dir(gid)

    def exists(self, gid: str) -> bool:
        return os.path.isdir(self.layer_dir(gid))

    def init_home(self) -> None:
        makedirs(self.home, 0o710)

    def shadow_dir(self, gid: str, work: str) -> str:
        """Where the clones for layer ``gid`` wait to be taken: on its filesystem, where
        a clone can be linked into the layer (hardlinks cannot cross btrfs subvolumes)."""
        return os.path.join(work, "shadow-" + gid)

    def create(self, gid: str, parent: Optional[str]) -> None:
        raise NotImplementedError

    def remove(self, gid: str) -> None:
        remove_tree(self.layer_dir(gid))

    def changes(self, gid: str, parent: Optional[str],
                shadow: Optional[Shadow] = None) -> Union[UpperDiff, TreeDiff]:
        return TreeDiff(self.files(parent) if parent else None, self.files(gid),
                        exact_times=True, shadow=shadow)

    def whited_out(self, gid: str) -> List[bytes]:
        """Paths layer ``gid`` deletes from the layers below it, where that is known
        without comparing trees (a hint: the change tar remains the authority)."""
        return []

    def mount(self, gid: str, target: str) -> None:
        """The layer's merged root filesystem at ``target`` (read-only use)."""
        mount(self.files(gid), target, None, MS_BIND)

    def unmount(self, target: str) -> None:
        if mount_at(target) is not None:
            umount(target)

    def ids(self) -> list:
        try:
            return sorted(os.listdir(os.path.dirname(self.layer_dir("x"))))
        except FileNotFoundError:
            return []


class Overlay(Graph):
    """overlay2's layout (also fuse-overlayfs's)."""

    name = "overlay2"
    whiteouts = "device"

    def init_home(self) -> None:
        super().init_home()
        makedirs(os.path.join(self.home, "l"), 0o700)

    def layer_dir(self, gid: str) -> str:
        return os.path.join(self.home, gid)

    def files(self, gid: str) -> str:
        return os.path.join(self.layer_dir(gid), "diff")

    def create(self, gid: str, parent: Optional[str]) -> None:
        top = self.layer_dir(gid)
        os.mkdir(top, 0o710)
        os.mkdir(os.path.join(top, "diff"), 0o755)
        link = "".join(secrets.choice(_LINK_CHARS) for _index in range(_LINK_LENGTH))
        os.symlink(os.path.join("..", gid, "diff"), os.path.join(self.home, "l", link))
        write_file(os.path.join(top, "link"), link.encode("ascii"))
        if parent is None:
            return
        os.mkdir(os.path.join(top, "work"), 0o700)
        write_file(os.path.join(self.layer_dir(parent), "committed"), b"", 0o600)
        write_file(os.path.join(top, "lower"), self._lower_for(parent).encode("ascii"))

    def _lower_for(self, parent: str) -> str:
        lowers = ["l/" + self._read(parent, "link")]
        below = self._read(parent, "lower", optional=True)
        if below:
            lowers.append(below)
        return ":".join(lowers)

    def _read(self, gid: str, name: str, optional: bool = False) -> str:
        path = os.path.join(self.layer_dir(gid), name)
        try:
            with open(path) as handle:
                return handle.read().strip()
        except FileNotFoundError as exc:
            if optional:
                return ""
            raise Corrupt("%s is missing: the %s layer %s is damaged"
                          % (path, self.name, gid)) from exc

    def remove(self, gid: str) -> None:
        link = self._read(gid, "link", optional=True) if os.path.isdir(self.layer_dir(gid)) else ""
        if link and "/" not in link:
            try:
                os.unlink(os.path.join(self.home, "l", link))
            except FileNotFoundError:
                pass
        super().remove(gid)

    def changes(self, gid: str, parent: Optional[str],
                shadow: Optional[Shadow] = None) -> Union[UpperDiff, TreeDiff]:
        return UpperDiff(self.files(gid), exact_times=True, shadow=shadow)

    def whited_out(self, gid: str) -> List[bytes]:
        """The whiteouts of the layer's ``diff``: 0/0 character devices (one walk of the
        directory, ``lstat`` only for special files)."""
        root = os.fsencode(self.files(gid))
        found: List[bytes] = []
        stack = [b""]
        while stack:
            rel = stack.pop()
            try:
                listing = list(os.scandir(os.path.join(root, rel) if rel else root))
            except OSError:
                continue
            for entry in listing:
                child = rel + b"/" + entry.name if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(child)
                elif not entry.is_file(follow_symlinks=False) \
                        and not entry.is_symlink():
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        found.append(child)
        return sorted(found)

    def mount(self, gid: str, target: str) -> None:
        """A read-only overlay of the layer and everything below it (no upper: nothing
        is written, not even the work directory)."""
        lower = self._read(gid, "lower", optional=True)
        if not lower:
            super().mount(gid, target)
            return
        options = "lowerdir=%s:%s" % (os.path.join(gid, "diff"), lower)
        if len(options) >= 4096:
            raise Unsupported("the overlay mount options for layer %s exceed one page" % gid)
        self._mount_lowers(target, options)

    def _mount_lowers(self, target: str, options: str) -> None:
        target = os.path.abspath(target)
        if not kernel_has_overlay():
            _run([FUSE_PROGRAM, "-o", options, target], cwd=self.home)
            return
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(self.home)  # the l/ names in ``lower`` are relative to the home
            mount("overlay", target, "overlay", 0, options)
        finally:
            os.fchdir(cwd)
            os.close(cwd)

    def unmount(self, target: str) -> None:
        entry = mount_at(target)
        if entry is None:
            return
        if "fuse" in entry.fstype:
            _run([FUSE_UNMOUNT, "-u", target])
        else:
            umount(target)


class FuseOverlay(Overlay):
    name = "fuse-overlayfs"


class Vfs(Graph):
    name = "vfs"

    def layer_dir(self, gid: str) -> str:
        return os.path.join(self.home, "dir", gid)

    def init_home(self) -> None:
        super().init_home()
        makedirs(os.path.join(self.home, "dir"), 0o710)

    def create(self, gid: str, parent: Optional[str]) -> None:
        if parent is None:
            os.mkdir(self.layer_dir(gid), 0o755)
        else:
            TreeCopier().copy(self.layer_dir(parent), self.layer_dir(gid))


class Btrfs(Graph):
    name = "btrfs"

    def layer_dir(self, gid: str) -> str:
        return os.path.join(self.home, "subvolumes", gid)

    def init_home(self) -> None:
        super().init_home()
        makedirs(os.path.join(self.home, "subvolumes"), 0o700)

    def create(self, gid: str, parent: Optional[str]) -> None:
        if parent is None:
            btrfs_ops.create_subvolume(self.layer_dir(gid))
            os.chmod(self.layer_dir(gid), 0o755)
        else:
            btrfs_ops.snapshot(self.layer_dir(parent), self.layer_dir(gid))

    def shadow_dir(self, gid: str, work: str) -> str:
        # inside the subvolume (removed before the layer is checked or staged; a killed
        # run's goes with the announced subvolume)
        return os.path.join(self.layer_dir(gid), ".strata-shadow-" + gid[:16])

    def remove(self, gid: str) -> None:
        path = self.layer_dir(gid)
        if os.path.isdir(path) and btrfs_ops.is_subvolume(path):
            btrfs_ops.delete_subvolume(path)
        else:
            remove_tree(path)


GRAPHS: Dict[str, Type[Graph]] = {g.name: g for g in (Overlay, FuseOverlay, Vfs, Btrfs)}
# recognised, never written: dockerd's other drivers (sources this module cannot read)
FOREIGN = {
    "zfs": "zfs datasets and snapshots",
    "devicemapper": "thin-provisioned block devices (removed in Docker 25)",
    "aufs": "aufs branches (removed in Docker 24)",
    "windowsfilter": "Windows layers",
}


def graph(name: str, data_root: str) -> Graph:
    try:
        return GRAPHS[name](data_root)
    except KeyError:
        why = FOREIGN.get(name)
        raise Unsupported(
            "Docker's %s driver stores layers as %s, which this module cannot read or write; "
            "supported: %s" % (name, why or "an unknown layout", ", ".join(sorted(GRAPHS)))
        ) from None
