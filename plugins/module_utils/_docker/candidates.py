# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe's answers under Docker's driver names.

The collection's probe (``_probe``) already tests what dockerd needs for the same
names: d_type and a real overlay mount with two lowers (overlay2), fuse-overlayfs and
/dev/fuse, btrfs subvolume ioctls on a btrfs data root, vfs everywhere.  Docker's
priority is the same (btrfs first only on btrfs).  zfs, devicemapper and aufs are
recognised and explained: sources this module cannot read, never targets.
"""
from __future__ import annotations

import os
from typing import List, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree, temp_name
from ansible_collections.strata.layers.plugins.module_utils._probe import (
    candidates, host_facts, nearest_existing, ordered_for)
from ansible_collections.strata.layers.plugins.module_utils._docker.graph import FOREIGN
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import (
    Candidate, HostFacts)


def probe(data_root: str) -> Tuple[HostFacts, List[Candidate]]:
    """Facts and every candidate, in Docker's priority order for this host."""
    scratch = os.path.join(nearest_existing(data_root), temp_name("probe"))
    os.mkdir(scratch, 0o700)
    try:
        facts = host_facts(data_root, scratch)
        found = ordered_for(facts, candidates(facts))
    finally:
        remove_tree(scratch)
    found += [Candidate(name, False, "recognised (Docker's %s driver: %s) but not supported "
                        "here: a data root on it cannot be converted and it is never chosen"
                        % (name, what)) for name, what in FOREIGN.items()
              if name != "windowsfilter"]
    return facts, found
