"""layer_import of a large many-file layer, side by side with GNU ``tar -xf`` of the same
tar on the same filesystem; peak memory of the import; idempotent re-imports.

The layer is built at run time from real files of this host (directories of /usr,
sorted, numeric owners, as ``docker build`` lays a layer out), plain, gzip (pigz -6) and
zstd (-3).  The image archives (docker-archive and oci-archive) are written by the
engine's own ``image_export`` after a first import of the tar.  The sources live on the
host's disk (in the page cache for every tool alike); every output goes to a loop
filesystem of the benchmark's own.  Each run imports into an empty store whose driver
(overlay2) is set up beforehand, untimed, and extracts into an empty directory; runs
are interleaved (layer_import, tar, layer_import, tar...).  Medians of ``--runs``.

    sudo .venv/bin/python benchmarks/import_layer.py [--runs 5] [--quick] [--fs ext4]

What each column includes:
  layer_import      in-process call of the module's entry point (_ops/layer_import.py):
                    lock, decompress, safe apply (overlay2 layout), diff_id and compressed
                    digest, header record (tar-split), syncfs of the store's filesystem,
                    layer record written durably
  tar -xf + sync    GNU tar (a subprocess), then ``sync -f`` of the output's filesystem
                    (syncfs: the same flush our import does; tar alone is not durable)
  tar -xf           the same without the flush, for reference
  format: layer     the same import told the format (``format: auto``, the default, first
                    reads every tar header of the file to tell a layer from an image
                    archive)

Peak RSS is measured in a child Python per layer size (VmHWM of /proc/self/status and
ru_maxrss; the zstd decoder is a child process, shown apart).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List

from _common import (Results, compress, dirs_arg, engine, loop_fs, machine, make_tar,
                     progress, sh, syncfs, timed, verdict, wipe, workspace)
from tests.support.paths import python_env

DEFAULT_DIRS = "usr/include,usr/lib/gcc,usr/lib/python3.11,usr/libexec,usr/share/perl"
SMALL_DIRS = "usr/share/perl,usr/lib/python3.11"
HUGE_DIRS = DEFAULT_DIRS + ",usr/lib/x86_64-linux-gnu"
QUICK_DIRS = "usr/lib/python3.11,usr/share/perl"
TAR_FLAGS = {"plain": [], "gzip": ["-z"], "zstd": ["--zstd"]}

RSS_CODE = r"""
import json, os, resource, sys
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver

