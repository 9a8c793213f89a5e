"""Driver selection probes real filesystems made on loop devices (and tmpfs)."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import Unsupported
from ansible_collections.strata.layers.plugins.module_utils._probe import select

# filesystem -> (what auto picks, {driver: (usable, words its reason must contain)})
EXPECTED = {
    "ext4": ("overlay2", {"overlay2": (True, "d_type"), "btrfs": (False, "not a btrfs"),
                          "vfs": (True, "always")}),
    "xfs": ("overlay2", {"overlay2": (True, "xfs"), "vfs": (True, "reflinks")}),
    "btrfs": ("btrfs", {"btrfs": (True, "snapshots"), "overlay2": (True, "btrfs")}),
    "ext4-nodtype": ("fuse-overlayfs", {"overlay2": (False, "no d_type, overlay would corrupt"),
                                        "fuse-overlayfs": (True, "works")}),
    "tmpfs": ("overlay2", {"overlay2": (True, "tmpfs"), "btrfs": (False, "tmpfs")}),
}


@pytest.mark.parametrize("fs", sorted(EXPECTED))
def test_auto_picks_and_explains(make_fs, fs):
    root = os.path.join(make_fs(fs).mountpoint, "store")
    chosen, facts, candidates = select(root)
    best, reasons = EXPECTED[fs]
    assert chosen == best
    assert facts.backing_filesystem == ("ext4" if fs == "ext4-nodtype" else fs)
    assert facts.supports_d_type == (fs != "ext4-nodtype")
    found = {c.name: c for c in candidates}
    assert sorted(found) == ["btrfs", "fuse-overlayfs", "overlay2", "vfs"]
    for name, (usable, words) in reasons.items():
        assert found[name].usable == usable, found[name]
        assert words in found[name].reason, found[name]
    assert candidates[0].name == ("btrfs" if fs == "btrfs" else "overlay2")
    assert not os.listdir(os.path.dirname(root)) or os.listdir(os.path.dirname(root)) == \
        ["lost+found"]  # the probe's scratch directory is gone


def test_a_named_driver_that_cannot_run_fails_with_its_reason(make_fs):
    root = os.path.join(make_fs("ext4-nodtype").mountpoint, "store")
    with pytest.raises(Unsupported, match="no d_type"):
        select(root, "overlay2")
    with pytest.raises(Unsupported, match="not a btrfs filesystem"):
        select(root, "btrfs")
