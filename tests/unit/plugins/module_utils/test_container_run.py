"""The container module's logic (_ops/container.py) on real runc: what the process sees,
where its writes land, stop, failures leaving nothing behind, bind mounts, read-only,
the network namespace.  Every container is removed by the test that made it."""
from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    AlreadyExists, Busy, InvalidInput, NotFound, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mounts_below
from ansible_collections.strata.layers.plugins.module_utils._ops.container import container
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from tests.support import runimage

pytestmark = pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")

CONFIG = {"Cmd": ["sh"], "Env": ["FOO=from-image", "PATH=/bin:/usr/bin"],
          "WorkingDir": "/srv/app", "User": "app", "StopSignal": "SIGUSR1",
          "Labels": {"org.example.team": "storage"}}


@pytest.fixture(scope="module")
def busybox(tmp_path_factory):
    from tests.support import rootfs
    work = tmp_path_factory.mktemp("bb")
    with open(rootfs.make_rootfs_tar(str(work / "bb.tar"), str(work)), "rb") as handle:
        return handle.read()


@pytest.fixture
def store(tmp_path, busybox):
    st = Store(str(tmp_path / "store"))
    with st.write("test", init=False):
        st.initialize("overlay2")
        runimage.make_image(st, busybox, "app:1", CONFIG)
        runimage.make_image(st, busybox, "plain:1", {"Cmd": ["sh"]})
    yield st
    for name in [r.name for r in containers.ContainerDB(st.root).all()]:
        container({"data_root": st.root, "name": name, "state": "absent", "force": True,
                   "stop_timeout": 0})
    assert not mounts_below(st.root)


def run(store, **params):
    params.setdefault("image", "app:1")
    params.setdefault("name", "c1")
    params.update(data_root=store.root, detach=params.get("detach", False))
    return container(params)


def test_the_process_sees_the_images_env_workdir_and_user(store):
    result = run(store, command=["sh", "-c", "id; pwd; env"], env={"BAR": "given"})
    assert result["rc"] == 0, result["stderr"]
    lines = result["stdout"].splitlines()
    assert lines[0].startswith("uid=1000(app) gid=1000(app)") and "2000(extra)" in lines[0]
    assert lines[1] == "/srv/app"
    env = dict(line.partition("=")[::2] for line in lines[2:])
    assert env["FOO"] == "from-image" and env["BAR"] == "given"
    assert env["PATH"] == "/bin:/usr/bin" and env["HOME"] == "/home/app"
    assert env["HOSTNAME"] == result["id"][:12]
    config = json.load(open(os.path.join(result["bundle"], "config.json")))
    assert config["annotations"]["org.example.team"] == "storage"
    assert config["annotations"]["org.opencontainers.image.stopSignal"] == "SIGUSR1"
    assert config["root"]["path"] == os.path.join(store.root, "mounts", result["id"])
    assert result["status"] == "exited" and result["exit_code"] == 0


def test_user_forms_and_defaults(store):
    out = run(store, image="plain:1", command=["sh", "-c", "id; echo $HOME; echo $PATH"],
              user="app:extra")["stdout"].splitlines()
    assert out[0].startswith("uid=1000(app) gid=2000(extra)")
    assert out[1] == "/home/app"
    assert out[2] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    out = run(store, name="c2", image="plain:1", command=["id"], user="4321:99")["stdout"]
    assert out.startswith("uid=4321 gid=99")
    with pytest.raises(InvalidInput, match="no user named 'ghost'"):
        run(store, name="c3", image="plain:1", command=["id"], user="ghost")
    assert containers.ContainerDB(store.root).by_name("c3") is None


