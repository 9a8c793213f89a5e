# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A commit: a container's writable layer becomes a new image layer (the module's entry
point is ``_ops/container_commit.py``).

The changes are read as a tar (overlay: the upper directory, whiteout devices turned
back into ``.wh.`` entries and opaque directories into ``.wh..wh..opq``; full copies:
a walk-and-compare against the image) and streamed through the same applier as any
import, so the new layer gets its diff_id, size and header record in one pass.
Where the filesystem can clone (btrfs, xfs), each changed file's data is read from a
clone that the new layer then takes, instead of being written again
(``_containers.commit_changes``, ``_copytree.Shadow``).

The new config is derived from content only (its time is the newest of the image's
and the changes'), so committing an unchanged container again gives the same image
id and ``changed: false``.  As with ``docker commit --pause=false``, a container
written to while it is committed gives whatever the walk saw.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ansible_collections.strata.layers.plugins.module_utils._digest import DiffID
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    ImageConfig, derive_config, parse_config)
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._layers import iso

CREATED_BY = "strata.layers.container_commit"


def commit_config(image: ImageRecord, diff_id: DiffID, mtime_max: int, message: str,
                  created_by: str = CREATED_BY,
                  changes_: Optional[Dict[str, Any]] = None) -> ImageConfig:
    created = max(iso(mtime_max), image.config.created or "")
    raw = derive_config(image.config, diff_id, created, created_by, comment=message,
                        changes=changes_ or None)
    return parse_config(raw, "commit config")
