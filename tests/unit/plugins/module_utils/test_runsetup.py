"""RUN --mount, network and environment, built for real (issue 17 items 1-3)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.image_build import image_build
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput)
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.store_prune import store_prune
from ansible_collections.strata.layers.plugins.module_utils._runsetup import cache_path
from ansible_collections.strata.layers.plugins.module_utils._sandbox import StepFailed
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver

from tests.support import ops
from tests.unit.plugins.module_utils.test_builder import files_of, last_layer_names

SECRET = "s3cr3t-value-%s" % os.urandom(6).hex()


@pytest.fixture(params=["overlay2", "vfs"])
def root(request, store_root, busybox_tar):
    storage_driver({"data_root": store_root, "driver": request.param})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["busybox:test"]})
    return store_root


def build(root, **kw):
    return image_build(dict({"data_root": root}, **kw))


@contextlib.contextmanager
def http_server(directory):
    """A real HTTP server on 127.0.0.1 (a free port), stopped at the end."""
    def handler(*a, **k):
        return http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def store_files_containing(root, needle):
    """Every file of the store whose bytes hold ``needle`` (grep -r, binary included)."""
    proc = subprocess.run(["grep", "-rlaF", "--no-messages", needle, root],
                          capture_output=True, text=True, check=False)
    return proc.stdout.split()


def snapshot(root):
    found = set()
    for base, dirs, names in os.walk(root):
        for name in dirs + names:
            found.add(os.path.relpath(os.path.join(base, name), root))
    return found


def test_run_fetches_a_file_from_a_server_on_127_0_0_1(root, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / "hello.txt").write_text("from the host's network\n")
    with http_server(served) as url:
        out = build(root, tag=["net:1"], spec="FROM busybox:test\n"
                    "RUN busybox wget -q -O /fetched.txt %s/hello.txt\n" % url)
        view = files_of(root, "net:1", tmp_path)
        assert view["fetched.txt"] == b"from the host's network\n"
        # the network is not part of the cache key: none now hits the same step
        again = build(root, tag=["net:1"], network="none", spec="FROM busybox:test\n"
                      "RUN busybox wget -q -O /fetched.txt %s/hello.txt\n" % url)
        assert again["image_id"] == out["image_id"] and not again["changed"]
        with pytest.raises(StepFailed, match="line 2"):
            build(root, spec="FROM busybox:test\nRUN --network=none busybox wget -q -O /x "
                  "%s/hello.txt\n" % url)
    assert "etc/hosts" not in last_layer_names(root, "net:1", tmp_path)


def test_environment_is_dockers(root, tmp_path):
    spec = ("FROM busybox:test\nRUN id > /id && echo \"$HOME $HOSTNAME $PATH\" > /env && "
            "hostname > /hostname\nUSER nobody\nRUN echo \"$HOME\" > /tmp/nobody\n")
    build(root, spec=spec, tag=["env:1"])
    view = files_of(root, "env:1", tmp_path)
    assert view["id"] == b"uid=0(root) gid=0(root) groups=0(root)\n"
    home, hostname, path = view["env"].decode().split()
    assert home == "/root" and hostname == view["hostname"].decode().strip()
    assert path == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert view["tmp/nobody"] == b"/\n"


def test_cache_mount_survives_into_the_next_build_and_never_into_a_layer(root, tmp_path):
    spec = ("FROM busybox:test\n"
            "RUN --mount=type=cache,target=/var/cache/pkg,id=pkgs "
            "%secho x >> /var/cache/pkg/runs && cat /var/cache/pkg/runs | wc -l > /count\n")
    first = build(root, spec=spec % "", tag=["c:1"])
    assert files_of(root, "c:1", tmp_path)["count"].strip() == b"1"
    # a different step (the id is the same) sees what the first one left
    build(root, spec=spec % "true && ", tag=["c:2"])
    assert files_of(root, "c:2", tmp_path)["count"].strip() == b"2"
    for tag in ("c:1", "c:2"):
        names = last_layer_names(root, tag, tmp_path)
        assert not any("cache" in n or "runs" in n for n in names), names
    assert first["history"][-1]["created_by"].startswith("/bin/sh -c echo x")
    # store_prune keeps it unless asked
    assert store_prune({"data_root": root})["removed"].get("build_cache", []) == []
    out = store_prune({"data_root": root, "build_cache": True})
    assert len(out["removed"]["build_cache"]) == 1 and out["changed"]
    build(root, spec=spec % "true; ", tag=["c:3"])
    assert files_of(root, "c:3", tmp_path)["count"].strip() == b"1"


def test_cache_mount_owner_and_sharing(root, tmp_path):
    spec = ("FROM busybox:test\nUSER nobody\n"
            "RUN --mount=type=cache,target=/c,uid=65534,gid=65534,mode=0700,sharing=locked "
            "echo ok > /c/f && stat -c '%u %g %a' /c > /tmp/st\n")
    build(root, spec=spec, tag=["o:1"])
    assert files_of(root, "o:1", tmp_path)["tmp/st"] == b"65534 65534 700\n"


def test_private_sharing_takes_a_fresh_instance_while_the_cache_is_in_use(root, tmp_path):
    spec = ("FROM busybox:test\nRUN --mount=type=cache,target=/c,id=p,sharing=private "
            "%s(ls /c > /seen; echo here > /c/mark)\n")
    build(root, spec=spec % "", tag=["p:1"])
    assert files_of(root, "p:1", tmp_path)["seen"] == b""
    home = cache_path(root, "p")
    with open(os.path.join(home, "lock")) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # another build is using it
        build(root, spec=spec % "true; ", tag=["p:2"])
    assert files_of(root, "p:2", tmp_path)["seen"] == b""   # not the busy one
    assert sorted(os.listdir(home)) == ["data", "lock"]     # the private one is gone
    build(root, spec=spec % "true && ", tag=["p:3"])
    assert files_of(root, "p:3", tmp_path)["seen"] == b"mark\n"


def test_secret_is_seen_by_the_step_and_nowhere_in_the_store(root, tmp_path, monkeypatch):
    src = tmp_path / "token"
    src.write_text(SECRET)
    monkeypatch.setenv("STRATA_TEST_TOKEN", SECRET + "-env")
    spec = ("FROM busybox:test\n"
            "RUN --mount=type=secret,id=token --mount=type=secret,id=tok2,env=TOKEN2 "
            "busybox md5sum /run/secrets/token > /sums && echo -n \"$TOKEN2\" | busybox md5sum "
            ">> /sums && stat -c '%a %u' /run/secrets/token > /mode && echo done > /ok\n")
    out = build(root, spec=spec, tag=["s:1"], secrets={
        "token": {"src": str(src)}, "tok2": {"env": "STRATA_TEST_TOKEN"}})
    view = files_of(root, "s:1", tmp_path)
    assert view["ok"] == b"done\n" and view["mode"] == b"400 0\n"
    sums = [line.split()[0] for line in view["sums"].decode().splitlines()]
    assert sums == [hashlib.md5(SECRET.encode()).hexdigest(),
                    hashlib.md5((SECRET + "-env").encode()).hexdigest()]
    assert "run/secrets/token" not in view and "run" not in view
    # the history names neither the value nor ... the RUN line has no secret in it
    assert all(SECRET not in h["created_by"] for h in out["history"])
    assert store_files_containing(root, SECRET) == []
    # the secret's value is not in the cache key: another value, the same step
    src.write_text(SECRET + "-rotated")
    again = build(root, spec=spec, tag=["s:1"], secrets={
        "token": {"src": str(src)}, "tok2": {"env": "STRATA_TEST_TOKEN"}})
    assert again["image_id"] == out["image_id"] and not again["changed"]


def test_bind_mounts_context_stage_and_tmpfs(root, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "src" / "a.txt").write_text("A\n")
    spec = ("FROM busybox:test AS tools\nRUN echo tool > /tool.txt\n"
            "FROM busybox:test\n"
            "RUN --mount=type=bind,source=src,target=/src "
            "--mount=type=bind,from=tools,source=/tool.txt,target=/mnt/tool.txt "
            "--mount=type=bind,from=busybox:test,source=/etc,target=/base-etc "
            "--mount=type=tmpfs,target=/scratch "
            "cat /src/a.txt /mnt/tool.txt > /out && echo t > /scratch/t && "
            "test -f /base-etc/passwd && "
            "(echo no > /src/new 2>/dev/null && echo writable || echo ro) >> /out\n"
            "RUN --mount=type=bind,source=src,target=/src,rw echo w > /src/new && "
            "cat /src/new >> /out\n")
    build(root, context=str(ctx), spec=spec, tag=["b:1"])
    view = files_of(root, "b:1", tmp_path)
    assert view["out"] == b"A\ntool\nro\nw\n"
    assert "src" not in view and "scratch" not in view and "mnt" not in view
    assert "base-etc" not in view
    assert not (ctx / "src" / "new").exists()      # rw writes are thrown away
    # the bound content is part of the cache key
    (ctx / "src" / "a.txt").write_text("B\n")
    out = build(root, context=str(ctx), spec=spec, tag=["b:1"])
    assert files_of(root, "b:1", tmp_path)["out"].startswith(b"B\n")
    assert [h["cached"] for h in out["history"]][-2:] == [False, False]


def test_bind_from_the_context_sees_what_dockerignore_keeps(root, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src" / "secret").mkdir(parents=True)
    (ctx / "src" / "a.txt").write_text("A\n")
    (ctx / "src" / "secret" / "key").write_text("k\n")
    (ctx / ".dockerignore").write_text("src/secret\n")
    spec = ("FROM busybox:test\nRUN --mount=type=bind,target=/ctx "
            "(cd /ctx && find . | sort) > /seen\n")
    out = build(root, context=str(ctx), spec=spec, tag=["i:1"])
    seen = files_of(root, "i:1", tmp_path)["seen"].decode().split()
    assert "./src/a.txt" in seen and not any("secret" in p for p in seen)
    # an ignored file changing does not invalidate the step
    (ctx / "src" / "secret" / "key").write_text("changed\n")
    again = build(root, context=str(ctx), spec=spec, tag=["i:1"])
    assert again["image_id"] == out["image_id"] and not again["changed"]


@pytest.mark.parametrize("spec,message", [
    ("RUN --mount=type=volume,target=/x true", "type=volume is not a mount type"),
    ("RUN --mount=type=cache,target=/x,colour=blue true", "does not take 'colour'"),
    ("RUN --mount=type=cache true", "needs target=PATH"),
    ("RUN --mount=type=cache,target=/x,sharing=sometimes true", "sharing=sometimes"),
    ("RUN --mount=type=cache,target=/x,uid=4294967296 true", "out of range"),
    ("RUN --network=bridge true", "expecting default, none or host"),
])
def test_bad_mounts_fail_with_the_line_before_anything_is_built(root, spec, message):
    before = snapshot(root)
    with pytest.raises(InvalidInput, match=message) as info:
        build(root, spec="FROM busybox:test\nRUN echo first > /f\n" + spec + "\n")
    assert "line 3" in str(info.value)
    assert snapshot(root) == before


def test_secret_without_a_source_fails_with_the_line_and_leaves_the_store(root):
    before = snapshot(root)
    with pytest.raises(InvalidInput, match="line 2.*no secret 'nope'"):
        build(root, spec="FROM busybox:test\nRUN --mount=type=secret,id=nope true\n")
    assert snapshot(root) == before
    out = build(root, spec="FROM busybox:test\n"
                "RUN --mount=type=secret,id=nope,required=false test ! -e /run/secrets/nope\n")
    assert out["changed"]


def test_output_is_bounded_in_memory_and_whole_in_the_log(root):
    before = snapshot(root)
    with pytest.raises(StepFailed, match="line 2.*exit code 3") as info:
        build(root, spec="FROM busybox:test\nRUN yes | head -c 3000000; exit 3\n")
    assert len(info.value.details["output"]) < 300 << 10
    log = info.value.details["log"]
    assert os.path.getsize(log) == 3000000 and not log.startswith(root)
    assert log in str(info.value) and os.stat(log).st_mode & 0o077 == 0
    os.unlink(log)
    assert snapshot(root) == before     # a failed build leaves the store as it was
    # output the message holds whole leaves no file
    with pytest.raises(StepFailed, match="exit code 4") as info:
        build(root, spec="FROM busybox:test\nRUN echo short; exit 4\n")
    assert info.value.details["log"] is None and "short" in str(info.value)


def test_step_timeout_kills_the_step_and_all_it_started(root):
    number = 876000 + os.getpid()
    before = snapshot(root)
    with pytest.raises(StepFailed, match="line 2.*did not finish within 1.0s"):
        build(root, step_timeout=1, spec="FROM busybox:test\n"
              "RUN sleep $((%d + 1)) & exec sleep $((%d + 1))\n" % (number, number))
    _wait(lambda: not _step_pids("^sleep %d$" % (number + 1)), "the step's processes to die")
    assert snapshot(root) == before


def test_malformed_passwd_and_out_of_range_uid_are_clear_errors(root):
    with pytest.raises(InvalidInput, match="line 3.*out of range"):
        build(root, spec="FROM busybox:test\nUSER 4294967296\nRUN true\n")
    spec = ("FROM busybox:test\nRUN echo 'x:x:99999999999:0::/:/bin/sh' >> /etc/passwd && "
            "echo 'garbage line' >> /etc/passwd\nUSER x\nRUN true\n")
    with pytest.raises(InvalidInput, match="/etc/passwd line 3.*out of range"):
        build(root, spec=spec)


def test_no_user_namespaces_unless_asked(root, tmp_path):
    spec = ("FROM busybox:test\n"
            "RUN (busybox unshare -U true && echo made || echo refused) > /userns; "
            "(busybox unshare -m true && echo made || echo refused) > /mountns; "
            "grep Seccomp: /proc/self/status > /seccomp; "
            "busybox readlink /proc/self/ns/user > /ns\n")
    build(root, spec=spec, tag=["u:1"])
    view = files_of(root, "u:1", tmp_path)
    assert view["userns"] == b"refused\n" and view["mountns"] == b"refused\n"
    assert view["ns"].strip() == os.readlink("/proc/self/ns/user").encode()
    assert view["seccomp"].split() == [b"Seccomp:", b"2"]     # filter mode
    build(root, spec=spec, tag=["u:2"], allow_user_namespaces=True, no_cache=True)
    assert files_of(root, "u:2", tmp_path)["userns"] == b"made\n"


def _step_pids(marker):
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True,
                           check=False).stdout
    return [int(p) for p in found.split()]


def _wait(condition, what, bound=120):
    """Poll ``condition`` (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("still waiting for " + what)
        time.sleep(0.05)


def test_a_killed_module_leaves_no_step_process_and_the_next_open_no_mount(root, tmp_path):
    number = 987000 + os.getpid()
    marker = "^sleep %d$" % (number + 1)   # only the step's sleep: the spec holds no such text
    cache = "--mount=type=cache,target=/c --mount=type=tmpfs,target=/t"
    proc = ops.start("build", {"data_root": root, "spec": "FROM busybox:test\nRUN %s "
                               "echo started && exec sleep $((%d + 1))\n" % (cache, number)},
                     env=ops.child_env(extra={"TMPDIR": str(tmp_path)}))   # its log goes there
    try:
        _wait(lambda: _step_pids(marker), "the step to start")
        os.kill(proc.pid, signal.SIGKILL)       # the module only, not its process group
        proc.communicate()
        _wait(lambda: not _step_pids(marker), "the step to die with the module")
    finally:
        ops.kill_group(proc)
    ops.settle(root)
    with open("/proc/self/mounts") as handle:
        assert [line for line in handle if root in line] == []
    assert ops.findings(root) == []


def test_ssh_mount_gives_the_agent_socket(root, tmp_path):
    agent = shutil.which("ssh-agent")
    if agent is None:
        pytest.skip("ssh-agent is not installed")
    sock = str(tmp_path / "agent.sock")
    proc = subprocess.Popen([agent, "-D", "-a", sock], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: os.path.exists(sock), "ssh-agent's socket")
        spec = ("FROM busybox:test\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && "
                "echo \"$SSH_AUTH_SOCK\" > /sock\n")
        build(root, spec=spec, tag=["ssh:1"], ssh=sock)
        view = files_of(root, "ssh:1", tmp_path)
        assert view["sock"] == b"/run/buildkit/ssh_agent.0\n" and "run" not in view
        with pytest.raises(InvalidInput, match="line 2.*ssh"):
            build(root, spec=spec.replace("test -S", "true ||"))
    finally:
        proc.kill()
        proc.wait()
