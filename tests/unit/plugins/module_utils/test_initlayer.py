"""Filling an init layer: only what is missing, never through a symlink."""
from __future__ import annotations

import os
import stat

from ansible_collections.strata.layers.plugins.module_utils._initlayer import populate


def test_only_missing_entries_are_made(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("image's own\n")
    made = populate(str(root), ["proc/", "dev/pts/", "etc/hosts", "etc/hostname", "srv/app/"])
    assert made == ["proc/", "dev/pts/", "etc/hostname", "srv/app/"]
    assert (root / "etc" / "hosts").read_text() == "image's own\n"
    assert stat.S_IMODE(os.stat(root / "dev").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "etc" / "hostname").st_mode) == 0o644
    assert populate(str(root), ["proc/", "etc/hostname"]) == []


def test_a_symlink_on_the_way_is_left_to_the_runtime(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(str(outside), root / "etc")
    assert populate(str(root), ["etc/hostname", "proc/"]) == ["proc/"]
    assert os.listdir(outside) == []
