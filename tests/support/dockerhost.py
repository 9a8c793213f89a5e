"""A Docker host with content, made by dockerd itself: images whose layers delete files
and directories, make opaque directories, hardlinks, symlinks, setuid files and a file
capability (security.capability, the xattr Docker's layers carry), and containers with
changes (one only created, one started then stopped, one running)."""
from __future__ import annotations

import os
import struct
from typing import Dict

from tests.support import rootfs
from tests.support.dockerd import Dockerd

DOCKERFILE = """\
FROM strata-base
COPY capfile /capfile
RUN mkdir -p /d/sub /o /keep && echo a > /d/sub/f && echo x > /o/old && echo y > /o/gone \\
 && echo h > /h1 && busybox ln /h1 /h2 && busybox ln -s /h1 /sl && echo s > /suid && busybox chmod 4755 /suid \\
 && busybox mkfifo /fifo && echo k > /keep/k
RUN rm -rf /d/sub /o && mkdir /o && echo n > /o/new && rm /etc/os-release && rm /h2 \\
 && busybox chmod 700 /keep && touch /keep/k2
CMD ["sh"]
"""

SECOND = """\
FROM strata-test:1
RUN echo second > /second && rm -rf /keep
"""


def _capability() -> bytes:
    # VFS_CAP_REVISION_2, effective; cap_net_raw (13) permitted
    return struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def build(dockerd: Dockerd, work: str) -> Dict[str, str]:
    """Images ``strata-test:1`` (+ ``strata-test:alias``), ``strata-test:2``, and
    containers ``created``, ``stopped``, ``running``; returns name -> id."""
    base = os.path.join(work, "base.tar")
    rootfs.make_rootfs_tar(base, os.path.join(work, "basefs"))
    dockerd.docker("import", base, "strata-base")
    ctx = os.path.join(work, "ctx")
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Dockerfile"), "w") as handle:
        handle.write(DOCKERFILE)
    cap = os.path.join(ctx, "capfile")
    with open(cap, "w") as handle:
        handle.write("cap\n")
    os.setxattr(cap, "security.capability", _capability())
    dockerd.docker("build", "--network", "none", "-q", "-t", "strata-test:1", ctx)
    dockerd.docker("tag", "strata-test:1", "strata-test:alias")
    ctx2 = os.path.join(work, "ctx2")
    os.makedirs(ctx2, exist_ok=True)
    with open(os.path.join(ctx2, "Dockerfile"), "w") as handle:
        handle.write(SECOND)
    dockerd.docker("build", "--network", "none", "-q", "-t", "strata-test:2", ctx2)
    ids = {}
    ids["created"] = dockerd.docker("create", "--network", "none", "--name", "created",
                                    "strata-test:1", "sh").strip()
    # its command makes the changes once; started again, it shows them
    dockerd.docker("run", "--network", "none", "--name", "stopped", "strata-test:1", "sh", "-c",
                   "if test -f /newfile; then cat /newfile /keep/again; exit 0; fi; "
                   "echo new > /newfile && rm /h1 && rm -rf /d && mkdir -p /o/more "
                   "&& echo z >> /etc/passwd && busybox chmod 600 /suid && busybox ln -s x /o/link "
                   "&& rm -rf /keep && mkdir /keep && echo again > /keep/again")
    ids["stopped"] = dockerd.docker("inspect", "-f", "{{.Id}}", "stopped").strip()
    ids["running"] = dockerd.docker("run", "-d", "--network", "none", "--name", "running",
                                    "strata-test:2", "sh", "-c",
                                    "echo run > /run-file && exec sleep 100000").strip()
    return ids


IMAGES = ("strata-test:1", "strata-test:2", "strata-base:latest")


class Prepared:
    """A stopped Docker host with content at a fixed data root, restorable between tests.

    Containers' config.v2.json files hold absolute paths of the data root, so a copy
    must live at the same path: ``restore`` puts the pristine copy back there."""

    def __init__(self, work: str, driver: str = "overlay2", root: str = "") -> None:
        self.work = work
        self.root = root or os.path.join(work, "root")
        self.pristine = os.path.join(work, "pristine")
        self.config = os.path.join(work, "daemon.json")
        self.dockerd = Dockerd(self.root, self.config)
        self.driver = driver
        self.before: Dict[str, object] = {}
        self.saves: Dict[str, bytes] = {}

    def build(self) -> "Prepared":
        os.makedirs(self.root, exist_ok=True)
        self.dockerd.write_config(storage_driver=self.driver)
        self.dockerd.start()
        try:
            build(self.dockerd, os.path.join(self.work, "build"))
            self.dockerd.docker("stop", "-t", "1", "running")
            self.before = self.dockerd.state()
            self.saves = {name: self.dockerd.save(name) for name in IMAGES}
        finally:
            self.dockerd.stop()
        _copy_tree(self.root, self.pristine)
        return self

    def restore(self) -> None:
        self.dockerd.stop()
        _empty(self.root)
        _copy_tree(self.pristine, self.root)
        self.dockerd.write_config(storage_driver=self.driver)

    def verify(self, driver: str) -> None:
        """dockerd on ``driver`` shows everything as before, byte for byte."""
        self.dockerd.start()
        try:
            assert self.dockerd.driver() == driver
            assert self.dockerd.state() == self.before
            for name, data in self.saves.items():
                assert self.dockerd.save(name) == data, "docker save %s differs" % name
        finally:
            self.dockerd.stop()

    def close(self) -> None:
        self.dockerd.close()
        _empty(self.root)


def _copy_tree(src: str, dst: str) -> None:
    import subprocess
    os.makedirs(dst, exist_ok=True)
    subprocess.run(["cp", "-a", "--preserve=all", src + "/.", dst], check=True)


def _empty(path: str) -> None:
    """Remove everything below ``path`` (btrfs subvolumes included), keep ``path``."""
    import shutil
    import subprocess
    if not os.path.isdir(path):
        return
    subvols = os.path.join(path, "btrfs", "subvolumes")
    if os.path.isdir(subvols):
        for name in os.listdir(subvols):
            subprocess.run(["btrfs", "subvolume", "delete", os.path.join(subvols, name)],
                           capture_output=True, check=False)
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def params(host: Prepared, **options: object) -> Dict[str, object]:
    """storage_driver's parameters for ``host`` (as the module's argument spec fills them)."""
    base: Dict[str, object] = dict(
        engine="docker", data_root=None, daemon_config=host.config, driver="auto",
        migrate=False, keep_previous=None, stop_containers=False, lock_timeout=300.0)
    base.update(options)
    return base


def listing(root: str) -> Dict[str, tuple]:
    """Every path under ``root`` with its type, mode, size and mtime (a cheap snapshot)."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
