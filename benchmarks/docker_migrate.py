"""Switching a Docker host's storage driver: ``storage_driver`` (engine: docker,
migrate: true) against what operators do today (``docker save`` of every image, restart
on the new driver, ``docker load``), side by side in one run; and the migration's
throughput against a plain ``layer_import`` of the same images.

The host (untimed, once): a dockerd 20.10 on the source driver with a large image made
with ``docker import`` of a root filesystem (busybox + /usr/include, /usr/lib/python3.11,
/usr/share/perl, /usr/libexec of this host: ~250 MB, ~12k entries), two images built on
it by dockerd (a RUN writing files, a RUN deleting a directory) and three containers
with changes (files written, a directory deleted).  Its data root is copied aside and
put back before every timed run, on a loop filesystem of the benchmark's own.

    sudo .venv/bin/python benchmarks/docker_migrate.py [--runs 3] [--quick] [--pair overlay2:btrfs]
        [--phases] [--profile FILE]

Rows (interleaved: migration, save+load, migration, ...; medians of ``--runs``):
  migration          stop dockerd, storage_driver migrate (every layer re-materialised
                     -- reflink clones where the filesystem clones -- and its diff_id
                     checked from the new files, containers carried and compared; keep_previous:
                     the old tree stays, as save + load leaves it), start dockerd on the
                     new driver until it answers
  save+restart+load  docker save of all tags to a file, stop dockerd, daemon.json to the
                     new driver, start dockerd, docker load (the containers are LOST)
  module only        the storage_driver call alone (inside "migration")
  plain import       layer_import of the saved archive into an empty store of this
                     collection on the target driver (decode, apply, hash, syncfs)
MB/s counts the images' layer tar bytes (what docker save writes, uncompressed).
CPU seconds (user + system of this process, its worker threads included) are given for
the two in-process rows, "module only" and "plain import": on a shared machine they move
much less with the load than the wall times.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import statistics
import subprocess
import tarfile
import time
from typing import Dict, List, Tuple

from _common import Results, engine, loop_fs, machine, progress, sh, syncfs, wipe, workspace

from tests.support import rootfs
from tests.support.dockerd import Dockerd

BIG = ["usr/include", "usr/lib/python3.11", "usr/share/perl", "usr/libexec"]
QUICK = ["usr/share/perl"]
TAGS = ["bench/base:1", "bench/app:1", "bench/app:2"]
CPU: Dict[str, List[float]] = {}


def cpu_seconds() -> float:
    """User + system CPU of this process so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


PHASES = ("_layers", "_apply_layer", "_finish_layer", "_containers", "_carry", "_verify",
          "install", "flip_containers", "finish")


def time_phases() -> Dict[str, List[float]]:
    """Wrap the conversion's steps: wall, CPU and system seconds of each, summed per
    migration (CPU counts every thread of the process while the step runs)."""
    conversion = engine("_docker.migrate").Conversion
    spent: Dict[str, List[float]] = {}

    def wrapped(name, orig):
        def step(*args, **kwargs):
            before = (time.perf_counter(), cpu_seconds(),
                      resource.getrusage(resource.RUSAGE_SELF).ru_stime)
            try:
                return orig(*args, **kwargs)
            finally:
                total = spent.setdefault(name, [0.0, 0.0, 0.0])
                total[0] += time.perf_counter() - before[0]
                total[1] += cpu_seconds() - before[1]
                total[2] += resource.getrusage(resource.RUSAGE_SELF).ru_stime - before[2]
        return step

    for name in PHASES:
        setattr(conversion, name, wrapped(name, getattr(conversion, name)))
    return spent


def show_phases(spent: Dict[str, List[float]]) -> None:
    print("phases (wall / CPU / system s): " + ", ".join(
        "%s %.2f/%.2f/%.2f" % (name.strip("_"), *spent[name]) for name in PHASES
        if name in spent), flush=True)
    spent.clear()


def make_base(work: str, dirs: List[str]) -> Tuple[str, int]:
    root = rootfs.make_rootfs(os.path.join(work, "busybox"))
    tar = os.path.join(work, "base.tar")
    sh(["tar", "--numeric-owner", "-cf", tar, "-C", root, ".", "-C", "/"] + dirs)
    with tarfile.open(tar) as handle:
        return tar, sum(1 for _m in handle)


