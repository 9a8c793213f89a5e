"""storage_driver engine: docker without a migration: the probe under Docker's names,
the current driver (running daemon, daemon.json, driver trees), daemon.json written
keeping every other key, its mode and owner; refusals that change nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Busy, InvalidInput, NoSpace, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import (
    storage_driver)
from tests.support.dockerhost import listing, params
from tests.support.paths import python_env


class Host:
    """A data root and daemon.json with no daemon: enough for ``params``."""

    def __init__(self, tmp_path):
        self.root = str(tmp_path / "docker")
        self.config = str(tmp_path / "etc" / "daemon.json")


def run(host, check_mode=False, **options):
    return storage_driver(params(host, data_root=host.root, **options), check_mode=check_mode)


def test_fresh_host_gets_the_best_driver(tmp_path):
    host = Host(tmp_path)
    preview = run(host, check_mode=True)
    assert preview["changed"] and not os.path.exists(host.config)
    names = [c["name"] for c in preview["candidates"]]
    assert names[:1] == [preview["driver"]] and {"zfs", "devicemapper", "aufs"} <= set(names)
    assert preview["engine"] == "docker" and preview["migrated"] is None
    assert preview["diff"]["before"] == "" and '"storage-driver"' in preview["diff"]["after"]
    done = run(host)
    assert done["changed"] and done["driver"] == preview["driver"] == "overlay2"
    assert json.load(open(host.config)) == {"storage-driver": "overlay2"}
    assert oct(os.stat(host.config).st_mode & 0o777) == "0o644"
    assert not run(host)["changed"]


def test_daemon_json_keeps_keys_mode_owner_and_indent(tmp_path):
    host = Host(tmp_path)
    os.makedirs(os.path.dirname(host.config))
    original = {"log-driver": "json-file", "log-opts": {"max-size": "10m"},
                "storage-driver": "vfs", "live-restore": True, "registry-mirrors": []}
    with open(host.config, "w") as handle:
        json.dump(original, handle, indent=4)
    os.chmod(host.config, 0o600)
    os.chown(host.config, 1234, 5678)
    before = open(host.config).read()
    preview = run(host, check_mode=True, driver="overlay2")
    assert preview["changed"] and open(host.config).read() == before
    assert preview["diff"]["before"] == before
    done = run(host, driver="overlay2")
    assert done["changed"] and done["previous_driver"] == "vfs"
    after = json.load(open(host.config))
    assert list(after) == list(original)  # order kept, only the driver changed
    assert after == dict(original, **{"storage-driver": "overlay2"})
    assert open(host.config).read().splitlines()[1].startswith("    \"log-driver\"")
    st = os.stat(host.config)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert done["diff"]["after"] == open(host.config).read()
    assert not run(host, driver="overlay2")["changed"]


def test_invalid_json_names_file_and_position(tmp_path):
    host = Host(tmp_path)
    os.makedirs(os.path.dirname(host.config))
    with open(host.config, "w") as handle:
        handle.write('{\n  "log-driver": "json-file",\n  "storage-driver": vfs\n}\n')
    with pytest.raises(InvalidInput) as err:
        run(host, driver="overlay2")
    assert host.config in str(err.value) and "line 3 column 21" in str(err.value)
    assert err.value.details["line"] == 3


def test_current_driver_from_the_trees_present(docker_host):
    host = docker_host
    host.restore()
    with open(host.config) as handle:
        config = json.load(handle)
    del config["storage-driver"]
    with open(host.config, "w") as handle:
        json.dump(config, handle)
    found = storage_driver(params(host), check_mode=True)
    assert found["driver"] == "overlay2" and found["migrated"] is None
    with pytest.raises(InvalidInput) as err:  # content under overlay2: needs migrate
        storage_driver(params(host, driver="vfs"))
    assert "overlay2" in str(err.value) and "vfs" in str(err.value) and "migrate" in str(err.value)


def test_refusals_change_nothing(docker_host):
    host = docker_host
    host.restore()
    snapshot, config = listing(host.root), open(host.config).read()
    for driver, error, words in [("btrfs", Unsupported, "btrfs"),
                                 ("zfs", Unsupported, "cannot read or write"),
                                 ("devicemapper", Unsupported, "devicemapper")]:
        with pytest.raises(error) as err:
            storage_driver(params(host, driver=driver, migrate=True))
        assert words in str(err.value)
    assert listing(host.root) == snapshot and open(host.config).read() == config


def test_running_daemon_is_refused_and_reported(docker_host):
    host = docker_host
    host.restore()
    host.dockerd.start()
    try:
        seen = storage_driver(params(host), check_mode=True)
        assert seen["driver"] == "overlay2"  # from GET /info
        with pytest.raises(Busy) as err:
            storage_driver(params(host, driver="vfs", migrate=True))
        assert "dockerd is running" in str(err.value) and host.dockerd.socket in str(err.value)
        assert json.load(open(host.config))["storage-driver"] == "overlay2"
    finally:
        host.dockerd.stop()
    assert not os.path.exists(os.path.join(host.root, "vfs"))


def test_not_enough_space_is_refused_before_writing(docker_host, tmp_path):
    """The host restored onto a tmpfs just larger than it: vfs's full copies do not fit."""
    host = docker_host
    host.restore()
    used = int(subprocess.run(["du", "-sb", host.root], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % (used + (4 << 20)), "tmpfs",
                    host.root], check=True)
    try:
        host.restore()
        snapshot, config = listing(host.root), open(host.config).read()
        with pytest.raises(NoSpace) as err:
            storage_driver(params(host, driver="vfs", migrate=True))
        assert "MiB" in str(err.value) and "nothing was changed" in str(err.value)
        assert listing(host.root) == snapshot and open(host.config).read() == config
    finally:
        subprocess.run(["umount", host.root], check=True)


