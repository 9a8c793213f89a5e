"""One Docker host built by dockerd itself, shared by the tests of this directory."""
from __future__ import annotations

import pytest

from tests.support import dockerd, dockerhost, loopfs


def pytest_collection_modifyitems(items):
    why = dockerd.available()
    if why:
        for item in items:
            item.add_marker(pytest.mark.skip(reason="no dockerd: %s" % why))


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory):
    """Images and containers made by dockerd on overlay2 (restored by each test)."""
    host = dockerhost.Prepared(str(tmp_path_factory.mktemp("dockerhost"))).build()
    yield host
    host.close()


@pytest.fixture(scope="session")
def docker_host_btrfs(tmp_path_factory):
    """The same host with its data root on a btrfs loop filesystem (all four drivers run)."""
    why = loopfs.available("btrfs")
    if why:
        pytest.skip("no btrfs: %s" % why)
    work = tmp_path_factory.mktemp("dockerhost-btrfs")
    fs = loopfs.LoopFS("btrfs", str(work / "fs"), 600)
    try:
        host = dockerhost.Prepared(str(work), root=fs.mountpoint).build()
        yield host
        host.close()
    finally:
        fs.close()
