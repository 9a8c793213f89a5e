"""RUN isolation: no way out of a build container (pivot_root, namespaces, capabilities).

Found by review: with ``unshare --root`` (chroot(2) only) and every capability, a RUN
step read the host's files through the classic chroot escape.  These tests run real
builds on real stores; the escape is a real static program compiled here."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import time

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.image_build import image_build
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._sandbox import Sandbox, StepFailed
from tests.support.fixtures import busybox_store
from tests.support import rootfs

# Docker's default capability set less CAP_MKNOD: CHOWN DAC_OVERRIDE FOWNER FSETID KILL
# SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT AUDIT_WRITE SETFCAP
KEPT_CAPS = (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31)
CAP_MASK = sum(1 << cap for cap in KEPT_CAPS)

ESCAPE_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Writes to stdout and to /escape-result, a file opened while still inside the image. */
static void report(int out, const char *label, const char *path)
{
    char buf[512], line[1200];
    int fd = open(path, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
    if (n < 0) {
        snprintf(line, sizeof(line), "%s: cannot read %s\n", label, path);
    } else {
        buf[n] = 0;
        snprintf(line, sizeof(line), "%s: read %s: %s\n", label, path, buf);
    }
    write(1, line, strlen(line));
    write(out, line, strlen(line));
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv)
{
    char path[600];
    int out = open("/escape-result", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (argc < 2 || out < 0)
        return 2;
    report(out, "before", argv[1]);
    snprintf(path, sizeof(path), "/proc/1/root%s", argv[1]);
    report(out, "proc-root", path);
    /* the classic escape: chroot below the cwd, walk up past the root, chroot there */
    mkdir("x", 0755);
    if (chroot("x") != 0)
        perror("chroot x");
    for (int i = 0; i < 64; i++)
        chdir("..");
    if (chroot(".") != 0)
        perror("chroot .");
    report(out, "escaped", argv[1]);
    return 0;
}
"""

PROBE_SH = r"""
mkdir -p /mnt
exec > /report 2>&1
busybox mount -t tmpfs none /mnt; echo "mount=$?"
busybox mknod /blk b 7 0; echo "mknod=$?"
echo "pid=$$"
echo "exe=$(busybox readlink /proc/1/exe)"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "root=$(busybox readlink /proc/1/root)"
echo "ifaces=$(sed -n 's/^ *\([^:|]*\):.*/\1/p' /proc/net/dev | busybox tr '\n' ' ')"
echo "hostname=$(busybox hostname)"
grep '^Cap' /proc/self/status | sed 's/:[[:space:]]*/=/'
grep '^SigIgn' /proc/self/status | sed 's/:[[:space:]]*/=/'
(cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern); echo "core_pattern=$?"
(cat /dev/tty) 2>/dev/null; echo "tty=$?"
cat "/proc/1/root$1"; echo "canary=$?"
"""


@pytest.fixture(params=["overlay2", "vfs"])
def root(request, store_root, busybox_tar):
    return busybox_store(store_root, busybox_tar, request.param)


@pytest.fixture
def canary():
    """A host file no step may read: (path, content)."""
    path = "/tmp/strata-sandbox-canary-" + secrets.token_hex(8)
    secret = "host-only-" + secrets.token_hex(16)
    with open(path, "w") as handle:
        handle.write(secret)
    try:
        yield path, secret
    finally:
        os.unlink(path)


