"""Docker's graph-driver trees as _docker.graph reads and writes them."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._docker.graph import Overlay
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt


def test_a_parent_without_its_link_file_is_corrupt_with_the_os_error_as_cause(tmp_path):
    graph = Overlay(str(tmp_path))
    graph.init_home()
    graph.create("a" * 64, None)
    link = os.path.join(graph.layer_dir("a" * 64), "link")
    os.unlink(link)
    with pytest.raises(Corrupt) as info:
        graph.create("b" * 64, "a" * 64)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert info.value.__cause__.filename == link
    assert link in str(info.value)


def test_overlay_whiteouts_are_the_0_0_devices_of_the_diff(tmp_path):
    """What a container layer deletes, read from its diff without a tar: 0/0 character
    devices (other devices, FIFOs, files and symlinks are not whiteouts)."""
    from ansible_collections.strata.layers.plugins.module_utils._docker.graph import Vfs
    graph = Overlay(str(tmp_path))
    graph.init_home()
    graph.create("c" * 64, None)
    diff = graph.files("c" * 64)
    os.makedirs(os.path.join(diff, "usr/share"))
    os.mknod(os.path.join(diff, "usr/include"), 0o600 | 0o020000, os.makedev(0, 0))
    os.mknod(os.path.join(diff, "usr/share/doc"), 0o600 | 0o020000, os.makedev(0, 0))
    os.mknod(os.path.join(diff, "null"), 0o600 | 0o020000, os.makedev(1, 3))
    os.mkfifo(os.path.join(diff, "fifo"))
    os.symlink("usr", os.path.join(diff, "link"))
    with open(os.path.join(diff, "file"), "w") as handle:
        handle.write("x")
    assert graph.whited_out("c" * 64) == [b"usr/include", b"usr/share/doc"]
    assert Vfs(str(tmp_path)).whited_out("c" * 64) == []  # unknown without comparing