def hwm():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
storage_driver({"data_root": sys.argv[1], "driver": "overlay2"})
before = hwm()
layer_import({"data_root": sys.argv[1], "src": sys.argv[2]})
print(json.dumps({"before": before, "hwm": hwm(),
                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


class Bench:
    def __init__(self, out: str) -> None:
        self.out = out
        self.ingest = engine("_ops.layer_import")
        self.switch = engine("_ops.storage_driver")

    def fresh_store(self, name: str) -> str:
        root = os.path.join(self.out, name)
        wipe(root)
        self.switch.storage_driver({"data_root": root, "driver": "overlay2"})
        syncfs(self.out)
        return root

    def layer_import(self, root: str, src: str, fmt: str = "auto") -> float:
        return timed(lambda: self.ingest.layer_import({"data_root": root, "src": src,
                                                       "format": fmt}))

    def tar(self, src: str, kind: str) -> Dict[str, float]:
        dest = os.path.join(self.out, "tar-out")
        wipe(dest)
        os.mkdir(dest)
        syncfs(self.out)
        extract = timed(lambda: sh(["tar", "-C", dest, "--numeric-owner", "-xf", src]
                                   + TAR_FLAGS[kind]))
        flush = timed(lambda: syncfs(dest))
        wipe(dest)
        return {"extract": extract, "flush": flush}


def make_sources(src: str, dirs: List[str], kinds: List[str]) -> Dict[str, object]:
    tar = os.path.join(src, "layer.tar")
    info: Dict[str, object] = dict(make_tar(tar, dirs))
    info["files"] = {"plain": tar}
    for kind in kinds:
        if kind != "plain":
            path = compress(tar, kind)
            info["files"][kind] = path  # type: ignore[index]
            info[kind + "_bytes"] = os.path.getsize(path)
    return info


def make_archives(bench: Bench, src: str, tar: str) -> Dict[str, str]:
    """docker-archive and oci-archive of a one-layer image, written by image_export."""
    root = bench.fresh_store("seed")
    bench.ingest.layer_import({"data_root": root, "src": tar, "tag": ["bench/big:1"]})
    export = engine("_ops.image_export")
    archives = {}
    for fmt in ("docker-archive", "oci-archive"):
        archives[fmt] = os.path.join(src, "image-%s.tar" % fmt)
        export.image_export({"data_root": root, "image": "bench/big:1", "dest": archives[fmt],
                             "format": fmt})
    wipe(root)
    return archives


def one_run(bench: Bench, files: Dict[str, str], archives: Dict[str, str],
            results: Results) -> None:
    for kind, path in files.items():
        root = bench.fresh_store("store")
        results.add("layer_import %s" % kind, bench.layer_import(root, path))
        if kind == "plain":
            results.add("re-import of the same layer file", bench.layer_import(root, path))
            root = bench.fresh_store("store")
            results.add("layer_import plain, format: layer", bench.layer_import(root, path,
                                                                                "layer"))
            results.add("re-import of the same layer file, format: layer",
                        bench.layer_import(root, path, "layer"))
        wipe(root)
        parts = bench.tar(path, kind)
        results.add("tar -xf + sync %s" % kind, parts["extract"] + parts["flush"])
        results.add("tar -xf %s (no sync)" % kind, parts["extract"])
    root = bench.fresh_store("store")
    results.add("first import docker-archive", bench.layer_import(root, archives["docker-archive"]))
    results.add("re-import docker-archive", bench.layer_import(root, archives["docker-archive"]))
    results.add("re-import oci-archive", bench.layer_import(root, archives["oci-archive"]))
    wipe(root)


def peak_rss(out: str, tar: str) -> Dict[str, int]:
    root = os.path.join(out, "rss-store")
    wipe(root)
    try:
        proc = sh([sys.executable, "-c", RSS_CODE, root, tar], env=python_env(), text=True)
    finally:
        wipe(root)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_speed(results: Results, info: Dict[str, object], kinds: List[str]) -> bool:
    mb = int(info["bytes"]) / 1e6  # type: ignore[arg-type]
    print("\n| format | layer_import | tar -xf + sync | ratio | tar -xf (no sync) | "
          "layer_import MB/s | files/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    met = True
    for kind in kinds:
        ours = results.median("layer_import %s" % kind)
        base = results.median("tar -xf + sync %s" % kind)
        plain = results.median("tar -xf %s (no sync)" % kind)
        met = met and ours <= 1.5 * base
        print("| %s | %.2f s | %.2f s | %.2fx | %.2f s | %.0f | %.0f |" % (
            kind, ours, base, ours / base, plain, mb / ours, int(info["entries"]) / ours))
    return met


def print_reimport(results: Results) -> bool:
    first = results.median("first import docker-archive")
    print("\n| re-import | median | min | max | of the first import |")
    print("| --- | --- | --- | --- | --- |")
    met = True
    for label in ("first import docker-archive", "re-import docker-archive",
                  "re-import oci-archive", "re-import of the same layer file",
                  "re-import of the same layer file, format: layer"):
        values = results.samples[label]
        med = statistics.median(values)
        if label.startswith("re-import") and "archive" in label:
            met = met and med < 0.05 * first
        print("| %s | %.3f s | %.3f s | %.3f s | %.1f%% |" % (
            label, med, min(values), max(values), 100 * med / first))
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="2 runs of a smaller layer, plain only, 2 memory sizes")
    parser.add_argument("--dirs", default=None, help="comma-separated directories under / "
                        "(default: %s)" % DEFAULT_DIRS)
    parser.add_argument("--fs", default="ext4", choices=("ext4", "xfs", "btrfs", "none"),
                        help="filesystem of the outputs (a loop fs of its own; none: --work)")
    parser.add_argument("--work", default="/var/tmp", help="where the sources are built")
    parser.add_argument("--no-compressed", action="store_true", help="plain tar only")
    args = parser.parse_args()
    runs = 2 if args.quick and args.runs == 5 else args.runs
    dirs = dirs_arg(args.dirs or (QUICK_DIRS if args.quick else DEFAULT_DIRS))
    kinds = ["plain"] if args.quick or args.no_compressed else ["plain", "gzip", "zstd"]
    with workspace("import", args.work) as work, loop_fs(args.fs, work, 8192) as out:
        src = os.path.join(work, "src")
        os.makedirs(src)
        progress("building the layer from /%s ..." % ", /".join(dirs))
        info = make_sources(src, dirs, kinds)
        bench = Bench(out)
        archives = make_archives(bench, src, info["files"]["plain"])  # type: ignore[index]
        print("layer: /%s; %.0f MB tar, %d entries%s; %d runs" % (
            ", /".join(dirs), int(info["bytes"]) / 1e6, int(info["entries"]),  # type: ignore
            "".join("; %s %.0f MB" % (k, int(info[k + "_bytes"]) / 1e6)  # type: ignore
                    for k in kinds if k != "plain"), runs))
        print(machine(out))
        results = Results()
        for run in range(runs):
            one_run(bench, info["files"], archives, results)  # type: ignore[arg-type]
            progress("run %d/%d done" % (run + 1, runs))
        print("\n" + results.table())
        speed = print_speed(results, info, kinds)
        again = print_reimport(results)
        rss = print_memory(work, out, dirs, info, args.quick)
        print("\ntargets: import within 1.5x of tar -xf + sync: %s; re-import of a present "
              "image under 5%% of the first import: %s; peak RSS under 100 MB: %s"
              % (verdict(speed), verdict(again), verdict(rss)))
    return 0


def print_memory(work: str, out: str, dirs: List[str], info: Dict[str, object],
                 quick: bool) -> bool:
    sizes = [("small", dirs_arg(SMALL_DIRS), None), ("default", dirs, info)]
    if not quick:
        sizes.append(("large", dirs_arg(HUGE_DIRS), None))
    print("\n| layer | tar MB | entries | peak RSS (VmHWM) | before the import | zstd child |")
    print("| --- | --- | --- | --- | --- | --- |")
    met = True
    for name, size_dirs, known in sizes:
        src = os.path.join(work, "rss-" + name)
        os.makedirs(src)
        made = known or make_sources(src, size_dirs, ["plain"])
        tar = made["files"]["plain"]  # type: ignore[index]
        plain = peak_rss(out, tar)
        zst = peak_rss(out, compress(tar, "zstd")) if not quick else None
        met = met and plain["hwm"] < 100e6 and (zst is None or zst["hwm"] < 100e6)
        print("| %s (plain%s) | %.0f | %d | %.1f MB%s | %.1f MB | %s |" % (
            name, ", zstd" if zst else "", int(made["bytes"]) / 1e6,  # type: ignore
            int(made["entries"]), plain["hwm"] / 1e6,  # type: ignore[arg-type]
            " / %.1f MB" % (zst["hwm"] / 1e6) if zst else "", plain["before"] / 1e6,
            "%.1f MB" % (zst["children"] / 1e6) if zst else "-"))
        if known is None:
            wipe(src)
        subprocess.run(["rm", "-f", tar + ".zst"], check=False)
    return met


if __name__ == "__main__":
    sys.exit(main())