def build_host(dockerd: Dockerd, work: str, dirs: List[str]) -> int:
    tar, entries = make_base(work, dirs)
    dockerd.docker("import", tar, "bench/base:1")
    for tag, run in (("bench/app:1", "mkdir /data && cp -r /usr/share/perl /data/perl "
                                     "&& echo one > /data/one"),
                     ("bench/app:2", "rm -rf /usr/share/perl && echo two > /two")):
        ctx = os.path.join(work, tag.replace("/", "_").replace(":", "_"))
        os.makedirs(ctx, exist_ok=True)
        with open(os.path.join(ctx, "Dockerfile"), "w") as handle:
            handle.write("FROM bench/base:1\nRUN %s\n" % run)
        dockerd.docker("build", "-q", "--network", "none", "-t", tag, ctx)
    for index, image in enumerate(TAGS):
        dockerd.docker("run", "--network", "none", "--name", "c%d" % index, image, "sh", "-c",
                       "mkdir -p /root/w; cp -r /%s /root/w/ 2>/dev/null; rm -rf /%s; "
                       "echo %d > /changed" % (dirs[-1], dirs[0], index))
    return entries


def layer_bytes(archive: str) -> int:
    with tarfile.open(archive) as handle:
        return sum(m.size for m in handle if m.name.endswith("layer.tar"))


def restore(dockerd: Dockerd, pristine: str, source: str) -> None:
    dockerd.stop()
    wipe_contents(dockerd.data_root)
    sh(["cp", "-a", "--preserve=all", pristine + "/.", dockerd.data_root])
    dockerd.write_config(storage_driver=source)
    syncfs(dockerd.data_root)
    dockerd.start()


def wipe_contents(path: str) -> None:
    subvols = os.path.join(path, "btrfs", "subvolumes")
    if os.path.isdir(subvols):
        for name in os.listdir(subvols):
            subprocess.run(["btrfs", "subvolume", "delete", os.path.join(subvols, name)],
                           capture_output=True, check=False)
    for name in os.listdir(path):
        wipe(os.path.join(path, name))


def run_migration(dockerd: Dockerd, target: str, results: Results,
                  profile: str = "") -> Dict[str, object]:
    ops = engine("_ops.storage_driver")
    params = dict(engine="docker", data_root=None, daemon_config=dockerd.config,
                  driver=target, migrate=True, keep_previous=True, stop_containers=False)
    out: Dict[str, object] = {}
    start = time.perf_counter()
    dockerd.stop()
    module, cpu = time.perf_counter(), cpu_seconds()
    if profile:
        prof = cProfile.Profile()
        out.update(prof.runcall(ops.storage_driver, params)["migrated"])
        prof.dump_stats(profile)
    else:
        out.update(ops.storage_driver(params)["migrated"])
    results.add("module only", time.perf_counter() - module)
    CPU.setdefault("module only", []).append(cpu_seconds() - cpu)
    dockerd.start()
    results.add("migration (stop, migrate, start)", time.perf_counter() - start)
    assert dockerd.driver() == target
    assert len(dockerd.docker("ps", "-aq").split()) == 3
    return out


def run_save_load(dockerd: Dockerd, target: str, archive: str, results: Results) -> None:
    start = time.perf_counter()
    sh(["/usr/bin/docker", "-H", dockerd.host, "save", "-o", archive] + TAGS)
    dockerd.stop()
    dockerd.write_config(storage_driver=target)
    dockerd.start()
    sh(["/usr/bin/docker", "-H", dockerd.host, "load", "-q", "-i", archive])
    results.add("save+restart+load (containers lost)", time.perf_counter() - start)
    assert dockerd.driver() == target