def test_writes_land_in_the_writable_layer_only_and_a_silent_run_has_size_0(store):
    quiet = run(store, name="quiet", command=["true"])
    assert quiet["rc"] == 0 and quiet["size"] == 0
    assert change_names(store, quiet["id"]) == []
    busy = run(store, name="busy", user="0", command=["sh", "-c", "echo hello > /tmp/f"])
    assert busy["rc"] == 0 and busy["size"] == len("hello\n")
    upper = store.driver.container_root(busy["id"])
    assert sorted(_walk(upper)) == ["tmp", "tmp/f"]
    assert change_names(store, busy["id"]) == ["tmp", "tmp/f"]
    # the image's layers are untouched, the init layer holds only the runtime's entries
    init = sorted(_walk(store.driver.init_dir(busy["id"])))
    assert "tmp" not in init and "etc/hostname" in init and "sys" in init


def test_a_commit_after_a_run_holds_only_the_process_changes(store):
    from ansible_collections.strata.layers.plugins.module_utils._ops.container_commit import container_commit  # noqa: E501
    result = run(store, user="0", command=["sh", "-c", "mkdir -p /data && echo 1 > /data/one"])
    assert result["rc"] == 0
    committed = container_commit({"data_root": store.root, "name": "c1", "tag": ["out:1"]})
    with store.read():
        layer = store.layers.get(store.images.get(committed["image_id"]).chain[-1])
        names = _layer_names(store, layer.chain_id)
    assert names == ["data/", "data/one"]


def test_stop_honours_the_stop_signal_and_the_timeout(store, tmp_path):
    # a trap on the image's StopSignal (SIGUSR1) ends it with a code of its own
    started = run(store, detach=True, user="0",
                  command=["sh", "-c", "trap 'exit 42' USR1; while :; do sleep 0.1; done"])
    assert started["status"] == "running" and started["pid"]
    again = run(store, detach=True, user="0",
                command=["sh", "-c", "trap 'exit 42' USR1; while :; do sleep 0.1; done"])
    assert again["changed"] is False and again["pid"] == started["pid"]
    stopped = container({"data_root": store.root, "name": "c1", "state": "stopped"})
    assert stopped["changed"] and stopped["status"] == "exited" and stopped["exit_code"] == 42
    assert stopped["finished_at"] and not stopped["mounted"]
    # pid 1 ignores a signal it has no handler for: SIGKILL after stop_timeout
    run(store, name="stubborn", detach=True, interactive=True)
    stopped = container({"data_root": store.root, "name": "stubborn", "state": "stopped",
                         "stop_timeout": 1})
    assert stopped["exit_code"] == 128 + signal.SIGKILL


def test_the_state_survives_and_the_exit_code_is_recorded_by_the_monitor(store):
    started = run(store, detach=True, user="0", command=["sh", "-c", "sleep 0.3; exit 7"])
    assert started["status"] == "running"
    from ansible_collections.strata.layers.plugins.module_utils._runtime import wait_file
    assert wait_file(os.path.join(store.root, "containers", started["id"], "exit.json"), 30)
    with store.read():
        row = containers.container_row(store, containers.ContainerDB(store.root).get(
            started["id"]))
    assert row["status"] == "exited"
    assert not row["mounted"]    # the monitor unmounted what the start mounted, as Docker does
    result = container({"data_root": store.root, "name": "c1", "state": "stopped"})
    assert result["changed"] is False and result["exit_code"] == 7


def test_a_failing_command_returns_its_rc(store):
    result = run(store, command=["sh", "-c", "echo oops >&2; exit 3"])
    assert result["rc"] == 3 and result["stderr"] == "oops\n" and result["exit_code"] == 3


def test_a_missing_command_or_image_fails_clearly_and_leaves_nothing(store):
    before = sorted(os.listdir(os.path.join(store.root, "containers")))
    with pytest.raises(InvalidInput, match="'no-such-tool' not found in the container"):
        run(store, command=["no-such-tool"])
    with pytest.raises(NotFound, match="ghost"):
        run(store, image="ghost:1")
    assert sorted(os.listdir(os.path.join(store.root, "containers"))) == before
    assert not mounts_below(store.root)
    assert os.listdir(os.path.join(store.driver.home, "containers")) == []


