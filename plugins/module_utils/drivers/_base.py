# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The abstract storage driver.

A driver owns ``<data_root>/<name>/`` (its *home*) and nothing else.  The store tells
it what to do and when; the driver decides how layers and containers sit on disk.

Layers are named by their chain id (hex), containers by their id.  A layer directory
is created under a staging name (``.tmp-*`` in the home's ``layers/``), filled by the
tar applier, and renamed to its final name by ``commit_layer``: a final name therefore
always holds a complete layer.  Staging names left by a crash are removed by ``sweep``.
Each driver's home: docs/design.md, "Layout of a store" ("Each driver's home").

``whiteouts`` tells the applier how to express deletions: ``device`` (overlay
family: 0/0 character devices and ``trusted.overlay.opaque``) or ``delete`` (full
copy drivers: the layer directory starts as a copy of its parent and deletions are
applied to it).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, List, Optional, Sequence

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, makedirs, remove_tree, temp_name)
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID, hex_of
from ansible_collections.strata.layers.plugins.module_utils._errors import Busy, StoreError
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import (
    MS_BIND, mount, mount_at, processes_using, umount)


@dataclass
class Candidate:
    """Whether a driver can run for a store here, and why (or why not)."""

    name: str
    usable: bool
    reason: str

    def as_dict(self) -> dict:
        return {"name": self.name, "usable": self.usable, "reason": self.reason}


@dataclass
class HostFacts:
    """What the selection needs to know about the host and the data root."""

    data_root: str
    probe_dir: str
    backing_filesystem: str
    supports_d_type: bool


@dataclass
class Staged:
    """A layer directory being filled: ``path`` is where the tar is applied."""

    key: str
    top: str
    path: str


class UnchangedCheck:
    """Whether a container's root is still exactly its diff base, known without a walk."""

    def unchanged(self, root: str, base: str) -> bool:
        """True only when ``root`` is ``base`` exactly (False: unknown, walk it)."""
        return False


# fills a container's init layer, given the directory that receives it (see _initlayer)
InitFiller = Callable[[str], object]


def bind_mount(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND)


