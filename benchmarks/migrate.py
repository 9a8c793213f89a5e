"""storage_driver migration throughput (MB/s, files/s) for overlay2 -> vfs, vfs ->
overlay2 and overlay2 -> btrfs, next to a plain import of the same images into an empty
store of the target driver.

Three images are built at run time from this host's /usr (4 layers, one shared by two
images: /usr/include, /usr/share/perl on top of it, and /usr/lib/python3.11 +
/usr/libexec), exported with ``image_export`` as docker-archives.  Each run builds the
source store (imports, then two containers, each mounted, given the files of
/usr/share/zoneinfo, a deleted directory and a new file, and unmounted: untimed), then
times ``storage_driver`` with ``migrate: true``; then times ``layer_import`` of the
three archives into an empty store of the target driver.  ext4 pairs on an ext4 loop
filesystem of the benchmark's own, btrfs on a btrfs one.  Medians of ``--runs``.

    sudo .venv/bin/python benchmarks/migrate.py [--runs 3] [--quick] [--pairs overlay2:vfs,...]
        [--process]

What each row includes:
  migrate           the module's engine in-process: probe, every layer re-emitted from its
                    header record + the old driver's files and applied into the new driver
                    (diff_id verified), every container's changes carried and compared
                    entry by entry, syncfs, the atomic switch, the old driver's data
                    removed (keep_previous: false)
  plain import      layer_import of the three archives into an empty store of the target
                    driver (decode, apply, hash, header record, syncfs per layer)
  old data gone     the migration until the detached process that removes the old
                    driver's parked home is done too (not part of what a playbook waits
                    for; waited for before the baseline runs, untimed, so it never
                    overlaps it)
MB/s counts the layers' tar bytes, files/s their tar entries; for the migration, also
the bytes and entries written into the two containers (which it carries too).
``--process`` runs each call as a Python process of its own, as Ansible runs a module
(``python -c`` calling the engine function: the interpreter, imports and the call; not
Ansible's own module wrapper): the migration one process, the plain import one process
per archive, as a loop over ``layer_import`` runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from _common import (MU, REPO, Results, engine, goal, loop_fs, machine, make_tar, progress, save_goals,
                     syncfs, timed, wipe, workspace)

IMAGES = [("bench/a:1", ["usr/include"]),
          ("bench/b:1", ["usr/include", "usr/share/perl"]),
          ("bench/c:1", ["usr/lib/python3.11", "usr/libexec"])]
QUICK_IMAGES = [("bench/a:1", ["usr/share/perl"]),
                ("bench/b:1", ["usr/share/perl", "usr/share/zoneinfo"])]
PAIRS = "overlay2:vfs,vfs:overlay2,overlay2:btrfs"


def build_archives(work: str, out: str, images: List[Tuple[str, List[str]]]
                   ) -> Dict[str, object]:
    """One docker-archive per image, written by image_export; layer tars counted once."""
    ingest, export = engine("_ops.layer_import"), engine("_ops.image_export")
    root = os.path.join(out, "seed")
    tars: Dict[str, Dict[str, int]] = {}
    archives = []
    for ref, dirs in images:
        parent = None
        for index, directory in enumerate(dirs):
            tar = os.path.join(work, directory.replace("/", "_") + ".tar")
            if directory not in tars:
                tars[directory] = make_tar(tar, [directory])
            params = {"data_root": root, "src": tar, "tag": [ref] if index == len(dirs) - 1
                      else ["bench/tmp:%d" % index]}
            if parent:
                params["parent"] = parent
            parent = ingest.layer_import(params)["image_id"]
        path = os.path.join(work, ref.split("/")[1].replace(":", "-") + ".tar")
        export.image_export({"data_root": root, "image": ref, "dest": path,
                             "format": "docker-archive"})
        archives.append(path)
    wipe(root)
    return {"archives": archives, "bytes": sum(t["bytes"] for t in tars.values()),
            "entries": sum(t["entries"] for t in tars.values()), "layers": len(tars)}


PROCESS = {"on": False}  # --process: each call a Python process of its own


def call(module: str, function: str, params: Dict[str, object]) -> Dict[str, object]:
    """An engine function, in-process or (``--process``) as a process of its own."""
    if not PROCESS["on"]:
        return getattr(engine(module), function)(params)
    code = ("import json, sys\nsys.path.insert(0, %r)\nfrom %s.%s import %s\n"
            "print(json.dumps(%s(json.loads(sys.argv[1]))))"
            % (os.path.join(REPO, ".collections"), MU, module, function, function))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(params)], check=True,
                         stdout=subprocess.PIPE)
    return json.loads(out.stdout)


def import_all(root: str, archives: List[str]) -> None:
    for path in archives:
        call("_ops.layer_import", "layer_import", {"data_root": root, "src": path})


def wait_removed(root: str) -> None:
    """Until the detached remover of the old driver's parked home is done."""
    tmp = os.path.join(root, "tmp")
    while os.path.isdir(tmp) and any("removed-previous" in n for n in os.listdir(tmp)):
        time.sleep(0.01)


def source_store(root: str, driver: str, archives: List[str], images: List[str]) -> None:
    wipe(root)
    engine("_ops.storage_driver").storage_driver({"data_root": root, "driver": driver})
    import_all(root, archives)
    layer = engine("_ops.container_layer").container_layer
    for index, ref in enumerate((images[-2], images[-1])):
        mount = os.path.join(root, "..", "mnt-%d" % index)
        params = {"data_root": root, "name": "c%d" % index, "image": ref,
                  "state": "mounted", "mount_point": os.path.realpath(mount)}
        layer(params)
        write_into(os.path.realpath(mount))
        layer(dict(params, state="unmounted"))
        os.rmdir(mount)
    syncfs(root)