def test_bind_mounts_and_read_only(store, tmp_path):
    src = tmp_path / "shared"
    src.mkdir()
    (src / "in").write_text("from host\n")
    result = run(store, user="0", read_only=True,
                 volumes=["%s:/mnt/rw" % src, "%s:/mnt/ro:ro" % src],
                 command=["sh", "-c", "cat /mnt/ro/in; echo out > /mnt/rw/out; "
                          "touch /mnt/ro/x || echo ro-refused; touch /root/x || echo root-ro"])
    assert result["rc"] == 0, result["stderr"]
    assert result["stdout"].splitlines() == ["from host", "ro-refused", "root-ro"]
    assert (src / "out").read_text() == "out\n"
    assert result["size"] == 0
    with pytest.raises(InvalidInput, match="does not exist on the host"):
        run(store, name="c2", volumes=["%s/missing:/mnt" % tmp_path])


def test_network_none_has_only_lo(store):
    result = run(store, command=["cat", "/proc/net/dev"])
    names = [line.split(":")[0].strip() for line in result["stdout"].splitlines()[2:]]
    assert names == ["lo"]


def test_network_host_is_the_hosts(store):
    result = run(store, network="host", command=["cat", "/proc/net/dev"])
    names = sorted(line.split(":")[0].strip() for line in result["stdout"].splitlines()[2:])
    with open("/proc/net/dev") as handle:
        host = sorted(line.split(":")[0].strip() for line in handle.read().splitlines()[2:])
    assert names == host


def test_running_containers_are_refused_where_they_must_be(store):
    run(store, detach=True, interactive=True)
    with pytest.raises(Busy, match="'c1' is running"):
        container({"data_root": store.root, "name": "c1", "state": "absent"})
    from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
    with pytest.raises(Busy, match="c1 is running"):
        container_layer({"data_root": store.root, "name": "c1", "state": "absent"})
    from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
    with pytest.raises(Busy, match="c1 is running"):
        storage_driver({"data_root": store.root, "driver": "vfs", "migrate": True})
    with pytest.raises(AlreadyExists, match="another args"):
        run(store, detach=True, command=["true"])
    removed = container({"data_root": store.root, "name": "c1", "state": "absent",
                         "force": True, "stop_timeout": 0})
    assert removed["changed"] and containers.ContainerDB(store.root).by_name("c1") is None


def test_check_mode_changes_nothing(store):
    planned = container({"data_root": store.root, "name": "c1", "image": "app:1"},
                        check_mode=True)
    assert planned["changed"] and containers.ContainerDB(store.root).by_name("c1") is None


def test_a_missing_runtime_is_named(store, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    from ansible_collections.strata.layers.plugins.module_utils import _runtime
    monkeypatch.setattr(_runtime.os, "access", lambda *a: False)
    with pytest.raises(Unsupported, match="install the crun package"):
        run(store, runtime="crun")


def change_names(store, cid):
    import io
    import tarfile
    with store.read():
        record = containers.ContainerDB(store.root).get(cid)
        chain = store.images.get(record.image_id).chain
        data = b"".join(containers.changes(store, record, chain).tar())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted(m.name for m in tar.getmembers())


def _walk(root):
    out = []
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(here, name), root))
    return out


