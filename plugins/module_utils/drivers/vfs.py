# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vfs: every layer and every container a full copy of its root filesystem.

Works on any filesystem (no union mount, no d_type needed); costs a full copy per
layer and per container, made with reflinks where the filesystem offers them (btrfs,
xfs with reflink=1), so on those it is cheap after all.  Whiteouts are applied as
deletions to the layer's copy of its parent.  A container is "mounted" by a bind
mount of its copy.

On-disk layout: docs/design.md, "Layout of a store" ("Each driver's home").
"""
from __future__ import annotations

import os
from typing import Optional

from ansible_collections.strata.layers.plugins.module_utils._copytree import TreeCopier
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import (
    Candidate, FullCopyDriver, HostFacts)


class Vfs(FullCopyDriver):
    """Full copies; see the module docstring."""

    name = "vfs"

    @classmethod
    def probe(cls, facts: HostFacts) -> Candidate:
        return Candidate(cls.name, True, "always works: a full copy per layer and container "
                         "(%s)" % ("cheap reflinks" if facts.backing_filesystem in ("btrfs", "xfs")
                                   else "slow and disk-hungry on %s" % facts.backing_filesystem))

    def _copy_root(self, source: Optional[str], path: str) -> None:
        if source is not None:
            TreeCopier().copy(source, path)
        else:
            os.mkdir(path, 0o755)
