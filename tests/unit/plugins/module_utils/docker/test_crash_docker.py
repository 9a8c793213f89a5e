"""kill -9 at every step of a Docker migration (overlay2 -> vfs): before the commit
point (daemon.json) dockerd starts on overlay2 with everything (it is even run there
before resuming); after it, on vfs; either way a re-run finishes and dockerd on vfs
shows everything as before, byte for byte."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys

from tests.support.dockerhost import params
from tests.support.paths import python_env

RUNNER = """
import json, sys
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import (
    storage_driver)
print(json.dumps(storage_driver(json.loads(sys.argv[1]))["migrated"]))
"""
BEFORE_COMMIT = {"docker-migrate.layer-applied", "docker-migrate.layer",
                 "docker-migrate.container-carried", "docker-migrate.container",
                 "docker-migrate.materialized", "docker-migrate.switching",
                 "docker-migrate.metadata"}


def migrate(host, crash_at=None, log=None, skip=0):
    env = python_env()
    env.pop("STRATA_CRASH_AT", None)
    if crash_at:
        env.update(STRATA_CRASH_AT=crash_at, STRATA_CRASH_SKIP=str(skip))
    if log:
        env["STRATA_CRASH_LOG"] = log
    args = json.dumps(params(host, driver="vfs", migrate=True))
    return subprocess.run([sys.executable, "-c", RUNNER, args], env=env, capture_output=True,
                          text=True, check=False)


def points(host, tmp_path):
    """(point, occurrence): every point once, the layer point also at its last."""
    host.restore()
    log = str(tmp_path / "points.log")
    done = migrate(host, log=log)
    assert done.returncode == 0, done.stderr
    seen = collections.Counter(open(log).read().split())
    out = [(name, 0) for name in seen]
    out += [(name, count - 1) for name, count in seen.items()
            if name == "docker-migrate.layer" and count > 1]
    return out


def test_kill_at_every_step_then_resume(docker_host, tmp_path):
    host = docker_host
    todo = points(host, tmp_path)
    names = {name for name, _n in todo}
    assert BEFORE_COMMIT | {"docker-migrate.committed",
                            "docker-migrate.container-driver"} <= names
    for point, skip in todo:
        host.restore()
        killed = migrate(host, crash_at=point, skip=skip)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        driver = json.load(open(host.config))["storage-driver"]
        if point in BEFORE_COMMIT:
            assert driver == "overlay2", point
            host.verify("overlay2")  # everything there; dockerd even ran on it
        else:
            assert driver == "vfs", point
        again = migrate(host)
        assert again.returncode == 0, (point, again.stderr)
        host.verify("vfs")
        assert not os.path.exists(os.path.join(host.root, "strata-migrate")), point
        assert not os.path.exists(os.path.join(host.root, "overlay2")), point


def test_unpinned_host_is_pinned_before_anything_is_written(docker_host):
    """daemon.json without storage-driver: dockerd picks the prior driver itself, and
    refuses to start when two driver trees hold content; the migration pins overlay2 first,
    so a kill half-way still starts on overlay2."""
    host = docker_host
    host.restore()
    config = json.load(open(host.config))
    del config["storage-driver"]
    with open(host.config, "w") as handle:
        json.dump(config, handle)
    killed = migrate(host, crash_at="docker-migrate.container")
    assert killed.returncode == -signal.SIGKILL
    assert json.load(open(host.config))["storage-driver"] == "overlay2"
    assert os.path.isdir(os.path.join(host.root, "vfs", "dir"))
    host.verify("overlay2")
