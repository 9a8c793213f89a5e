"""Real filesystems on loop devices (and tmpfs) for tests, always cleaned up."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import List, Optional

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "ext4-nodtype": ["mkfs.ext4", "-q", "-F", "-O", "^filetype"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-n", "ftype=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}


def available(kind: str) -> Optional[str]:
    """None when ``kind`` can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if kind == "tmpfs":
        return None
    tool = MKFS[kind][0]
    if shutil.which(tool) is None:
        return "%s not installed" % tool
    if shutil.which("losetup") is None:
        return "losetup not installed"
    return None


def unmount_below(path: str) -> List[str]:
    """Unmount everything mounted at or below ``path`` (deepest first)."""
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == real or point.startswith(real.rstrip("/") + "/"):
                found.append(point)
    for point in sorted(set(found), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return found


class LoopFS:
    """A filesystem of ``kind`` mounted at ``<workdir>/mnt``."""

    def __init__(self, kind: str, workdir: str, size_mb: int = 300) -> None:
        self.kind = kind
        self.workdir = workdir
        self.mountpoint = os.path.join(workdir, "mnt")
        self.image = os.path.join(workdir, "fs.img")
        self.device: Optional[str] = None
        os.makedirs(self.mountpoint, exist_ok=True)
        try:
            self._make(size_mb)
        except BaseException:
            self.close()
            raise

    def _make(self, size_mb: int) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % size_mb, "tmpfs",
                            self.mountpoint], check=True)
            return
        with open(self.image, "wb") as handle:
            handle.truncate(size_mb << 20)
        subprocess.run(MKFS[self.kind] + [self.image], check=True, capture_output=True)
        self.device = subprocess.run(["losetup", "-f", "--show", self.image], check=True,
                                     capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", self.device, self.mountpoint], check=True)

    def close(self) -> None:
        unmount_below(self.mountpoint)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True, check=False)
            self.device = None
        if os.path.exists(self.image):
            os.unlink(self.image)
