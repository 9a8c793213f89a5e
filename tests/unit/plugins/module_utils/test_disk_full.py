"""A full disk: the store on a small loop-mounted ext4 (40 MB) is filled by an import,
by a container's writes, and by a build's RUN.  The operation fails with a message that
says what happened and what to do; the store is exactly as before (every path, mode,
owner, content and xattr); and the space comes back (statvfs free space as before,
within a few blocks)."""
from __future__ import annotations

import errno
import os

import pytest

from tests.support import ops
from tests.support.tars import LayerTar, write

SLACK_BLOCKS = 8    # directories that grew a block while staging keep it (ext4 never shrinks them)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def block(path: str) -> int:
    return os.statvfs(path).f_frsize


@pytest.fixture
def small(make_fs, busybox_tar):
    """A store with bb:1 on a 40 MB ext4 filesystem."""
    fs = make_fs("ext4", 40)
    root = os.path.join(fs.mountpoint, "store")
    ops.run_here("migrate", {"data_root": root, "driver": "overlay2"})
    ops.run_here("import", {"data_root": root, "src": busybox_tar, "tag": ["bb:1"]})
    yield root
    ops.unmount_and_remove(root)


def assert_given_back(root: str, free_before: int) -> None:
    assert free_bytes(root) >= free_before - SLACK_BLOCKS * block(root), (
        "%d bytes not given back" % (free_before - free_bytes(root)))


def test_an_import_bigger_than_the_free_space_keeps_nothing(small, tmp_path):
    root = small
    ops.settle(root)            # the first write open's sweep is not the import's
    before, free = ops.snapshot(root), free_bytes(root)
    big = LayerTar().dir("big")
    for part in range(4):       # incompressible: the filesystem cannot cheat
        big.file("big/part%d" % part, os.urandom(free // 4 + (2 << 20)))
    src = write(tmp_path / "big.tar", big.bytes())
    try:
        failed = ops.run("import", {"data_root": root, "src": src, "tag": ["big:1"]})
    finally:
        os.unlink(src)
    assert failed.returncode == 1, failed.stdout + failed.stderr[-2000:]
    answer = ops.parse(failed, failed.stdout)
    assert answer["error"] == "NoSpace"
    assert "no space left" in answer["msg"] and src in answer["msg"]
    assert "free space" in answer["msg"] and "nothing was kept" in answer["msg"]
    assert ops.snapshot(root) == before
    assert_given_back(root, free)
    assert ops.findings(root) == []
    done = ops.run_here("import", {"data_root": root, "src": write(
        tmp_path / "small.tar", LayerTar().file("fits", b"x" * 1000).bytes()), "tag": ["s:1"]})
    assert done["changed"]      # the store still works


def test_a_container_filling_the_disk_gives_it_back_when_removed(small):
    root = small
    ops.settle(root)
    free = free_bytes(root)
    made = ops.run_here("container", {"data_root": root, "name": "filler", "image": "bb:1",
                                      "state": "mounted"})
    with pytest.raises(OSError) as info:
        with open(os.path.join(made["mount_point"], "fill"), "wb") as handle:
            chunk = b"\0" * (1 << 20)
            while True:
                handle.write(chunk)
                handle.flush()
    assert info.value.errno == errno.ENOSPC
    assert free_bytes(root) < 1 << 20
    assert ops.findings(root) == []
    gone = ops.run_here("container", {"data_root": root, "name": "filler", "state": "absent"})
    assert gone["changed"]
    assert_given_back(root, free)
    assert ops.debris(root) == [] and ops.findings(root) == []


@pytest.mark.parametrize("fill", ["the RUN itself", "the step's layer"])
def test_a_build_that_fills_the_disk_leaves_the_store_as_before(small, fill):
    root = small
    ops.settle(root)
    before, free = ops.snapshot(root), free_bytes(root)
    if fill == "the RUN itself":        # the command gets ENOSPC and fails
        run = "cat /dev/zero > /big"
        error = "StepFailed"
    else:                               # the command fits; storing its layer does not
        # (random data: zeros would be stored as a hole in the layer, and fit)
        run = "head -c %d /dev/urandom > /big" % (free * 6 // 10)
        error = "NoSpace"
    failed = ops.run("build", {"data_root": root, "spec": "FROM bb:1\nRUN %s\n" % run,
                               "tag": ["full:1"]})
    assert failed.returncode == 1, failed.stdout + failed.stderr[-2000:]
    answer = ops.parse(failed, failed.stdout)
    assert answer["error"] == error, answer
    if error == "NoSpace":
        assert "no space left" in answer["msg"] and "nothing was kept" in answer["msg"]
    else:
        assert "No space left" in answer["msg"] and "line 2" in answer["msg"]
    assert ops.snapshot(root) == before
    assert_given_back(root, free)
    assert ops.debris(root) == [] and ops.findings(root) == []
