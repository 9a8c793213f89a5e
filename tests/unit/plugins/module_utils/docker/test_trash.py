"""Whited-out directories moved aside and deleted on a worker (trash.Trash)."""
from __future__ import annotations

import os

from ansible_collections.strata.layers.plugins.module_utils._docker import trash


def _layer(root):
    for rel in ("usr/include/sys", "usr/share/doc", "etc"):
        os.makedirs(os.path.join(root, rel))
    for rel in ("usr/include/a.h", "usr/include/sys/b.h", "usr/share/doc/x", "etc/file"):
        with open(os.path.join(root, rel), "w") as handle:
            handle.write(rel)
    os.symlink("usr/share", os.path.join(root, "share"))
    os.utime(root, ns=(1_000_000_000, 2_000_000_000))


def test_directories_go_the_rest_stays_for_the_applier(tmp_path):
    root = str(tmp_path / "layer")
    _layer(root)
    bin_ = trash.Trash()
    try:
        moved = bin_.move(root, [b"usr/include", b"etc/file", b"share/doc", b"missing/x",
                                 b"usr/share/nothing"], "abc")
        assert moved == 1  # a file, a path through a symlink and absent paths stay
        bin_.settle(root)
    finally:
        bin_.close()
    assert sorted(os.listdir(root)) == ["etc", "share", "usr"]  # no trash left
    assert os.listdir(os.path.join(root, "usr")) == ["share"]
    assert os.path.exists(os.path.join(root, "etc/file"))
    assert os.path.exists(os.path.join(root, "usr/share/doc/x"))
    st = os.stat(root)
    assert st.st_mtime_ns == 2_000_000_000  # the trash left no trace on the root


def test_settle_waits_per_root_and_close_without_settle(tmp_path):
    roots = [str(tmp_path / name) for name in ("one", "two")]
    for root in roots:
        _layer(root)
    bin_ = trash.Trash()
    try:
        for index, root in enumerate(roots):
            assert bin_.move(root, [b"usr/include"], str(index)) == 1
        bin_.settle(roots[0])
        assert sorted(os.listdir(roots[0])) == ["etc", "share", "usr"]
    finally:
        bin_.close()  # what a failed run does: the layer is removed whole later
    assert os.listdir(os.path.join(roots[1], trash.PREFIX + "1")) == []