@pytest.fixture(scope="module")
def escape_program(tmp_path_factory):
    """The escape as a static binary (the busybox image has no libc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    work = tmp_path_factory.mktemp("escape")
    source = work / "escape.c"
    source.write_text(ESCAPE_C)
    binary = work / "escape"
    made = subprocess.run([gcc, "-static", "-O1", "-o", str(binary), str(source)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip("cannot link a static program (libc6-dev missing?): %s" % made.stderr[-300:])
    return str(binary)


def build(root, **kw):
    return image_build(dict({"data_root": root}, **kw))


def files_of(root, image):
    """{path: content} of the regular files of ``image``, as a container sees them."""
    c = container_layer({"data_root": root, "name": "probe", "image": image, "state": "mounted"})
    try:
        out = {}
        for base, _dirs, files in os.walk(c["mount_point"]):
            for name in files:
                path = os.path.join(base, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        out[os.path.relpath(path, c["mount_point"])] = handle.read()
        return out
    finally:
        container_layer({"data_root": root, "name": "probe", "state": "absent"})


def context_with(tmp_path, copies=None, texts=None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    for name, source in (copies or {}).items():
        shutil.copy(source, ctx / name)
    for name, text in (texts or {}).items():
        (ctx / name).write_text(text)
    return str(ctx)


def report_of(files):
    return dict(line.split("=", 1) for line in files["report"].decode().splitlines()
                if "=" in line)


def test_the_chroot_escape_reads_nothing_of_the_host(root, tmp_path, canary, escape_program):
    path, secret = canary
    ctx = context_with(tmp_path, copies={"escape": escape_program})
    spec = "FROM busybox:test\nCOPY escape /escape\nRUN /escape %s\n" % path
    build(root, context=ctx, spec=spec, tag=["escape:1"])
    files = files_of(root, "escape:1")
    result = files["escape-result"].decode()
    assert "escaped: cannot read %s" % path in result   # it ran, and found nothing
    assert "proc-root: cannot read" in result
    assert all(secret.encode() not in content for content in files.values())
    assert not os.path.exists("/escape-result")
    # the step's own output, which a failing step reports
    with pytest.raises(StepFailed) as info:
        build(root, context=ctx, spec=spec.replace("%s\n" % path, "%s && false\n" % path))
    assert "escaped: cannot read" in str(info.value) and secret not in str(info.value)


def test_a_step_cannot_mount_mknod_see_the_host_or_keep_capabilities(root, tmp_path, canary):
    path, secret = canary
    ctx = context_with(tmp_path, texts={"probe.sh": PROBE_SH})
    build(root, context=ctx, tag=["probe:1"], network="none",
          spec="FROM busybox:test\nCOPY probe.sh /probe.sh\nRUN sh /probe.sh %s\n" % path)
    files = files_of(root, "probe:1")
    report = report_of(files)
    assert report["mount"] != "0" and report["mknod"] != "0" and "blk" not in files
    assert report["pid"] == "1" and report["exe"] == "/bin/busybox"
    assert int(report["procs"]) <= 4                  # only the step's own processes
    assert report["root"] == "/"
    assert report["ifaces"].split() == ["lo"]          # no network
    hostname = report["hostname"]
    assert len(hostname) == 12 and set(hostname) <= set(string.hexdigits)
    assert hostname != socket.gethostname()
    assert int(report["CapBnd"], 16) == CAP_MASK       # root keeps only these
    assert int(report["CapEff"], 16) == CAP_MASK
    assert int(report["CapInh"], 16) == 0 and int(report["CapAmb"], 16) == 0
    ignored = int(report["SigIgn"], 16)               # not left over from the interpreter
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))
    assert report["core_pattern"] != "0"               # /proc/sys is read-only
    assert report["tty"] != "0"                        # no controlling terminal
    assert report["canary"] != "0" and secret not in files["report"].decode()


def test_device_nodes_in_a_layer_do_not_open(root, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.mknod(ctx / "zero-node", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    build(root, context=str(ctx), tag=["dev:1"],
          spec="FROM busybox:test\nCOPY zero-node /zero-node\n"
               "RUN (head -c 1 /zero-node > /dev/null && echo opened || echo refused) > /out"
               " && echo fine > /dev/null && echo dev-null-works >> /out\n")
    assert files_of(root, "dev:1")["out"] == b"refused\ndev-null-works\n"


def test_user_gets_its_groups_and_no_capabilities(root):
    build(root, tag=["user:1"],
          spec="FROM busybox:test\nRUN echo 'staff:x:50:nobody,other' >> /etc/group\n"
               "USER nobody\nRUN id -G > /tmp/groups && grep ^CapEff /proc/self/status"
               " > /tmp/caps\n")
    files = files_of(root, "user:1")
    assert files["tmp/groups"] == b"65534 50\n"
    assert files["tmp/caps"].split() == [b"CapEff:", b"0000000000000000"]


def test_a_missing_command_fails_with_127_and_says_so(root):
    with pytest.raises(StepFailed) as info:
        build(root, spec='FROM busybox:test\nRUN ["/no/such/tool", "x"]\n')
    assert "exit code 127" in str(info.value)
    assert "/no/such/tool: not found in the image" in str(info.value)
    with pytest.raises(StepFailed) as info:
        build(root, spec='FROM busybox:test\nRUN ["/etc/passwd"]\n')
    assert "exit code 126" in str(info.value) and "cannot execute" in str(info.value)


def _host_processes_with(marker: bytes):
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if marker in handle.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def test_a_timed_out_step_of_another_user_leaves_no_process(tmp_path):
    """Sandbox directly on a plain busybox root: a non-root USER clears the parent-death
    signal, which the init sets again, so killing unshare kills the whole step."""
    root = rootfs.make_rootfs(str(tmp_path / "rootfs"))
    marker = str(4000 + secrets.randbelow(5000))
    try:
        with Sandbox(root, "timeout-test") as sandbox:
            with pytest.raises(StepFailed, match="did not finish within"):
                sandbox.run(["sh", "-c", "sleep %s & sleep %s" % (marker, marker)],
                            {"PATH": "/bin"}, "/", (65534, 65534), "probe", timeout=1)
        deadline = time.monotonic() + 5
        while _host_processes_with(b"sleep\0" + marker.encode()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _host_processes_with(b"sleep\0" + marker.encode()) == []
    finally:
        for pid in _host_processes_with(b"sleep\0" + marker.encode()):
            os.kill(pid, 9)


# ---------------------------------------------------------------- mounts (a review's)
@pytest.fixture
def host_dir():
    """A host directory no step may touch (with an empty directory and an empty file:
    what the cleanup after a step removes when they are its own mount points)."""
    path = "/tmp/strata-sandbox-victim-" + secrets.token_hex(8)
    os.makedirs(os.path.join(path, "emptydir"))
    open(os.path.join(path, "emptyfile"), "w").close()
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_the_cleanup_after_a_step_never_follows_a_link_the_step_swapped_in(root, host_dir):
    """The step makes its mount points' parent a link to the host's root: what is
    removed afterwards is looked up from the container's root, never through a link,
    and only while it is the very entry made to mount on."""
    build(root, tag=["swap:1"], network="none", secrets={"s": {"env": "PATH"}},
          spec="FROM busybox:test\n"
               "RUN --mount=type=tmpfs,target=/zz%(d)s/emptydir "
               "--mount=type=secret,id=s,target=/zz%(d)s/emptyfile "
               "mv /zz /zzold && ln -s / /zz\n" % {"d": host_dir})
    assert sorted(os.listdir(host_dir)) == ["emptydir", "emptyfile"]


def test_a_mount_target_behind_a_link_an_earlier_mount_brings_is_refused(root, host_dir):
    """A cache planted with a link to the host: a later step's target below it would
    have been made (the secret written) on the host; it is refused, naming the link."""
    spec = ("FROM busybox:test\n"
            "RUN --mount=type=cache,target=/x,id=plant sh -c 'rm -rf /x/sub; ln -s %s /x/sub'\n"
            "RUN --mount=type=cache,target=/x,id=plant "
            "--mount=type=secret,id=s,target=/x/sub/secret,mode=0644 true\n" % host_dir)
    with pytest.raises(StepFailed) as info:
        build(root, tag=["plant:1"], network="none", secrets={"s": {"env": "PATH"}}, spec=spec)
    assert "RUN --mount target /x/sub/secret: /x/sub is a symlink" in str(info.value)
    assert sorted(os.listdir(host_dir)) == ["emptydir", "emptyfile"]
    for target in ("/dev", "/proc/x"):
        with pytest.raises(InvalidInput, match="the root, /dev and /proc are the build"):
            build(root, spec="FROM busybox:test\nRUN --mount=type=tmpfs,target=%s true\n"
                  % target)


def test_a_read_only_context_bind_leaves_mounts_inside_the_context_out(root, tmp_path):
    """Binds are not recursive: a filesystem mounted inside the context is not in the
    step's view, so the read-only bind cannot be written through it."""
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ctx / "sub")], check=True)
    try:
        (ctx / "sub" / "file").write_text("host")
        build(root, context=str(ctx), tag=["ro:1"], network="none",
              spec="FROM busybox:test\nRUN --mount=type=bind,target=/ctx "
                   "sh -c 'echo written > /ctx/sub/file; ls /ctx/sub > /seen; true'\n")
        assert (ctx / "sub" / "file").read_text() == "host"
        assert files_of(root, "ro:1")["seen"] == b""
    finally:
        subprocess.run(["umount", str(ctx / "sub")], check=True)