def run_import(work: str, target: str, archive: str, results: Results) -> None:
    store = os.path.join(work, "strata-store")
    wipe(store)
    switch, ingest = engine("_ops.storage_driver"), engine("_ops.layer_import")
    switch.storage_driver({"data_root": store, "driver": target, "lock_timeout": 60})
    start, cpu = time.perf_counter(), cpu_seconds()
    ingest.layer_import({"data_root": store, "src": archive, "format": "docker-archive",
                         "lock_timeout": 60, "tag": [], "digest": None, "parent": None,
                         "max_size": None})
    results.add("plain layer_import of the same images", time.perf_counter() - start)
    CPU.setdefault("plain import", []).append(cpu_seconds() - cpu)
    wipe(store)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pair", default="overlay2:btrfs", help="SOURCE:TARGET")
    parser.add_argument("--phases", action="store_true",
                        help="print the wall, CPU and system seconds of each step of every "
                             "migration (a wrapper per step; no profiler)")
    parser.add_argument("--profile", default="", metavar="FILE",
                        help="cProfile the module call of each migration run into FILE "
                             "(the times then include the profiler's overhead)")
    args = parser.parse_args()
    source, target = args.pair.split(":")
    runs = 1 if args.quick else args.runs
    fs = "btrfs" if "btrfs" in (source, target) else "ext4"
    spent = time_phases() if args.phases else None
    with workspace("docker") as work, loop_fs(fs, work, 6000) as mnt:
        root = os.path.join(mnt, "docker")
        dockerd = Dockerd(root, os.path.join(work, "daemon.json"))
        try:
            dockerd.write_config(storage_driver=source)
            dockerd.start()
            progress("building the Docker host on %s (untimed)" % source)
            entries = build_host(dockerd, work, QUICK if args.quick else BIG)
            dockerd.stop()
            pristine = os.path.join(mnt, "pristine")
            sh(["cp", "-a", "--preserve=all", root + "/.", pristine])
            archive = os.path.join(work, "all.tar")
            results = Results()
            moved: Dict[str, object] = {}
            for run in range(runs):
                order = ["m", "s"] if run % 2 == 0 else ["s", "m"]
                for which in order:
                    restore(dockerd, pristine, source)
                    progress("run %d: %s" % (run + 1, "migration" if which == "m" else "save+load"))
                    if which == "m":
                        moved = run_migration(dockerd, target, results, args.profile)
                        if spent is not None:
                            show_phases(spent)
                    else:
                        run_save_load(dockerd, target, archive, results)
                dockerd.stop()
                run_import(mnt, target, archive, results)
            report(results, moved, layer_bytes(archive), entries, source, target, mnt)
        finally:
            dockerd.close()
    return 0


def report(results: Results, moved: Dict[str, object], nbytes: int, entries: int,
           source: str, target: str, where: str) -> None:
    mbs = {label: "%.1f" % (nbytes / 1e6 / results.median(label)) for label in results.samples}
    print("\n# Docker %s -> %s, %s" % (source, target, machine(where)))
    print("images: 3 tags (a %d-entry base + 2 built on it), %d MB of layer tars; "
          "3 containers with changes; migrated %s" % (entries, nbytes // 1000000,
                                                      json.dumps(moved)))
    print(results.table(base="save+restart+load (containers lost)",
                        extra={"MB/s": lambda label, _med: mbs[label]}))
    ratio = results.median("plain layer_import of the same images") / results.median("module only")
    plain_runs = results.samples["plain layer_import of the same images"]
    per_run = [p / m for p, m in zip(plain_runs, results.samples["module only"])]
    print("\nmigration throughput / plain layer_import: %.2fx (goal >= 0.8x); median of the "
          "per-run ratios %.2fx (%s)" % (ratio, statistics.median(per_run),
                                         ", ".join("%.2f" % r for r in per_run)))
    mine, plain = (statistics.median(CPU[k]) for k in ("module only", "plain import"))
    print("CPU seconds, medians: module %.2f, plain layer_import %.2f (%.2fx); load average "
          "now %.2f" % (mine, plain, plain / mine, os.getloadavg()[0]))
    faster = results.median("migration (stop, migrate, start)") < results.median(
        "save+restart+load (containers lost)")
    print("migration faster than save + restart + load: %s" % ("yes" if faster else "NO"))


if __name__ == "__main__":
    raise SystemExit(main())
