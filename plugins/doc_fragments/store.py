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
  init:
    description:
      - What a module that writes may make a store of, when O(data_root) is not a store yet.
      - V(new) makes a store only of a directory that does not exist, is empty, or holds
        nothing but C(lost+found) (the root of a fresh filesystem); any other directory is
        refused, naming what is there, so a mistyped O(data_root) never has its files
        swept as staging debris.
      - V(adopt) takes over an existing directory. Files the store did not make are left
        alone, but the directory's mode is tightened to C(0700).
      - Either way the data root and every directory leading to it must be owned by root
        (or the user running the module) and not writable by other users (sticky
        directories such as C(/tmp) are accepted); otherwise the module fails naming it.
    type: str
    choices: [new, adopt]
    default: new
notes:
  - Runs on the managed host with the Python standard library only. Most operations
    need root (mounts, device nodes, file ownership).
  - Every run takes the store lock; concurrent runs against one store wait for each
    other instead of failing.
  - The data root is made (or tightened to) mode C(0700), and the default mount points
    live under it, so other local users cannot reach a mounted container's files (as
    with Docker's C(/var/lib/docker)).
"""
