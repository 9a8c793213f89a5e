"""The OCI runtime spec made from an image config by the image-spec conversion rules,
with Docker's defaults."""
from __future__ import annotations

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _runtime_spec as spec
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._passwd import ExecUser

CID = "ab" * 32
IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["--serve"], "Env": ["A=1", "PATH=/opt/bin"],
         "WorkingDir": "/srv", "User": "app", "StopSignal": "SIGQUIT",
         "Labels": {"team": "storage"}, "ExposedPorts": {"80/tcp": {}}}


def config(**params):
    return spec.run_config(IMAGE, params, CID)


def test_args_are_entrypoint_then_cmd():
    assert config()["args"] == ["/entry", "--serve"]
    assert config(command=["--other"])["args"] == ["/entry", "--other"]
    # docker run --entrypoint drops the image's Cmd
    assert config(entrypoint=["/bin/sh"])["args"] == ["/bin/sh"]
    assert config(entrypoint=["/bin/sh"], command=["-c", "x"])["args"] == ["/bin/sh", "-c", "x"]
    with pytest.raises(InvalidInput, match="nothing to run"):
        spec.run_config({}, {}, CID)


def test_env_merges_by_name_and_gets_docker_defaults():
    run = config(env={"A": "2", "B": None})
    assert run["env"] == ["A=2", "PATH=/opt/bin", "B="]
    env = spec.environment(run, ExecUser(uid=1, home="/home/app"))
    assert env == ["HOSTNAME=" + CID[:12], "A=2", "PATH=/opt/bin", "B=", "HOME=/home/app"]
    bare = spec.environment(spec.run_config({"Cmd": ["x"]}, {}, CID), ExecUser())
    assert bare[0] == "PATH=" + spec.DEFAULT_PATH and bare[-1] == "HOME=/"
    with pytest.raises(InvalidInput, match="env name"):
        config(env={"A=B": "x"})


def test_annotations_carry_labels_stop_signal_and_ports():
    assert config()["annotations"] == {"team": "storage",
                                       "org.opencontainers.image.stopSignal": "SIGQUIT",
                                       "org.opencontainers.image.exposedPorts": "80/tcp"}
    assert spec.parse_signal("SIGQUIT") == 3 == spec.parse_signal("QUIT") == spec.parse_signal("3")
    assert spec.parse_signal("RTMIN+3") == spec.parse_signal("SIGRTMIN") + 3
    for bad in ("SIGNOPE", "RTMIN+999", "0"):
        with pytest.raises(InvalidInput, match="not a signal"):
            spec.parse_signal(bad)


def test_the_spec_has_dockers_defaults():
    run = config(volumes=[], read_only=True)
    out = spec.runtime_spec(run, "/rootfs", "/bundle", ExecUser(uid=5, gid=6,
                                                                additional_gids=[7]), CID)
    assert out["root"] == {"path": "/rootfs", "readonly": True}
    assert out["process"]["user"] == {"uid": 5, "gid": 6, "additionalGids": [7]}
    assert out["process"]["cwd"] == "/srv"
    assert out["process"]["capabilities"]["bounding"] == spec.CAPABILITIES
    assert "CAP_SYS_ADMIN" not in spec.CAPABILITIES
    namespaces = [n["type"] for n in out["linux"]["namespaces"]]
    assert namespaces == ["pid", "ipc", "uts", "mount", "network"]
    dests = [m["destination"] for m in out["mounts"]]
    for needed in ("/proc", "/dev", "/dev/pts", "/sys", "/dev/mqueue", "/dev/shm",
                   "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"):
        assert needed in dests
    assert "ro" in next(m for m in out["mounts"] if m["destination"] == "/sys")["options"]
    assert "/proc/kcore" in out["linux"]["maskedPaths"]
    assert "/proc/sys" in out["linux"]["readonlyPaths"]
    limit = out["process"]["rlimits"][0]
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert limit["hard"] <= (hard if hard != resource.RLIM_INFINITY else spec.NOFILE)
    host = spec.runtime_spec(config(network="host"), "/r", "/b", ExecUser(), CID)
    assert "network" not in [n["type"] for n in host["linux"]["namespaces"]]


def test_volumes_are_checked_and_never_create_their_source(tmp_path):
    volume = spec.parse_volume("%s:/data:ro" % tmp_path)
    assert (volume.source, volume.destination, volume.read_only) == (str(tmp_path), "/data", True)
    for bad, message in (("relative:/x", "absolute"), ("%s:/" % tmp_path, "cannot be /"),
                         ("%s:/x:rx" % tmp_path, "not ro or rw"), ("/a", "SRC:DST"),
                         ("%s/none:/x" % tmp_path, "does not exist")):
        with pytest.raises(InvalidInput, match=message):
            spec.parse_volume(bad)
    assert not (tmp_path / "none").exists()


def test_init_entries_cover_the_workdir_and_volume_destinations(tmp_path):
    (tmp_path / "f").write_text("x")
    run = config(volumes=["%s:/mnt/dir" % tmp_path, "%s/f:/etc/app.conf" % tmp_path])
    entries = spec.init_entries(run)
    assert "srv/" in entries and "mnt/dir/" in entries and "etc/app.conf" in entries
    assert "proc/" in entries and "etc/hostname" in entries


def test_bad_options_are_named():
    for params, message in (({"network": "bridge"}, "network"), ({"workdir": "rel"}, "workdir"),
                            ({"hostname": "a/b"}, "hostname"), ({"command": "ls"}, "command")):
        with pytest.raises(InvalidInput, match=message):
            config(**params)


def test_a_hostname_cannot_write_lines_into_etc_hosts():
    for bad in ("web\n10.0.0.1 bank.example", "a b", "-x", ".x", "x" * 65, "tab\there", ""):
        if not bad:
            assert config(hostname=bad)["hostname"] == CID[:12]   # empty: the default
            continue
        with pytest.raises(InvalidInput, match="hostname"):
            config(hostname=bad)
    assert spec.bundle_files(config(hostname="web-1.example_x"))["hosts"].endswith(
        b"127.0.1.1\tweb-1.example_x\n")


def test_the_cgroup_namespace_is_dockers_default():
    """docker 20.10: --cgroupns private on a cgroup v2 host, host on v1."""
    def kinds(unified):
        out = spec.runtime_spec(config(), "/r", "/b", ExecUser(), CID, unified=unified)
        return [n["type"] for n in out["linux"]["namespaces"]]
    assert "cgroup" in kinds(True) and "cgroup" not in kinds(False)
    assert ("cgroup" in kinds(None)) == spec.cgroup_v2()
