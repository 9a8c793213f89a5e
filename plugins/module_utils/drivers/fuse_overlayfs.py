# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fuse-overlayfs: the overlay2 layout, mounted by the ``fuse-overlayfs`` program.

For hosts where kernel overlayfs is unusable (no d_type, overlay on overlay, old
kernels).  Layers and containers sit exactly as with overlay2 (0/0 character device
whiteouts, ``trusted.overlay.opaque`` on opaque directories, which fuse-overlayfs
honours when run as root) under its own home ``fuse-overlayfs/``; only mounting
differs: the program runs from the home (relative ``l/`` names, like overlay2) and
``fusermount3 -u`` unmounts.  Its own markers in upper directories
(``.wh..wh..opq`` files, ``.wh..opq`` devices) are understood by the native diff.
On-disk layout: docs/design.md, "Layout of a store" ("Each driver's home").
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import List, Optional

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Busy, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import (
    mount_at, processes_using)
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import (
    Candidate, HostFacts)
from ansible_collections.strata.layers.plugins.module_utils.drivers.overlay2 import (
    Overlay2, probe_overlay_mount)

PROGRAM = "fuse-overlayfs"
UNMOUNT = "fusermount3"


def _run(argv: List[str], cwd: Optional[str] = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=120)
    if proc.returncode != 0:
        raise StoreError("%s failed: %s" % (" ".join(argv[:2]), (proc.stderr or proc.stdout)
                                            .strip().splitlines()[-1:] or ["exit %d" % proc.returncode]))


class FuseOverlayfs(Overlay2):
    """overlay2's layout under user-space overlay; see the module docstring."""

    name = "fuse-overlayfs"

    @classmethod
    def probe(cls, facts: HostFacts) -> Candidate:
        missing = [p for p in (PROGRAM, UNMOUNT) if shutil.which(p) is None]
        if missing:
            return Candidate(cls.name, False, "%s not installed (apt install fuse-overlayfs fuse3)"
                             % " and ".join(missing))
        if not os.path.exists("/dev/fuse"):
            return Candidate(cls.name, False, "/dev/fuse is missing (load the fuse module)")
        try:
            probe_overlay_mount(facts.probe_dir, cls._fuse_probe_mount, cls._fuse_unmount)
        except (OSError, StoreError) as exc:
            return Candidate(cls.name, False, "a test fuse-overlayfs mount failed on %s: %s"
                             % (facts.backing_filesystem, exc))
        return Candidate(cls.name, True, "fuse-overlayfs works on %s (user-space overlay: "
                         "slower than overlay2)" % facts.backing_filesystem)

    @staticmethod
    def _fuse_probe_mount(lowers: List[str], upper: str, work: str, target: str) -> None:
        _run([PROGRAM, "-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (":".join(lowers), upper, work),
              target])

    @staticmethod
    def _fuse_unmount(target: str) -> None:
        _run([UNMOUNT, "-u", target])

    def _mount_from_home(self, target: str, options: str) -> None:
        target = os.path.abspath(target)
        if len(options) >= 4096:
            raise Unsupported("the fuse-overlayfs options for %s exceed 4096 bytes; the image is "
                              "too deep" % target)
        _run([PROGRAM, "-o", options, target], cwd=self.home)

    def _overlay_options(self, lower: str, upper: str, work: str) -> str:
        return "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work)

    def unmount(self, target: str) -> None:
        if mount_at(target) is None:
            return
        try:
            self._fuse_unmount(target)
        except StoreError as exc:
            users = processes_using(target)
            if users:
                raise Busy("cannot unmount %s: it is in use by %s; stop them (or leave the "
                           "directory) and run again" % (target, ", ".join(users)),
                           processes=users) from exc
            raise