class Driver(ABC):
    """How layers and container layers are stored (see the module docstring)."""

    name: ClassVar[str] = ""
    whiteouts: ClassVar[str] = "delete"
    max_depth: ClassVar[Optional[int]] = None
    layers_dir: ClassVar[str] = "layers"
    containers_dir: ClassVar[str] = "containers"

    def __init__(self, data_root: str) -> None:
        self.data_root = data_root
        self.home = os.path.join(data_root, self.name)

    # ---------------------------------------------------------------- selection
    @classmethod
    @abstractmethod
    def probe(cls, facts: HostFacts) -> Candidate:
        """Can this driver run here?  Must not touch the store's contents."""

    def init(self) -> None:
        makedirs(os.path.join(self.home, self.layers_dir))
        makedirs(os.path.join(self.home, self.containers_dir))

    def exists(self) -> bool:
        return os.path.isdir(self.home)

    # ---------------------------------------------------------------- layers
    def layer_dir(self, chain: ChainID) -> str:
        return os.path.join(self.home, self.layers_dir, hex_of(chain))

    def layer_files(self, chain: ChainID) -> str:
        """The directory holding the files this layer's tar names (for re-emission)."""
        return self.layer_dir(chain)

    def has_layer(self, chain: ChainID) -> bool:
        return os.path.isdir(self.layer_dir(chain))

    def layer_hexes(self) -> List[str]:
        try:
            return sorted(n for n in os.listdir(os.path.join(self.home, self.layers_dir))
                          if not n.startswith(TEMP_PREFIX))
        except FileNotFoundError:
            return []

    def staging_key(self) -> str:
        return temp_name("layer")

    def staging_dir(self, key: str) -> str:
        return os.path.join(self.home, self.layers_dir, key)

    @abstractmethod
    def stage_layer(self, key: str, parent: Optional[ChainID], depth: int) -> Staged:
        """Create staging directory ``key`` ready to receive a layer on ``parent``."""

    def commit_layer(self, staged: Staged, chain: ChainID) -> None:
        """Give a filled staging directory its final name (atomic rename)."""
        os.rename(staged.top, self.layer_dir(chain))

    def remove_layer(self, chain: ChainID) -> None:
        self.remove_path(self.layer_dir(chain))

    def remove_path(self, path: str) -> None:
        """Remove a layer or container directory of this driver, staging ones included."""
        remove_tree(path)

    def sweep(self) -> List[str]:
        """Remove staging leftovers (crash debris); return what was removed."""
        removed = []
        for sub in (self.layers_dir, self.containers_dir):
            base = os.path.join(self.home, sub)
            try:
                names = os.listdir(base)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    self.remove_path(os.path.join(base, name))
                    removed.append(os.path.join(base, name))
        return removed

    def leftovers(self) -> List[str]:
        found = []
        for sub in (self.layers_dir, self.containers_dir):
            base = os.path.join(self.home, sub)
            if os.path.isdir(base):
                found += [os.path.join(base, n) for n in os.listdir(base)
                          if n.startswith(TEMP_PREFIX)]
        return found

    # ---------------------------------------------------------------- containers
    def container_dir(self, cid: str) -> str:
        return os.path.join(self.home, self.containers_dir, cid)

    def container_ids(self) -> List[str]:
        try:
            return sorted(n for n in os.listdir(os.path.join(self.home, self.containers_dir))
                          if not n.startswith(TEMP_PREFIX))
        except FileNotFoundError:
            return []

    def container_exists(self, cid: str) -> bool:
        return os.path.isdir(self.container_dir(cid))

    @abstractmethod
    def create_container(self, cid: str, chain: Sequence[ChainID],
                         init: Optional[InitFiller] = None) -> None:
        """Create the writable layer of container ``cid`` over the layers ``chain``
        (bottom to top; may be empty), with an init layer between them that ``init``
        fills (none: a container without one, as before init layers existed)."""

    def init_dir(self, cid: str) -> str:
        """Where the container's init layer lives (Docker's ``<id>-init``)."""
        return os.path.join(self.home, "init", cid)

    def has_init(self, cid: str) -> bool:
        return os.path.isdir(self.init_dir(cid))

    @abstractmethod
    def container_root(self, cid: str) -> str:
        """The directory that receives the container's writes (upper or full copy)."""

    def remove_container(self, cid: str) -> None:
        self.remove_path(self.container_dir(cid))
        if os.path.lexists(self.init_dir(cid)):
            self.remove_path(self.init_dir(cid))

    @abstractmethod
    def mount(self, cid: str, chain: Sequence[ChainID], target: str) -> None:
        """Mount the container's merged root filesystem at ``target``."""

    def unmount(self, target: str) -> None:
        if mount_at(target) is None:
            return
        try:
            umount(target)
        except OSError as exc:
            users = processes_using(target)
            if users:
                raise Busy("cannot unmount %s: it is in use by %s; stop them (or leave the "
                           "directory) and run again" % (target, ", ".join(users)),
                           processes=users) from exc
            raise StoreError("cannot unmount %s: %s" % (target, exc)) from exc

    def is_mounted(self, target: str) -> bool:
        return mount_at(target) is not None

    def snapshot_check(self) -> Optional[UnchangedCheck]:
        """For ``store_info``, one per call: a test that tells, without walking it, that
        a container's root is still exactly its diff base (size 0); None: no such test
        on this driver (every container is walked)."""
        return None

    def diff_base(self, chain: Sequence[ChainID], cid: Optional[str] = None) -> Optional[str]:
        """For full-copy drivers: the root to compare container ``cid`` against: its
        init layer, or (none) the image's top layer."""
        if cid is not None and self.has_init(cid):
            return self.init_dir(cid)
        return self.layer_dir(chain[-1]) if chain else None


class FullCopyDriver(Driver):
    """A driver whose every layer and container directory is a complete root filesystem
    (vfs, btrfs): a layer starts as a copy (or snapshot) of its parent, whiteouts are
    applied as deletions, a container starts as a copy of its image's top layer and is
    "mounted" by a bind mount; changes are found by walk-and-compare (``diff_base``)."""

    whiteouts: ClassVar[str] = "delete"

    def _materialize(self, path: str, chain: Sequence[ChainID]) -> None:
        """Create ``path`` holding the root filesystem of ``chain`` (empty: a new root)."""
        self._copy_root(self.layer_dir(chain[-1]) if chain else None, path)

    @abstractmethod
    def _copy_root(self, source: Optional[str], path: str) -> None:
        """Create ``path`` as a copy (snapshot) of root ``source`` (None: a new root)."""

    def stage_layer(self, key: str, parent: Optional[ChainID], depth: int) -> Staged:
        top = self.staging_dir(key)
        self._materialize(top, [parent] if parent else [])
        return Staged(key=key, top=top, path=top)

    def create_container(self, cid: str, chain: Sequence[ChainID],
                         init: Optional[InitFiller] = None) -> None:
        if init is None:
            self._materialize(self.container_dir(cid), chain)
            return
        # the init layer is a full root too (as Docker's vfs <id>-init): the image's copy
        # with the init entries added; the container is a copy of it
        base = self.init_dir(cid)
        makedirs(os.path.dirname(base))
        self._materialize(base, chain)
        init(base)
        self._copy_root(base, self.container_dir(cid))

    def container_root(self, cid: str) -> str:
        return self.container_dir(cid)

    def mount(self, cid: str, chain: Sequence[ChainID], target: str) -> None:
        bind_mount(self.container_root(cid), target)
