"""storage_driver engine: docker, migrate: true against a real dockerd 20.10: images
and containers made by dockerd itself, converted offline, then dockerd restarted on
the new driver shows the same images, containers and diffs, and ``docker save`` is
byte-identical; a stopped container starts and sees its files."""
from __future__ import annotations

import json
import os

from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import (
    storage_driver)
from tests.support.dockerhost import listing, params


def test_overlay2_to_vfs_and_back(docker_host):
    host = docker_host
    host.restore()
    snapshot = listing(host.root)
    config = open(host.config).read()

    preview = storage_driver(params(host, driver="vfs", migrate=True), check_mode=True)
    assert preview["changed"] and preview["driver"] == "vfs"
    assert preview["migrated"]["layers"] == 5 and preview["migrated"]["containers"] == 3
    assert listing(host.root) == snapshot and open(host.config).read() == config

    done = storage_driver(params(host, driver="vfs", migrate=True, keep_previous=True))
    assert done["changed"] and done["previous_driver"] == "overlay2"
    moved = done["migrated"]
    assert (moved["layers"], moved["images"], moved["containers"]) == (5, 6, 3)
    assert moved["bytes"] > 0 and moved["seconds"] >= 0
    assert json.load(open(host.config))["storage-driver"] == "vfs"
    assert os.path.isdir(os.path.join(host.root, "overlay2"))  # kept for a rollback

    again = storage_driver(params(host, driver="vfs", migrate=True))
    assert not again["changed"] and again["migrated"] is None

    host.verify("vfs")

    back = storage_driver(params(host, driver="overlay2", migrate=True))
    assert back["migrated"]["reused_layers"] == 5  # the kept overlay2 layers
    assert back["migrated"]["layers"] == 0 and back["migrated"]["containers"] == 3
    assert not os.path.exists(os.path.join(host.root, "vfs"))
    assert not os.path.exists(os.path.join(host.root, "image", "vfs"))
    host.verify("overlay2")

    host.dockerd.start()
    try:
        assert host.dockerd.docker("start", "-a", "stopped") == "new\nagain\n"
        assert host.dockerd.docker("run", "--rm", "--network", "none", "strata-test:2",
                                   "cat", "/second", "/o/new") == "second\nn\n"
    finally:
        host.dockerd.stop()


def test_vfs_to_overlay2_fresh(docker_host):
    """vfs -> overlay2 without a kept tree: every layer materialised from vfs."""
    host = docker_host
    host.restore()
    storage_driver(params(host, driver="vfs", migrate=True))
    assert not os.path.exists(os.path.join(host.root, "overlay2"))
    done = storage_driver(params(host, driver="overlay2", migrate=True))
    assert done["migrated"]["layers"] == 5 and done["migrated"].get("reused_layers") == 0
    host.verify("overlay2")