def write_into(mount: str) -> None:
    """A container's life: new files, a deleted directory (whiteouts), a new file."""
    subprocess.run(["cp", "-a", "/usr/share/zoneinfo", os.path.join(mount, "tz")], check=True)
    usr = os.path.join(mount, "usr")
    for top in sorted(os.listdir(usr)):
        inner = sorted(os.listdir(os.path.join(usr, top)))
        if inner:
            victim = os.path.join(usr, top, inner[0])
            if os.path.isdir(victim) and not os.path.islink(victim):
                shutil.rmtree(victim)
            else:
                os.unlink(victim)
            break
    with open(os.path.join(mount, "new-file"), "w") as handle:
        handle.write("written in the container\n")


def one_pair(out: str, old: str, new: str, made: Dict[str, object], refs: List[str],
             results: Results) -> None:
    archives = list(made["archives"])  # type: ignore[call-overload]
    root = os.path.join(out, "store")
    source_store(root, old, archives, refs)
    moved: Dict[str, object] = {}
    label = "%s -> %s" % (old, new)
    start = time.perf_counter()
    moved.update(call("_ops.storage_driver", "storage_driver",
                      {"data_root": root, "driver": new, "migrate": True}))
    results.add("migrate " + label, time.perf_counter() - start)
    wait_removed(root)
    results.add("migrate %s, old data gone" % label, time.perf_counter() - start)
    if moved.get("driver") != new:
        raise RuntimeError("the migration did not switch: %s" % moved)
    wipe(root)
    root = os.path.join(out, "plain")
    wipe(root)
    engine("_ops.storage_driver").storage_driver({"data_root": root, "driver": new})
    syncfs(out)
    results.add("plain import into %s (for %s)" % (new, label),
                timed(lambda: import_all(root, archives)))
    wipe(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 run of small images")
    parser.add_argument("--pairs", default=PAIRS, help="OLD:NEW,... (default %s)" % PAIRS)
    parser.add_argument("--work", default="/var/tmp")
    parser.add_argument("--goals", help="append the goal rows to this JSON file")
    parser.add_argument("--process", action="store_true",
                        help="run the migration and each import as a process of its own")
    args = parser.parse_args()
    PROCESS["on"] = args.process
    runs = 1 if args.quick else args.runs
    images = QUICK_IMAGES if args.quick else IMAGES
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    if any("btrfs" in p for p in pairs) and not shutil.which("mkfs.btrfs"):
        progress("btrfs pairs skipped: mkfs.btrfs not installed")
        pairs = [p for p in pairs if "btrfs" not in p]
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(workspace("migrate", args.work))
        ext4 = stack.enter_context(loop_fs("ext4", work, 12288))
        btrfs = stack.enter_context(loop_fs("btrfs", work, 8192)) \
            if any("btrfs" in p for p in pairs) else None
        made = build_archives(work, ext4, images)
        refs = [ref for ref, _dirs in images]
        made["container_entries"], made["container_bytes"] = tree_size("/usr/share/zoneinfo")
        print("store: %d images, %d layers, %.0f MB of layer tars, %d entries; 2 containers "
              "(+%d entries, %.1f MB each); %d runs" % (
                  len(images), made["layers"], int(made["bytes"]) / 1e6, made["entries"],
                  made["container_entries"], made["container_bytes"] / 1e6, runs))
        print(machine(ext4) + (", btrfs pairs on btrfs" if btrfs else ""))
        results = Results()
        for run in range(runs):
            for old, new in pairs:
                where = btrfs if "btrfs" in (old, new) else ext4
                one_pair(str(where), old, new, made, refs, results)
                progress("run %d: %s -> %s done" % (run + 1, old, new))
        print("\n" + results.table())
        summary(results, pairs, made, args.goals)
    return 0


def tree_size(path: str) -> Tuple[int, int]:
    """Entries written into each container (the tree, a new file, a deletion) and bytes."""
    entries, nbytes = 3, 0
    for top, dirs, files in os.walk(path):
        entries += len(dirs) + len(files)
        nbytes += sum(os.lstat(os.path.join(top, f)).st_size for f in files)
    return entries, nbytes


def summary(results: Results, pairs: List[Tuple[str, ...]], made: Dict[str, object],
            goals: Optional[str] = None) -> None:
    mb, entries = int(made["bytes"]) / 1e6, int(made["entries"])  # type: ignore[arg-type]
    mig_mb = mb + 2 * int(made["container_bytes"]) / 1e6  # type: ignore[arg-type]
    mig_entries = entries + 2 * int(made["container_entries"])  # type: ignore[arg-type]
    print("\n| pair | migrate s | MB/s | files/s | plain import into target s | MB/s | "
          "files/s | migrate / import | throughput ratio | the same, old data gone |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for old, new in pairs:
        label = "%s -> %s" % (old, new)
        mig = statistics.median(results.samples["migrate " + label])
        imp = statistics.median(results.samples["plain import into %s (for %s)" % (new, label)])
        gone = statistics.median(results.samples["migrate %s, old data gone" % label])
        # throughput counts what moved: the layers, and for the migration the containers too
        ratio = (mig_mb / mig) / (mb / imp)
        print("| %s | %.2f | %.0f | %.0f | %.2f | %.0f | %.0f | %.2fx | %.2fx | %.2fx |" % (
            label, mig, mig_mb / mig, mig_entries / mig, imp, mb / imp, entries / imp, mig / imp,
            ratio, (mig_mb / gone) / (mb / imp)))
        rows.append(goal("migration %s, throughput / plain import's" % label, "%.2fx" % ratio,
                         ">= 0.8x", ratio >= 0.8))
    save_goals(goals, rows)


if __name__ == "__main__":
    sys.exit(main())
