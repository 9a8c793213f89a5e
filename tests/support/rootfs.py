"""Real root filesystems for tests and the demo: Debian's busybox-static with its
applet links, laid out as a minimal Linux root (no binaries are checked in)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

APPLETS = ["sh", "ls", "cat", "echo", "cp", "mv", "rm", "mkdir", "touch", "id", "env",
           "printf", "test", "true", "false", "sleep", "stat", "wc", "grep", "sed", "head"]


def busybox_path() -> str:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("busybox")
    if not found:
        raise RuntimeError("busybox-static is not installed (apt install busybox-static)")
    return found


def make_rootfs(path: str) -> str:
    """A busybox root filesystem at ``path``."""
    for sub in ("bin", "etc", "tmp", "root", "proc", "dev", "var/log"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    shutil.copy2(busybox_path(), os.path.join(path, "bin", "busybox"))
    for applet in APPLETS:
        link = os.path.join(path, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(path, "etc", "passwd"), "w") as handle:
        handle.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(path, "etc", "group"), "w") as handle:
        handle.write("root:x:0:\nnogroup:x:65534:\n")
    with open(os.path.join(path, "etc", "os-release"), "w") as handle:
        handle.write('NAME="strata test busybox"\nID=busybox\n')
    return path


def make_rootfs_tar(tar_path: str, workdir: str) -> str:
    root = make_rootfs(os.path.join(workdir, "rootfs"))
    subprocess.run(["tar", "--numeric-owner", "--sort=name", "--mtime=@1700000000", "-C", root,
                    "-cf", tar_path, "."], check=True)
    return tar_path


def list_tar(path: str) -> list:
    with tarfile.open(path) as tar:
        return tar.getnames()
