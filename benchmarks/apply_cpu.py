"""CPU seconds of the safe applier (parse, confine, create, write, hash, header record)
for one layer, this tree against another commit, interleaved.

CPU time (user + system of the process, worker threads included) moves much less than
wall time with the load of other work on a shared machine, so this is the figure that
says whether a change to the per-member work helped.  Each run applies the layer into
an empty directory on tmpfs (/dev/shm: no disk, so the figure is the engine's own work)
in a fresh child Python; the other commit's plugins come from ``git archive``.

    sudo .venv/bin/python benchmarks/apply_cpu.py --base fe3920c [--runs 6] [--quick]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _common import REPO, Results, dirs_arg, make_tar, machine, progress, sh, workspace
from _peers import PYTHON

DEFAULT_DIRS = "usr/include,usr/lib/gcc,usr/lib/python3.11,usr/libexec,usr/share/perl"
QUICK_DIRS = "usr/lib/python3.11,usr/share/perl"

CHILD = r"""
import os, resource, shutil, sys
sys.path.insert(0, sys.argv[1])
MU = "ansible_collections.strata.layers.plugins.module_utils"
from importlib import import_module
Applier = import_module(MU + "._apply").Applier
ChunkReader = import_module(MU + "._tarformat").ChunkReader
TarSplitWriter = import_module(MU + "._tarsplit").TarSplitWriter
open_file = import_module(MU + "._compression").open_file
dest = sys.argv[3]
os.makedirs(dest + "/root")
before = resource.getrusage(resource.RUSAGE_SELF)
stream = open_file(sys.argv[2])
split = TarSplitWriter(dest + "/split.gz")
Applier(dest + "/root", "device", split, "bench").apply(ChunkReader(stream.chunk))
split.close()
stream.close()
after = resource.getrusage(resource.RUSAGE_SELF)
print(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
shutil.rmtree(dest)
"""


def tree_of(ref: str, work: str) -> str:
    """A collections path whose strata.layers is ``ref``'s plugins (or this tree)."""
    if ref == "HEAD-worktree":
        return os.path.join(REPO, ".collections")
    top = os.path.join(work, "ref-" + ref)
    os.makedirs(os.path.join(top, "ansible_collections", "strata", "layers"))
    archive = subprocess.run(["git", "-C", REPO, "archive", ref, "plugins"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", os.path.join(top, "ansible_collections", "strata",
                                                    "layers")], input=archive, check=True)
    return top


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs
    with workspace("apply-cpu") as work:
        tar = os.path.join(work, "layer.tar")
        info = make_tar(tar, dirs_arg(QUICK_DIRS if args.quick else DEFAULT_DIRS))
        trees = {"this tree": tree_of("HEAD-worktree", work),
                 "base %s" % args.base: tree_of(args.base, work)}
        results = Results()
        shm = tempfile.mkdtemp(prefix="strata-apply-cpu-", dir="/dev/shm")
        try:
            for number in range(runs):
                for label, path in trees.items():
                    out = sh([PYTHON, "-c", CHILD, path, tar, os.path.join(shm, "out")],
                             text=True).stdout
                    results.add(label, float(out.strip().splitlines()[-1]))
                progress("run %d/%d" % (number + 1, runs))
        finally:
            sh(["rm", "-rf", shm])
        print("layer: %.0f MB, %d entries, applied on tmpfs; CPU seconds (user + system)"
              % (info["bytes"] / 1e6, info["entries"]))
        print("machine: %s" % machine())
        with open("/proc/loadavg") as handle:
            print("load average at the end: %s" % " ".join(handle.read().split()[:3]))
        print()
        print(results.table(base="base %s" % args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
