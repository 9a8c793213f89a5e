"""image_build cost against the number of steps (issue 18: 1,200 LABEL lines wrote
89 MiB when every config-only step stored an image with the whole history so far).

For each size N a spec of ``FROM scratch`` and N ``LABEL`` lines is built on a fresh
vfs store (uncached), side by side with ``buildah bud`` of the same Dockerfile on a
throwaway root (no --layers: one image at the end).  Printed per N: our median time,
the bytes our build wrote (``/proc/self/io`` wchar) and stored, buildah's median time,
and the time per step, so that linear cost shows as a flat column.  Runs interleave
ours and buildah's.

    sudo .venv/bin/python benchmarks/build_steps.py [--runs 3] [--sizes 150,300,600,1200]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import List

from _common import (Results, du_bytes, engine, machine, podman_cmd, progress,
                     release_podman_root, sh, timed, wipe, workspace)


def spec_text(steps: int) -> str:
    return "FROM scratch\n" + "".join("LABEL l%d=value-%d\n" % (i, i) for i in range(steps))


def wchar() -> int:
    with open("/proc/self/io") as handle:
        return int([line for line in handle if line.startswith("wchar")][0].split()[1])


def ours(work: str, steps: int) -> List[float]:
    root = os.path.join(work, "store")
    wipe(root)
    engine("_ops.storage_driver").storage_driver({"data_root": root, "driver": "vfs"})
    before = wchar()
    build = engine("_ops.image_build").image_build
    seconds = timed(lambda: build({"data_root": root, "spec": spec_text(steps)}))
    return [seconds, wchar() - before, du_bytes(root)]


def buildah(work: str, steps: int) -> float:
    root = os.path.join(work, "buildah-root")
    runroot = tempfile.mkdtemp(prefix="sbs-", dir="/tmp")   # buildah wants a short path
    context = os.path.join(work, "ctx")
    os.makedirs(context, exist_ok=True)
    with open(os.path.join(context, "Dockerfile"), "w") as handle:
        handle.write(spec_text(steps))
    try:
        return timed(lambda: sh(podman_cmd(root, runroot, "buildah") + [
            "bud", "--pull=never", "-q", "--isolation", "chroot", "-t", "bench/steps:1",
            context]))
    finally:
        release_podman_root(root, runroot)
        wipe(root)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="150,300,600,1200")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results = Results()
    with workspace("bench-steps-") as work:
        print(machine(work))
        for run in range(args.runs):
            for steps in sizes:
                progress("run %d, %d steps" % (run + 1, steps))
                seconds, written, stored = ours(work, steps)
                results.add("ours %d s" % steps, seconds)
                results.add("ours %d written" % steps, written)
                results.add("ours %d stored" % steps, stored)
                results.add("buildah %d s" % steps, buildah(work, steps))
    print("\n| steps | ours (s) | ours per step (ms) | written (MiB) | stored (MiB) "
          "| buildah bud (s) | ours / buildah |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for steps in sizes:
        mine, theirs = results.median("ours %d s" % steps), results.median("buildah %d s" % steps)
        print("| %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (
            steps, mine, 1000 * mine / steps, results.median("ours %d written" % steps) / 2**20,
            results.median("ours %d stored" % steps) / 2**20, theirs, mine / theirs))


if __name__ == "__main__":
    main()
