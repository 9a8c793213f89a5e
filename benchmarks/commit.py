"""container_commit of a container holding a few hundred MB of changes, per driver and
backing filesystem: the commit as it is (the change stream reads each changed file from
a reflink clone, which the new layer then takes instead of writing the data again; on
ext4, which cannot clone, the data is written) next to the same commit with cloning
turned off (every file written again from the change stream), and next to GNU tar
copying the same files (``tar -c | tar -x`` of the container's changes into a fresh
directory, then ``sync -f``): what any commit that re-writes the data costs at least.

Each run (untimed set-up): an empty store of the driver on a loop filesystem of its own,
an image of /usr/share/zoneinfo, one container mounted and given a copy of the host's
``--dirs`` (default /usr/lib/python3.11 and /usr/share/perl, ~100 MB, ~5k files) and a
256 MB file, unmounted.  Then, timed: ``container_commit`` (hashing and recording the
change stream, the layer's files, syncfs, image record).  The space the commit took on
the filesystem is measured after a sync (``btrfs filesystem usage`` on btrfs, statvfs
elsewhere).

    sudo .venv/bin/python benchmarks/commit.py [--runs 3] [--quick] [--cases ext4:overlay2,...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Dict, List, Tuple

from _common import (Results, dirs_arg, engine, loop_fs, machine, make_tar, progress, sh,
                     syncfs, timed, wipe, workspace)

CASES = [("ext4", "overlay2"), ("xfs", "overlay2"), ("btrfs", "btrfs"), ("btrfs", "vfs"),
         ("xfs", "vfs")]
DIRS = "usr/lib/python3.11,usr/share/perl"
BIG_MB = 256


def used_bytes(mount: str, fs: str) -> int:
    syncfs(mount)
    if fs == "btrfs":
        out = sh(["btrfs", "filesystem", "usage", "-b", mount]).stdout.decode()
        for line in out.splitlines():
            if line.strip().startswith("Used:"):
                return int(line.split()[1])
        raise RuntimeError(out)
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def prepare(mount: str, driver: str, base_tar: str, dirs: List[str], big_mb: int) -> Tuple[str, str]:
    """A store with one container full of changes; returns (data_root, its upper/root)."""
    root = os.path.join(mount, "store")
    engine("_ops.storage_driver").storage_driver({"data_root": root, "driver": driver})
    engine("_ops.layer_import").layer_import({"data_root": root, "src": base_tar, "tag": ["base:1"]})
    made = engine("_ops.container_layer").container_layer(
        {"data_root": root, "name": "c", "image": "base:1", "state": "mounted"})
    target = made["mount_point"]
    for rel in dirs:
        os.makedirs(os.path.join(target, "copy", os.path.dirname(rel)), exist_ok=True)
        sh(["cp", "-a", "/" + rel, os.path.join(target, "copy", rel)])
    with open(os.path.join(target, "big.bin"), "wb") as handle:
        block = os.urandom(1 << 20)
        for _mb in range(big_mb):
            handle.write(block)
    engine("_ops.container_layer").container_layer({"data_root": root, "name": "c", "state": "unmounted"})
    store = engine("_store").Store(root)
    return root, store.driver.container_root(made["id"])


def commit(root: str, clone: bool) -> None:
    shadow = engine("_copytree").Shadow
    saved = shadow.open
    try:
        if not clone:
            shadow.open = lambda self, directory: None      # never clones: data written
        engine("_ops.container_commit").container_commit({"data_root": root, "name": "c", "tag": ["out:1"]})
    finally:
        shadow.open = saved


def tar_copy(source: str, dest: str) -> None:
    os.makedirs(dest)
    pack = subprocess.Popen(["tar", "-C", source, "-cf", "-", "."], stdout=subprocess.PIPE)
    sh(["tar", "-C", dest, "-xf", "-"], stdin=pack.stdout)
    pack.stdout.close()
    if pack.wait() != 0:
        raise RuntimeError("tar -c failed")
    syncfs(dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dirs", default=DIRS)
    parser.add_argument("--cases", default=",".join("%s:%s" % case for case in CASES),
                        help="fs:driver pairs, e.g. ext4:overlay2,xfs:overlay2")
    args = parser.parse_args()
    cases = [tuple(pair.split(":", 1)) for pair in args.cases.split(",") if pair]
    runs, big_mb = (1, 32) if args.quick else (args.runs, BIG_MB)
    dirs = dirs_arg("usr/share/perl" if args.quick else args.dirs)
    print(machine())
    with workspace("commit") as work:
        base_tar = os.path.join(work, "base.tar")
        make_tar(base_tar, ["usr/share/zoneinfo"])
        results: Dict[Tuple[str, str], Results] = {case: Results() for case in cases}
        space: Dict[str, List[int]] = {}
        names = {"clone": "container_commit", "stream": "container_commit, cloning off",
                 "tar": "tar -c | tar -x + sync"}
        for run in range(runs):
            for fs, driver in cases:
                # the two commits take turns going first (the disk's writeback is shared)
                order = ("clone", "stream") if run % 2 == 0 else ("stream", "clone")
                for how in order + ("tar",):
                    label = names[how]
                    progress("run %d: %s on %s, %s" % (run + 1, driver, fs, label))
                    with loop_fs(fs, os.path.join(work, "fs"), 600 + 3 * big_mb) as mount:
                        root, changes = prepare(mount, driver, base_tar, dirs, big_mb)
                        before = used_bytes(mount, fs)
                        if how == "tar":
                            took = timed(lambda: tar_copy(changes, os.path.join(mount, "tar")))
                        else:
                            took = timed(lambda: commit(root, how == "clone"))
                        results[(fs, driver)].add(label, took)
                        space.setdefault("%s %s %s" % (fs, driver, label), []).append(
                            used_bytes(mount, fs) - before)
                    wipe(os.path.join(work, "fs"))
        print("\n# container_commit of ~%d MB of changes (%s + a %d MB file)"
              % (big_mb + 100, ", ".join(dirs), big_mb))
        for (fs, driver), table in results.items():
            def taken(label: str, _median: float, key: str = "%s %s " % (fs, driver)) -> str:
                values = sorted(space[key + label])
                return "%.1f" % (values[len(values) // 2] / 1e6)
            print("\n## %s on %s\n" % (driver, fs))
            print(table.table(base=names["tar"], extra={"space taken, MB": taken}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