def _layer_names(store, chain):
    from ansible_collections.strata.layers.plugins.module_utils import _tarsplit as tarsplit
    import io
    import tarfile
    data = b"".join(tarsplit.chunks(store.layers.split_path(chain),
                                    store.driver.layer_files(chain)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted(m.name + ("/" if m.isdir() else "") for m in tar.getmembers())


def test_a_driver_switch_carries_the_init_layer(store):
    from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
    ran = run(store, user="0", command=["sh", "-c", "echo kept > /tmp/kept"])
    assert ran["rc"] == 0
    moved = storage_driver({"data_root": store.root, "driver": "vfs", "migrate": True})
    assert moved["driver"] == "vfs" and moved["migrated"]["containers"] == 1
    st = Store(store.root)
    assert st.driver.has_init(ran["id"])
    assert change_names(st, ran["id"]) == ["tmp", "tmp/kept"]
    again = container({"data_root": store.root, "name": "c1", "detach": False})
    assert again["rc"] == 0 and again["size"] == len("kept\n")
    assert change_names(st, ran["id"]) == ["tmp", "tmp/kept"]


def test_a_container_without_an_init_layer_still_runs(store):
    from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
    made = container_layer({"data_root": store.root, "name": "old", "image": "plain:1"})
    assert not store.driver.has_init(made["id"])
    result = container({"data_root": store.root, "name": "old", "detach": False,
                        "command": ["sh", "-c", "echo ran"]})
    assert result["rc"] == 0 and result["stdout"] == "ran\n"
    # as before init layers: the runtime's mount points land in its writable layer
    assert "etc/hostname" in change_names(store, made["id"])


def test_auto_remove_is_docker_run_rm(store):
    result = run(store, command=["sh", "-c", "echo bye; exit 4"], auto_remove=True)
    assert result["rc"] == 4 and result["stdout"] == "bye\n" and result["status"] == "removed"
    assert containers.ContainerDB(store.root).by_name("c1") is None
    assert not mounts_below(store.root)
    with pytest.raises(InvalidInput, match="auto_remove needs"):
        run(store, detach=True, auto_remove=True)


def test_crun_runs_or_fails_clearly_leaving_nothing(store):
    """crun refuses a host whose cgroup2 mount has controllers next to cgroup v1 ones
    ("hybrid mode", as this project's machines are): then the failure names crun and
    the store is as it was."""
    if shutil.which("crun") is None:
        pytest.skip("crun is not installed")
    from ansible_collections.strata.layers.plugins.module_utils._runtime import RuntimeFailed
    try:
        result = run(store, runtime="crun", detach=True, interactive=True)
    except RuntimeFailed as exc:
        assert "crun could not start the container" in str(exc)
        assert containers.ContainerDB(store.root).by_name("c1") is None
        assert not mounts_below(store.root)
        return
    assert result["status"] == "running"


def test_a_running_containers_image_and_mount_are_kept(store):
    from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
    from ansible_collections.strata.layers.plugins.module_utils._ops.image import image
    run(store, detach=True, interactive=True)
    with pytest.raises(Busy, match="c1 is running"):
        image({"data_root": store.root, "name": "app:1", "state": "absent", "force": True})
    with pytest.raises(Busy, match="c1 is running"):
        container_layer({"data_root": store.root, "name": "c1", "state": "unmounted"})


def _ppid(pid):
    with open("/proc/%d/stat" % pid, "rb") as handle:
        data = handle.read()
    return int(data[data.rindex(b")") + 2:].split()[1])


def test_the_run_is_over_only_when_its_monitor_has_recorded_it(store):
    """Until the monitor has unmounted and written exit.json the container counts as
    running: a start in between would run on the mount the monitor is about to take
    away, and its exit.json would end the new run."""
    started = run(store, detach=True, user="0", command=["sleep", "1000"])
    state = json.load(open(os.path.join(store.root, "containers", started["id"], "state.json")))
    monitor = state["shim"]
    assert monitor == _ppid(started["pid"]) and state["shim_ticks"]
    os.kill(monitor, signal.SIGSTOP)     # the monitor is slow to notice the exit
    try:
        os.kill(started["pid"], signal.SIGKILL)
        from ansible_collections.strata.layers.plugins.module_utils._runtime import wait_gone
        assert wait_gone(started["pid"], None, 30)
        again = run(store, detach=True, user="0", command=["sleep", "1000"])
        assert again["changed"] is False and again["status"] == "running"
    finally:
        os.kill(monitor, signal.SIGCONT)
    stopped = container({"data_root": store.root, "name": "c1", "state": "stopped"})
    assert stopped["status"] == "exited" and stopped["exit_code"] == 128 + signal.SIGKILL
    assert not stopped["mounted"]


def test_a_killed_monitors_mount_is_unmounted_by_the_next_run(store):
    """kill -9 of the monitor: the container goes on (reparented), its stop records an
    exit without waiting for an exit.json nobody will write, and the mount the first
    start made is unmounted when a later run ends (not left behind for ever)."""
    started = run(store, detach=True, user="0", command=["sleep", "1000"])
    os.kill(_ppid(started["pid"]), signal.SIGKILL)
    assert container({"data_root": store.root, "name": "c1", "state": "started",
                      "detach": True})["status"] == "running"
    stopped = container({"data_root": store.root, "name": "c1", "state": "stopped",
                         "stop_timeout": 0})
    assert stopped["status"] == "exited" and stopped["exit_code"] == 128 + signal.SIGKILL
    assert not stopped["mounted"]
    # the monitor killed and then the container: nobody unmounted it
    started = run(store, detach=True, user="0", command=["sleep", "1000"])
    monitor = _ppid(started["pid"])
    os.kill(monitor, signal.SIGKILL)
    os.kill(started["pid"], signal.SIGKILL)
    from ansible_collections.strata.layers.plugins.module_utils._runtime import wait_gone
    assert wait_gone(started["pid"], None, 30) and wait_gone(monitor, None, 30)
    gone = container({"data_root": store.root, "name": "c1", "state": "stopped"})
    assert gone["status"] == "exited" and gone["exit_code"] == -1 and gone["mounted"]
    rerun = run(store, detach=True, user="0", command=["sleep", "1000"])
    assert rerun["status"] == "running"
    stopped = container({"data_root": store.root, "name": "c1", "state": "stopped",
                         "stop_timeout": 0})
    assert stopped["status"] == "exited" and not stopped["mounted"]


def test_a_module_killed_once_the_container_runs_leaves_a_run_the_next_adopts(store):
    """kill -9 of the module between the runtime's start and the pid's record: the
    container runs on under its monitor; the next module sees it running (not a
    "created" container whose start would kill it and race its monitor's unmount),
    stops it, records its exit and unmounts."""
    from tests.support import ops
    params = {"data_root": store.root, "name": "c1", "image": "app:1", "user": "0",
              "command": ["sleep", "1000"], "detach": True}
    crashed = ops.run("run", params, env=ops.child_env("container-start.launched"))
    assert crashed.returncode == -signal.SIGKILL
    again = container(dict(params))
    assert again["changed"] is False and again["status"] == "running" and again["pid"]
    assert again["mounted"]
    stopped = container({"data_root": store.root, "name": "c1", "state": "stopped",
                         "stop_timeout": 0})
    assert stopped["status"] == "exited" and not stopped["mounted"]
    rerun = container(dict(params))
    assert rerun["changed"] and rerun["status"] == "running"


def test_a_failed_start_keeps_the_previous_run_state(store):
    """The state written ahead of a detached start is taken back when the start fails."""
    first = run(store, command=["true"])
    assert first["status"] == "exited" and first["exit_code"] == 0
    bundle = os.path.join(store.root, "containers", first["id"], "bundle")
    shutil.rmtree(bundle)
    with open(bundle, "w"):   # the bundle directory cannot be made: the start fails
        pass
    try:
        # an OSError from making the bundle: a module run reports it as a message naming
        # the path (_argspec.run, tests/unit/plugins/module_utils/test_argspec.py)
        with pytest.raises(FileExistsError):
            run(store, detach=True, command=["true"])
    finally:
        os.unlink(bundle)
    after = container({"data_root": store.root, "name": "c1", "state": "stopped"})
    assert after["changed"] is False and after["status"] == "exited"
    assert after["exit_code"] == 0 and after["finished_at"] == first["finished_at"]


def test_a_stale_pid_file_never_names_another_process(store):
    """A foreground run whose module was killed leaves the runtime's pid file; once that
    pid is another process's (here a sleep of ours), the container is not running and a
    stop signals nothing."""
    import subprocess
    first = run(store, command=["true"])
    record_dir = os.path.join(store.root, "containers", first["id"])
    other = subprocess.Popen(["sleep", "1000"])
    try:
        with open(os.path.join(record_dir, "bundle", "pid"), "w") as handle:
            handle.write(str(other.pid))
        dead = subprocess.Popen(["true"])
        dead.wait()
        with open(os.path.join(record_dir, "state.json"), "w") as handle:
            json.dump({"status": "running", "monitor": dead.pid, "monitor_ticks": 1,
                       "runtime": "runc", "mounted_for_run": True,
                       "started_at": first["started_at"]}, handle)
        stopped = container({"data_root": store.root, "name": "c1", "state": "stopped"})
        assert stopped["changed"] is False and stopped["status"] == "exited"
        absent = container({"data_root": store.root, "name": "c1", "state": "absent"})
        assert absent["changed"] and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_an_unprivileged_user_may_bind_low_ports_and_ping_as_with_docker(store):
    """Docker 20.10's sysctls for a container with its own network namespace, applied by
    real runc; the host network keeps the host's."""
    read = ["sh", "-c", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start "
            "/proc/sys/net/ipv4/ping_group_range /proc/self/oom_score_adj"]
    result = run(store, command=read)
    assert result["rc"] == 0, result["stderr"]
    lines = result["stdout"].split("\n")
    assert lines[0] == "0" and lines[1].split() == ["0", "2147483647"] and lines[2] == "0"
    config = json.load(open(os.path.join(result["bundle"], "config.json")))
    assert config["process"]["oomScoreAdj"] == 0
    host = run(store, name="h", command=read, network="host")
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as handle:
        assert host["stdout"].split("\n")[0] == handle.read().strip()


def test_a_foreground_run_removed_while_it_runs_reports_its_end(store):
    """state: absent, force: true on a container another module runs in the foreground
    (docker rm -f under a docker run): that module reports the kill and 'removed'
    instead of failing on a container that is no longer there."""
    from tests.support import ops
    params = {"data_root": store.root, "name": "c1", "image": "app:1", "user": "0",
              "command": ["sleep", "1000"], "detach": False}
    proc = ops.start("run", params)
    try:
        _wait_running(store, proc)
        removed = container({"data_root": store.root, "name": "c1", "state": "absent",
                             "force": True, "stop_timeout": 0})
        assert removed["changed"] and removed["status"] == "removed"
        out, _err = proc.communicate(timeout=120)
    finally:
        ops.kill_group(proc) if proc.poll() is None else None
    result = ops.parse(proc, out)
    assert result.get("failed") is not True, result
    assert result["status"] == "removed" and result["rc"] == 128 + signal.SIGKILL


def test_a_foreground_run_is_stopped_from_elsewhere_with_its_stop_signal(store):
    """state: stopped on a container another module runs with detach: false signals it
    (before, its pid was unknown: the stop did nothing and said changed)."""
    from tests.support import ops
    params = {"data_root": store.root, "name": "c1", "image": "app:1", "user": "0",
              "command": ["sh", "-c", "trap 'exit 42' USR1; while :; do sleep 0.1; done"],
              "detach": False}
    proc = ops.start("run", params)
    try:
        _wait_running(store, proc)
        stopped = container({"data_root": store.root, "name": "c1", "state": "stopped"})
        assert stopped["changed"]
        out, _err = proc.communicate(timeout=120)
    finally:
        ops.kill_group(proc) if proc.poll() is None else None
    result = ops.parse(proc, out)
    assert result["rc"] == 42 and result["status"] == "exited" and result["exit_code"] == 42
    assert not result["mounted"]


def _wait_running(store, proc):
    """Until the foreground run in ``proc`` runs (runc wrote its pid)."""
    import time
    while proc.poll() is None:
        with store.read():
            rows = containers.container_facts(store) if store.exists() else []
        if rows and rows[0]["status"] == "running" and os.path.exists(
                os.path.join(store.root, "containers", rows[0]["id"], "bundle", "pid")):
            return
        time.sleep(0.05)
    raise AssertionError("the run ended: %s" % (proc.communicate(),))