def test_nested_mount_targets_work_and_leave_nothing_in_the_layer(root):
    build(root, tag=["nested:1"], network="none",
          spec="FROM busybox:test\n"
               "RUN --mount=type=tmpfs,target=/c --mount=type=tmpfs,target=/c/d "
               "--mount=type=cache,target=/root/.cache "
               "--mount=type=cache,target=/root/.cache/pip "
               "sh -c 'echo 1 > /c/d/f && echo 2 > /root/.cache/pip/f && "
               "grep -c \" /c/d \" /proc/self/mounts > /count'\n")
    files = files_of(root, "nested:1")
    assert files["count"] == b"1\n"
    assert not any(name.startswith(("c/", "root/.cache")) for name in files)
    with pytest.raises(InvalidInput, match="target /etc/passwd/x cannot be made in the image"):
        build(root, spec="FROM busybox:test\nRUN --mount=type=tmpfs,target=/etc/passwd/x true\n")


def test_a_step_on_the_hosts_network_has_no_raw_sockets(root):
    """``network: host`` shares the host's interfaces: without ``CAP_NET_RAW`` a step
    cannot sniff or forge their traffic (with its own network it keeps Docker's set)."""
    build(root, tag=["hostnet:1"], network="host",
          spec="FROM busybox:test\nRUN grep ^CapBnd /proc/self/status > /caps\n")
    bounding = int(files_of(root, "hostnet:1")["caps"].split()[1], 16)
    assert bounding == CAP_MASK & ~(1 << 13)
