"""Issue 18's costs, this checkout (A) against a baseline checkout (B), interleaved with
``farm-bench`` (A B A B ..., medians, the ratio taken pair by pair):

* ``import``: ``layer_import`` of a 256 MiB layer of incompressible files (32 x 8 MiB)
  into a fresh store: what SparseWriter's zero-window checks cost on data without holes;
* ``pull``: ``image_pull`` of a 3-layer gzip image made from /usr into an existing store
  (a template store copied per run), from Debian's docker-registry on 127.0.0.1: what
  downloading before the lock (no overlap of download and apply) costs.

B is any earlier tree of the collection, e.g. the commit before issue 18::

    mkdir -p /var/tmp/base/ansible_collections/strata/layers
    git archive fe3920c | tar -x -C /var/tmp/base/ansible_collections/strata/layers
    sudo .venv/bin/python benchmarks/ab_bounds.py --base /var/tmp/base [--runs 5] [import|pull]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, ".collections"), REPO, HERE]

RUN_IMPORT = """import os, shutil, sys, tempfile
sys.path.insert(0, sys.argv[1])
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
work = tempfile.mkdtemp(dir=sys.argv[3])
try:
    layer_import({"data_root": os.path.join(work, "s"), "src": sys.argv[2], "format": "layer"})
finally:
    shutil.rmtree(work)
"""
RUN_PULL = """import os, shutil, sys, tempfile
sys.path.insert(0, sys.argv[1])
from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull
work = tempfile.mkdtemp(dir=sys.argv[4])
try:
    root = os.path.join(work, "s")
    shutil.copytree(sys.argv[3], root, symlinks=True)
    image_pull({"name": sys.argv[2], "insecure": True, "data_root": root})
finally:
    shutil.rmtree(work)
"""


def farm(runs: int, code: str, base: str, args: list) -> str:
    script = os.path.join(tempfile.gettempdir(), "ab_bounds_%d.py" % os.getpid())
    with open(script, "w") as handle:
        handle.write(code)
    mine = [sys.executable, script, os.path.join(REPO, ".collections")] + args
    theirs = " ".join([sys.executable, script, base] + args)
    try:
        return subprocess.run(["farm-bench", "-n", str(runs), "--timeout", "1800", "--vs",
                               theirs, "--"] + mine, capture_output=True, text=True,
                              check=False).stdout
    finally:
        os.unlink(script)


def bench_import(runs: int, base: str, work: str) -> str:
    src = os.path.join(work, "layer.tar")
    with tarfile.open(src, "w") as tar:
        for n in range(32):
            data = os.urandom(8 << 20)
            info = tarfile.TarInfo("d/f%d" % n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return farm(runs, RUN_IMPORT, base, [src, work])


def bench_pull(runs: int, base: str, work: str) -> str:
    from pull import build_layout
    from tests.support.registry import Registry
    from tests.support.tars import LayerTar, write
    from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
    info = build_layout(work, ["usr/include", "usr/lib/gcc", "usr/share/perl"])
    template = os.path.join(work, "template")
    layer_import({"data_root": template, "src": write(os.path.join(work, "x.tar"),
                                                      LayerTar().file("x", b"x").bytes())})
    reg = Registry()
    try:
        name = reg.push(info["layout"], "big", "bench/big:1")
        return farm(runs, RUN_PULL, base, [name, template, work])
    finally:
        reg.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--base", required=True, help="a directory holding the baseline's "
                        "ansible_collections/strata/layers")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", default="/var/tmp")
    parser.add_argument("cases", nargs="*", default=["import", "pull"])
    args = parser.parse_args()
    for case in args.cases:
        work = tempfile.mkdtemp(prefix="ab-bounds-", dir=args.work)
        try:
            print("## %s\n" % case)
            print((bench_import if case == "import" else bench_pull)(args.runs, args.base, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
