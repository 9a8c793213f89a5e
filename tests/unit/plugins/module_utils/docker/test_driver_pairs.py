"""Every ordered pair of overlay2, vfs, btrfs and fuse-overlayfs, on a btrfs data root
where dockerd runs all four: one walk through all twelve conversions (an Eulerian
circuit), dockerd restarted and compared after each."""
from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import (
    storage_driver)
from tests.support.dockerhost import params

# overlay2 -> vfs -> btrfs -> fuse-overlayfs -> overlay2 -> btrfs -> vfs -> fuse-overlayfs
# -> btrfs -> overlay2 -> fuse-overlayfs -> vfs -> overlay2: each ordered pair once
WALK = ["overlay2", "vfs", "btrfs", "fuse-overlayfs", "overlay2", "btrfs", "vfs",
        "fuse-overlayfs", "btrfs", "overlay2", "fuse-overlayfs", "vfs", "overlay2"]


def test_every_pair(docker_host_btrfs):
    if shutil.which("fuse-overlayfs") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("fuse-overlayfs cannot run here")
    host = docker_host_btrfs
    host.restore()
    pairs = list(zip(WALK, WALK[1:]))
    assert len(set(pairs)) == 12
    for step, (source, target) in enumerate(pairs):
        keep = step % 2 == 0  # kept trees are adopted on the way back, or dropped
        done = storage_driver(params(host, driver=target, migrate=True, keep_previous=keep))
        assert done["previous_driver"] == source, (source, target, done)
        assert done["migrated"] and done["migrated"]["containers"] == 3, done
        host.verify(target)
    drivers = sorted(n for n in os.listdir(os.path.join(host.root, "image")))
    assert drivers == ["overlay2"]  # the last step kept nothing
