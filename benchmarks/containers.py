"""Creating 100 container layers on one image, per storage driver, and the disk each
fresh container takes; ``store_info`` over them; side by side with ``podman create``.

The image is real content made at run time: a busybox root filesystem (Debian's
busybox-static) and a layer of /usr/share/perl (about 22 MB, 1.4k files), imported
into our store and exported with ``image_export`` as a docker-archive, which
``podman load`` reads into a throwaway podman root (storage driver overlay, runroot a
short path under /tmp).  Our stores and podman's root are on one loop filesystem of the
benchmark's own (ext4), btrfs on a btrfs loop filesystem.  Each run starts from an
empty store / root with the image loaded (untimed); drivers and podman take turns
(overlay2, podman, vfs, btrfs, fuse-overlayfs, overlay2, podman...).

    sudo .venv/bin/python benchmarks/containers.py [--runs 3] [--count 100] [--quick]

What each column includes:
  create (engine)         ``_containers.create`` in-process, all of them under one
                          ``store.write()``: mark, driver's writable layer (overlay2:
                          upper + work dirs; vfs: a full copy of the image; btrfs: a
                          snapshot), directories fsynced, record written durably
  container_layer()       the module's engine entry point in-process, once per container:
                          store open, lock, crash-recovery sweep, name lookup, create,
                          the result row (its size)
  podman create           one ``podman create IMAGE sh`` process per container
  disk / container        ``du -B1`` of the container's record dir + its driver dir
                          (podman: growth of its whole root / count)
  store_info              in-process, all images, layers, containers with their sizes
                          and disk usage (podman: ``podman ps -a --size``)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from typing import Dict, List, Optional

from _common import (Results, du_bytes, engine, loop_fs, machine, make_tar, podman_cmd,
                     goal, progress, release_podman_root, save_goals, sh, short_runroot,
                     syncfs, timed, verdict, wipe, workspace)
from tests.support.rootfs import make_rootfs_tar

IMAGE = "bench/app:1"


def build_image(work: str, out: str) -> Dict[str, object]:
    """The image as a docker-archive, made by our own import + image_export."""
    ingest, export = engine("_ops.layer_import"), engine("_ops.image_export")
    base = make_rootfs_tar(os.path.join(work, "rootfs.tar"), work)
    perl = os.path.join(work, "perl.tar")
    made = make_tar(perl, ["usr/share/perl"])
    root = os.path.join(out, "seed")
    ingest.layer_import({"data_root": root, "src": base, "tag": ["bench/base:1"]})
    result = ingest.layer_import({"data_root": root, "src": perl, "parent": "bench/base:1",
                                  "tag": [IMAGE]})
    archive = os.path.join(work, "image.tar")
    export.image_export({"data_root": root, "image": IMAGE, "dest": archive,
                         "format": "docker-archive"})
    wipe(root)
    return {"archive": archive, "image_id": result["image_id"],
            "bytes": os.path.getsize(archive), "entries": made["entries"]}


class Ours:
    def __init__(self, out: str, driver: str, archive: str) -> None:
        self.out, self.driver, self.archive = out, driver, archive
        self.root = os.path.join(out, "store-" + driver)
        self.mod = engine("_containers")
        self.store_mod = engine("_store")

    def fresh(self) -> None:
        wipe(self.root)
        engine("_ops.storage_driver").storage_driver({"data_root": self.root, "driver": self.driver})
        engine("_ops.layer_import").layer_import({"data_root": self.root, "src": self.archive})
        syncfs(self.out)

    def create_all(self, count: int, init: Optional[List[str]] = None) -> List[float]:
        """``count`` creates under one exclusive store open (``init``: each with an init
        layer holding these entries, as the ``container`` module makes them)."""
        store = self.store_mod.Store(self.root)
        times = []
        with store.write("bench"):
            image = store.images.get(store.images.resolve(IMAGE))
            for index in range(count):
                start = time.perf_counter()
                self.mod.create(store, "c%d" % index, image, init=init)
                times.append(time.perf_counter() - start)
        return times

    def module_all(self, count: int) -> List[float]:
        times = []
        for index in range(count):
            params = {"data_root": self.root, "name": "m%d" % index, "image": IMAGE,
                      "state": "present"}
            times.append(timed(lambda: engine("_ops.container_layer").container_layer(params)))
        return times

    def disk_per_container(self) -> List[int]:
        """Record dir + driver dir; btrfs: the snapshot's exclusive bytes (du would count
        the extents it shares with the image as its own)."""
        store = self.store_mod.Store(self.root)
        driver = store.driver
        sizes = []
        for cid in store.container_ids():
            record = du_bytes(os.path.join(self.root, "containers", cid))
            data = driver.container_dir(cid)
            sizes.append(record + (btrfs_exclusive(data) if self.driver == "btrfs"
                                   else du_bytes(data)))
        return sizes

    def store_info(self, sizes: bool = True) -> float:
        info = engine("_ops.store_info")
        return min(timed(lambda: info.store_info({"data_root": self.root, "sizes": sizes}))
                   for _run in range(3))


def btrfs_exclusive(path: str) -> int:
    out = sh(["btrfs", "filesystem", "du", "-s", "--raw", path], text=True).stdout
    return int(out.strip().splitlines()[-1].split()[1])


def fs_used(path: str) -> int:
    """Bytes in use on the filesystem of ``path``, once flushed (statvfs)."""
    syncfs(path)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class Podman:
    def __init__(self, out: str, archive: str, image_id: str) -> None:
        self.root = os.path.join(out, "podman-root")
        self.archive, self.image = archive, image_id[7:]
        self.runroot: Optional[str] = None

    def cmd(self) -> List[str]:
        return podman_cmd(self.root, self.runroot or "")

    def run(self, count: int, results: Results) -> None:
        with short_runroot("sbc-") as runroot:
            self.runroot = runroot
            try:
                sh(self.cmd() + ["load", "-q", "-i", self.archive])
                before = fs_used(self.root)
                du_before = du_bytes(self.root)
                times = [timed(lambda: sh(self.cmd() + ["create", "--name", "c%d" % i,
                                                        self.image, "sh"]))
                         for i in range(count)]
                results.add("podman create, ms", 1000 * statistics.median(times))
                results.add("podman fs growth / container, KiB",
                            (fs_used(self.root) - before) / count / 1024)
                results.add("podman root du growth / container, KiB",
                            (du_bytes(self.root) - du_before) / count / 1024)
                results.add("podman ps -a --size, s", min(
                    timed(lambda: sh(self.cmd() + ["ps", "-a", "--size"]))
                    for _run in range(3)))
            finally:
                release_podman_root(self.root, runroot)


def run_ours(ours: Ours, count: int, results: Results) -> None:
    name = ours.driver
    ours.fresh()
    before = fs_used(ours.root)
    times = ours.create_all(count)
    results.add("%s create (engine), ms" % name, 1000 * statistics.median(times))
    results.add("%s create (engine) p90, ms" % name, 1000 * sorted(times)[int(0.9 * count)])
    results.add("%s disk / container, KiB" % name,
                statistics.median(ours.disk_per_container()) / 1024)
    results.add("%s fs growth / container, KiB" % name,
                (fs_used(ours.root) - before) / count / 1024)
    results.add("%s store_info (%d containers), s" % (name, count), ours.store_info())
    results.add("%s store_info sizes: false (%d containers), s" % (name, count),
                ours.store_info(sizes=False))
    ours.fresh()
    results.add("%s container_layer(), ms" % name, 1000 * statistics.median(
        ours.module_all(count)))
    wipe(ours.root)


def drivers_here(args: argparse.Namespace) -> List[str]:
    wanted = [d.strip() for d in args.drivers.split(",") if d.strip()]
    if "btrfs" in wanted and not shutil.which("mkfs.btrfs"):
        progress("btrfs skipped: mkfs.btrfs not installed")
        wanted.remove("btrfs")
    if "fuse-overlayfs" in wanted and not shutil.which("fuse-overlayfs"):
        progress("fuse-overlayfs skipped: not installed")
        wanted.remove("fuse-overlayfs")
    return wanted


def summary(results: Results, drivers: List[str], count: int, podman: bool,
            goals: Optional[str] = None) -> bool:
    print("\n| driver | create (engine) ms | p90 ms | container_layer() ms | disk / container "
          "KiB | fs growth / container KiB | store_info on %d s | sizes: false s |" % count)
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    med = results.median
    rows = []
    for name in drivers:
        info_s = med("%s store_info (%d containers), s" % (name, count))
        rows.append(goal("store_info, %d containers, %s (sizes: true)" % (count, name),
                         "%.3f s" % info_s, "< 1 s", info_s < 1))
        print("| %s | %.2f | %.2f | %.2f | %.1f | %.1f | %.3f | %.3f |" % (
            name, med("%s create (engine), ms" % name), med("%s create (engine) p90, ms" % name),
            med("%s container_layer(), ms" % name), med("%s disk / container, KiB" % name),
            med("%s fs growth / container, KiB" % name), info_s,
            med("%s store_info sizes: false (%d containers), s" % (name, count))))
    if podman:
        print("| podman create (overlay) | %.2f | - | - | %.1f (root du) | %.1f | %.3f "
              "(ps -a --size) |" % (
                  med("podman create, ms"), med("podman root du growth / container, KiB"),
                  med("podman fs growth / container, KiB"), med("podman ps -a --size, s")))
    met = True
    if "overlay2" in drivers:
        fast = med("overlay2 create (engine), ms") < 5
        small = med("overlay2 disk / container, KiB") <= 32
        info = med("overlay2 store_info (%d containers), s" % count) < 1
        met = fast and small and info
        print("\ntargets (overlay2): create under 5 ms: %s; at most 32 KiB per fresh container:"
              " %s; store_info on %d containers under 1 s: %s"
              % (verdict(fast), verdict(small), count, verdict(info)))
    save_goals(goals, rows)
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=100, help="containers per run")
    parser.add_argument("--quick", action="store_true", help="1 run of 20 containers")
    parser.add_argument("--drivers", default="overlay2,vfs,btrfs,fuse-overlayfs")
    parser.add_argument("--no-podman", action="store_true")
    parser.add_argument("--work", default="/var/tmp")
    parser.add_argument("--goals", help="append the goal rows to this JSON file")
    args = parser.parse_args()
    runs, count = (1, 20) if args.quick else (args.runs, args.count)
    drivers = drivers_here(args)
    podman = bool(shutil.which("podman")) and not args.no_podman
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(workspace("containers", args.work))
        out = stack.enter_context(loop_fs("ext4", work, 8192))
        btrfs_out = stack.enter_context(loop_fs("btrfs", work, 4096)) \
            if "btrfs" in drivers else None
        image = build_image(work, out)
        print("image: busybox rootfs + /usr/share/perl, 2 layers, %.0f MB archive; %d "
              "containers per driver and run; %d runs" % (int(image["bytes"]) / 1e6, count,
                                                          runs))
        print(machine(out) + (", btrfs for the btrfs driver" if btrfs_out else ""))
        results = Results()
        for run in range(runs):
            for name in ["overlay2", "podman"] + [d for d in drivers if d != "overlay2"]:
                if name == "podman" and podman:
                    Podman(out, str(image["archive"]), str(image["image_id"])).run(count, results)
                elif name in drivers:
                    where = btrfs_out if name == "btrfs" else out
                    run_ours(Ours(str(where), name, str(image["archive"])), count, results)
                progress("run %d: %s done" % (run + 1, name))
        print("\n" + results.table(fmt="%9.3f", unit=""))
        summary(results, drivers, count, podman, args.goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