def test_a_source_it_cannot_read_is_named(tmp_path):
    host = Host(tmp_path)
    layer = os.path.join(host.root, "image", "devicemapper", "layerdb", "sha256", "a" * 64)
    os.makedirs(layer)
    os.makedirs(os.path.dirname(host.config))
    with open(host.config, "w") as handle:
        json.dump({"storage-driver": "devicemapper"}, handle)
    with pytest.raises(Unsupported) as err:
        run(host, driver="vfs", migrate=True)
    assert "devicemapper" in str(err.value) and "cannot read" in str(err.value)
    assert json.load(open(host.config)) == {"storage-driver": "devicemapper"}


def test_a_failed_conversion_is_removed_by_a_run_for_the_source(docker_host):
    """A conversion killed half-way, then the rollback asks for the source driver: the
    half-made vfs tree and the staged records go, daemon.json stays on overlay2."""
    host = docker_host
    host.restore()
    code = ("import json,sys\nfrom ansible_collections.strata.layers.plugins.module_utils."
            "_ops.storage_driver import storage_driver\nstorage_driver(json.loads(sys.argv[1]))")
    env = dict(python_env(), STRATA_CRASH_AT="docker-migrate.container")
    done = subprocess.run([sys.executable, "-c", code,
                           json.dumps(params(host, driver="vfs", migrate=True))],
                          env=env, capture_output=True, check=False)
    assert done.returncode == -9, done.stderr
    assert os.path.isdir(os.path.join(host.root, "strata-migrate"))
    back = storage_driver(params(host, driver="overlay2", migrate=True))
    assert back["changed"] and back["migrated"] is None
    assert not os.path.exists(os.path.join(host.root, "strata-migrate"))
    assert os.listdir(os.path.join(host.root, "vfs", "dir")) == []
    assert json.load(open(host.config))["storage-driver"] == "overlay2"


def test_live_restore_containers_block_unless_stopped(docker_host):
    """dockerd with live-restore leaves a container running when it stops: the migration
    refuses, naming it; with stop_containers it stops it (by pid), unmounts its root and
    migrates; dockerd on vfs then shows it exited, everything else as before."""
    host = docker_host
    host.restore()
    host.dockerd.write_config(storage_driver="overlay2", live_restore=True)
    host.dockerd.start()
    try:
        host.dockerd.docker("start", "running")
        pid = int(host.dockerd.docker("inspect", "-f", "{{.State.Pid}}", "running"))
        host.dockerd.stop_daemon_only()
        assert os.path.exists("/proc/%d" % pid)
        with pytest.raises(Busy) as err:
            storage_driver(params(host, driver="vfs", migrate=True))
        assert "running" in str(err.value) and "stop_containers" in str(err.value)
        done = storage_driver(params(host, driver="vfs", migrate=True, stop_containers=True))
        assert done["stopped_containers"] == ["running"]
        assert not os.path.exists("/proc/%d" % pid)
        host.dockerd.start()
        assert host.dockerd.driver() == "vfs"
        assert "Exited" in host.dockerd.docker("ps", "-a", "--filter", "name=running",
                                               "--format", "{{.Status}}")
        assert host.dockerd.docker("start", "-a", "stopped") == "new\nagain\n"
    finally:
        host.dockerd.stop()


def test_runs_against_one_data_root_take_turns(tmp_path):
    """A run that changes the data root waits for another one (flock on the directory
    itself: nothing is added to dockerd's tree) and gives up naming it."""
    import fcntl
    from ansible_collections.strata.layers.plugins.module_utils._errors import Locked
    host = Host(tmp_path)
    os.makedirs(host.root)
    fd = os.open(host.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert run(host, check_mode=True)["changed"]  # check mode only reads
        with pytest.raises(Locked) as err:
            run(host, lock_timeout=0.3)
        assert host.root in str(err.value)
    finally:
        os.close(fd)
    assert run(host)["changed"] and os.listdir(host.root) == []


def test_options_of_the_previous_driver_are_dropped(tmp_path):
    host = Host(tmp_path)
    os.makedirs(os.path.dirname(host.config))
    with open(host.config, "w") as handle:
        json.dump({"storage-driver": "overlay2", "storage-opts": [
            "overlay2.override_kernel_check=true", "dm.basesize=20G"]}, handle)
    done = run(host, driver="vfs")
    assert done["changed"] and "storage-opts" in done["diff"]["before"]
    assert json.load(open(host.config)) == {"storage-driver": "vfs"}
    assert not run(host, driver="vfs")["changed"]
