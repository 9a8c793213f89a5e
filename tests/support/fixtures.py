"""pytest fixtures: stores on real filesystems, test images, guaranteed cleanup."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import loopfs, rootfs


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path):
    """Whatever a test mounted below its tmp_path is unmounted, even when it failed."""
    yield
    loopfs.unmount_below(str(tmp_path))


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory):
    work = tmp_path_factory.mktemp("busybox")
    return rootfs.make_rootfs_tar(str(work / "busybox.tar"), str(work))


@pytest.fixture
def store_root(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def make_fs(tmp_path):
    """Factory: make_fs("xfs") -> a mounted LoopFS, removed at teardown."""
    made = []

    def factory(kind: str, size_mb: int = 300) -> loopfs.LoopFS:
        why = loopfs.available(kind)
        if why:
            pytest.skip("cannot make %s here: %s" % (kind, why))
        work = tmp_path / ("fs-%s-%d" % (kind, len(made)))
        work.mkdir()
        fs = loopfs.LoopFS(kind, str(work), size_mb)
        made.append(fs)
        return fs

    yield factory
    for fs in reversed(made):
        fs.close()


def need_program(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip("%s is not installed" % name)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def busybox_store(store_root: str, busybox_tar: str, driver: str = "overlay2",
                  tag: str = "busybox:test") -> str:
    """A store on ``driver`` holding the busybox image as ``tag``: where the build, RUN
    and commit tests start."""
    from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import (
        layer_import)
    from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import (
        storage_driver)
    storage_driver({"data_root": store_root, "driver": driver})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": [tag]})
    return store_root
