"""One Docker host built by dockerd itself, shared by the tests of this directory."""
from __future__ import annotations

import pytest

from tests.support import dockerd, dockerhost


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

