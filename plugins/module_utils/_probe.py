# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Driver selection: probe the host for real and explain every candidate.

Priority (first usable wins for ``driver: auto``):

1. ``btrfs`` *when the data root is on btrfs*: layers and containers are native
   snapshots, copy-on-write works per block instead of copying whole files up, and
   a commit is a snapshot, not a copy.
2. ``overlay2``: the kernel's union filesystem; page cache shared between containers,
   fastest container creation, the default of Docker and Podman on every other
   filesystem.  Needs d_type and a working test mount.
3. ``fuse-overlayfs``: the same layout in user space, for hosts where kernel overlay
   is unusable (old kernels, overlay on overlay, some rootless set-ups); slower.
4. ``vfs``: full copies; works everywhere, costs disk and time (reflinks help).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple, Type

from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree, temp_name
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import fs_type, supports_d_type
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import (
    Candidate, Driver, HostFacts)
from ansible_collections.strata.layers.plugins.module_utils.drivers.btrfs import Btrfs
from ansible_collections.strata.layers.plugins.module_utils.drivers.fuse_overlayfs import (
    FuseOverlayfs)
from ansible_collections.strata.layers.plugins.module_utils.drivers.overlay2 import Overlay2
from ansible_collections.strata.layers.plugins.module_utils.drivers.vfs import Vfs

DRIVERS: Dict[str, Type[Driver]] = {cls.name: cls for cls in (Btrfs, Overlay2, FuseOverlayfs, Vfs)}
PRIORITY = ["btrfs", "overlay2", "fuse-overlayfs", "vfs"]


def driver_class(name: str) -> Type[Driver]:
    try:
        return DRIVERS[name]
    except KeyError:
        raise InvalidInput("unknown storage driver %r (known: %s)"
                           % (name, ", ".join(n for n in PRIORITY if n in DRIVERS))) from None


def nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def host_facts(data_root: str, probe_dir: Optional[str] = None) -> HostFacts:
    """Backing filesystem and d_type of ``data_root`` (or its nearest existing parent)."""
    where = probe_dir or nearest_existing(data_root)
    try:
        return HostFacts(data_root=data_root, probe_dir=where,
                         backing_filesystem=fs_type(where), supports_d_type=supports_d_type(where))
    except OSError as exc:
        raise StoreError("cannot probe the filesystem of %s: %s" % (where, exc)) from exc


def candidates(facts: HostFacts) -> List[Candidate]:
    out = []
    for name in PRIORITY:
        cls = DRIVERS.get(name)
        if cls is None:
            continue
        out.append(cls.probe(facts))
    return out


def ordered_for(facts: HostFacts, found: List[Candidate]) -> List[Candidate]:
    """Priority order for this host: btrfs first only where the data root is btrfs."""
    if facts.backing_filesystem == "btrfs":
        return found
    return [c for c in found if c.name != "btrfs"] + [c for c in found if c.name == "btrfs"]


def select(data_root: str, requested: str = "auto",
           probe_dir: Optional[str] = None) -> Tuple[str, HostFacts, List[Candidate]]:
    """Choose a driver; raise Unsupported (with every reason) when none fits."""
    scratch = None
    if probe_dir is None:
        base = nearest_existing(data_root)
        scratch = os.path.join(base, temp_name("probe"))
        os.mkdir(scratch, 0o700)
        probe_dir = scratch
    try:
        facts = host_facts(data_root, probe_dir)
        found = ordered_for(facts, candidates(facts))
    finally:
        if scratch is not None:
            remove_tree(scratch)
    if requested != "auto":
        driver_class(requested)
        chosen = next(c for c in found if c.name == requested)
        if not chosen.usable:
            raise Unsupported("storage driver %s cannot run for %s: %s"
                              % (requested, data_root, chosen.reason),
                              candidates=[c.as_dict() for c in found])
        return requested, facts, found
    for cand in found:
        if cand.usable:
            return cand.name, facts, found
    raise Unsupported("no storage driver can run for %s: %s" % (
        data_root, "; ".join("%s: %s" % (c.name, c.reason) for c in found)))
