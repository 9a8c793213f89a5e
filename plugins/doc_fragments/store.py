# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """The options every strata.layers module shares."""

    DOCUMENTATION = r"""
options:
  data_root:
    description:
      - The store. All layers, images, containers and metadata of one host live under it.
      - Created on first use by a module that writes; read-only modules report an empty
        store when it does not exist.
    type: path
    default: /var/lib/strata
  lock_timeout:
    description:
      - Seconds to wait for the store lock held by another run (writers wait for
        everyone, readers for writers).
      - On timeout the module fails and names the process holding the lock.
    type: float
    default: 300
notes:
  - Runs on the managed host with the Python standard library only. Most operations
    need root (mounts, device nodes, file ownership).
  - Every run takes the store lock; concurrent runs against one store wait for each
    other instead of failing.
"""
