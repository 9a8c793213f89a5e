"""image_build: a fully cached rebuild of a spec whose context holds a few thousand
files, side by side with a plain hash of that context; and a build with RUN steps side
by side with ``buildah bud --layers`` of the same spec.

The context is generated at run time (``--files`` files in nested directories, sizes
log-uniform from 200 B to 128 KiB, pseudo-random content from a fixed seed).  The base image is a
busybox root filesystem (Debian's busybox-static) imported into our store and exported
with ``image_export`` as a docker-archive, which buildah pulls into a throwaway root
(storage driver overlay, runroot a short path under /tmp).  Stores and buildah's root
are on a loop filesystem of the benchmark's own; the context is in the page cache for
every tool alike.  Runs are interleaved; medians of ``--runs``.

    sudo .venv/bin/python benchmarks/build.py [--runs 5] [--files 3000] [--quick]

What each row includes:
  cached rebuild          ``image_build`` in-process on a store that built the spec
                          before: store open and lock, spec parse, the context walk with a
                          sha256 of every file (the COPY cache key), a cache lookup per
                          step, the tag check
  sha256 of the context   hashlib over every file of the context, in-process
                          (os.walk + read in 1 MiB chunks: the floor for any builder that
                          keys COPY on content)
  find | xargs sha256sum  the same with coreutils (a subprocess)
  build with RUN steps    ``image_build`` with no cache on a fresh store holding the base:
                          COPY of the context, three RUN steps in namespaces, commits,
                          syncfs per layer; vs ``buildah bud --layers`` on a fresh root
                          holding the base (crun, its own namespaces, no fsync)
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import sys
from typing import Dict, List, Optional

from _common import (Results, engine, loop_fs, machine, podman_cmd, progress,
                     release_podman_root, sh, short_runroot, syncfs, timed, verdict, wipe,
                     workspace)
from tests.support.rootfs import make_rootfs_tar

BASE = "bench/base:1"
CACHED_SPEC = """FROM {base}
COPY . /app
ENV APP=/app
WORKDIR /app
CMD ["/bin/sh"]
"""
RUN_SPEC = """FROM {base}
COPY . /app
RUN mkdir -p /data && cp -r /app/d00 /data/ && echo built > /data/stamp
RUN rm -rf /app/d01 && touch /data/more && ls -R /data | wc -l > /data/count
ENV MODE=bench
RUN echo "$MODE" > /etc/mode && chmod 600 /etc/mode
CMD ["/bin/sh"]
"""


def make_context(path: str, files: int) -> Dict[str, int]:
    """``files`` files in directories of 100, sizes log-uniform from 200 B to 128 KiB."""
    rng = random.Random(20240501)
    total = 0
    for index in range(files):
        directory = os.path.join(path, "d%02d" % (index // 100), "s%d" % (index % 7))
        os.makedirs(directory, exist_ok=True)
        size = int(200 * ((1 << 17) / 200) ** rng.random()) if index % 10 else 200
        with open(os.path.join(directory, "f%05d.dat" % index), "wb") as handle:
            handle.write(rng.randbytes(size))
        total += size
    return {"files": files, "bytes": total}


def hash_context(path: str) -> str:
    outer = hashlib.sha256()
    for top, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            hasher = hashlib.sha256()
            with open(os.path.join(top, name), "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(chunk)
            outer.update(hasher.digest())
    return outer.hexdigest()


def sha256sum_context(path: str) -> None:
    sh(["sh", "-c", "find . -type f -print0 | xargs -0 sha256sum > /dev/null"], cwd=path)


class Ours:
    def __init__(self, out: str, base_archive: str, context: str) -> None:
        self.out, self.base, self.context = out, base_archive, context
        self.builder = engine("_ops.image_build")

    def fresh(self, name: str) -> str:
        root = os.path.join(self.out, name)
        wipe(root)
        engine("_ops.storage_driver").storage_driver({"data_root": root, "driver": "overlay2"})
        engine("_ops.layer_import").layer_import({"data_root": root, "src": self.base})
        syncfs(self.out)
        return root

    def build(self, root: str, spec: str, no_cache: bool = False) -> Dict[str, object]:
        return self.builder.image_build({"data_root": root, "context": self.context,
                                         "spec": spec.format(base=BASE), "tag": ["bench/out:1"],
                                         "no_cache": no_cache})


class Buildah:
    def __init__(self, out: str, base_archive: str, context: str, specfile: str) -> None:
        self.root = os.path.join(out, "buildah-root")
        self.base, self.context, self.specfile = base_archive, context, specfile
        self.runroot: Optional[str] = None
        self.isolation = "oci"

    def cmd(self) -> List[str]:
        return podman_cmd(self.root, self.runroot or "", "buildah")

    def prepare(self) -> None:
        sh(self.cmd() + ["pull", "-q", "docker-archive:" + self.base])
        syncfs(self.root)

    def bud(self) -> None:
        # chroot isolation cannot make a network namespace; the RUN steps use no network
        network = "host" if self.isolation == "chroot" else "none"
        sh(self.cmd() + ["bud", "--layers", "--pull=never", "--network", network, "-q",
                         "--isolation", self.isolation,
                         "-f", self.specfile, "-t", "bench/out:1", self.context])


def try_buildah(tool: Buildah) -> List[str]:
    """Find an isolation under which ``buildah bud`` runs here (tried once each, untimed):
    OCI (crun) first, then chroot.  Returns what failed; ``tool.isolation`` is set to
    the one that worked, or None."""
    failures = []
    for isolation in ("oci", "chroot"):
        tool.isolation = isolation
        with short_runroot("sbb-") as runroot:
            tool.runroot = runroot
            try:
                tool.prepare()
                tool.bud()
                return failures
            except RuntimeError as exc:
                failures.append("--isolation %s: %s" % (isolation, " ".join(
                    str(exc).split("\\n", maxsplit=1)[0].split())[-300:]))
            finally:
                release_podman_root(tool.root, runroot)
    tool.isolation = None  # type: ignore[assignment]
    return failures


def cached_rounds(ours: Ours, runs: int, results: Results) -> None:
    root = ours.fresh("store-cached")
    ours.build(root, CACHED_SPEC)
    again = ours.build(root, CACHED_SPEC)
    if again["changed"] or not all(h["cached"] for h in again["history"][-4:]):
        raise RuntimeError("the rebuild was not fully cached: %s" % again["history"])
    for run in range(runs):
        results.add("cached rebuild (image_build)", timed(lambda: ours.build(root, CACHED_SPEC)))
        results.add("sha256 of the context (hashlib)", timed(lambda: hash_context(ours.context)))
        results.add("find | xargs sha256sum", timed(lambda: sha256sum_context(ours.context)))
        progress("cached: run %d/%d done" % (run + 1, runs))
    wipe(root)


def run_rounds(ours: Ours, buildah: Optional[Buildah], runs: int, results: Results) -> None:
    for run in range(runs):
        root = ours.fresh("store-run")
        results.add("image_build, RUN spec", timed(lambda: ours.build(root, RUN_SPEC, True)))
        results.add("image_build, RUN spec, cached", timed(lambda: ours.build(root, RUN_SPEC)))
        wipe(root)
        if buildah is not None:
            with short_runroot("sbb-") as runroot:
                buildah.runroot = runroot
                try:
                    buildah.prepare()
                    results.add("buildah bud --layers, RUN spec", timed(buildah.bud))
                    results.add("buildah bud --layers, RUN spec, cached", timed(buildah.bud))
                finally:
                    release_podman_root(buildah.root, runroot)
        progress("RUN spec: run %d/%d done" % (run + 1, runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="2 runs, 500 files")
    parser.add_argument("--no-buildah", action="store_true")
    parser.add_argument("--work", default="/var/tmp")
    args = parser.parse_args()
    runs, files = (2, 500) if args.quick else (args.runs, args.files)
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(workspace("build", args.work))
        out = stack.enter_context(loop_fs("ext4", work, 8192))
        context = os.path.join(work, "context")
        made = make_context(context, files)
        base = build_base(work, out)
        specfile = os.path.join(work, "Containerfile.run")
        with open(specfile, "w") as handle:
            handle.write(RUN_SPEC.format(base="localhost/" + BASE))
        print("context: %d files, %.1f MB; base: busybox rootfs; %d runs"
              % (made["files"], made["bytes"] / 1e6, runs))
        print(machine(out))
        ours = Ours(out, base, context)
        results = Results()
        cached_rounds(ours, runs, results)
        buildah: Optional[Buildah] = None
        notes = ["skipped (--no-buildah)"]
        if not args.no_buildah and not shutil.which("buildah"):
            notes = ["buildah is not installed (apt-get install -y buildah)"]
        elif not args.no_buildah:
            buildah = Buildah(out, base, context, specfile)
            notes = try_buildah(buildah)
            if buildah.isolation is None:
                buildah = None
        run_rounds(ours, buildah, runs, results)
        print("\n" + results.table(base="cached rebuild (image_build)"))
        report(results, buildah, notes)
    return 0


def build_base(work: str, out: str) -> str:
    root = os.path.join(out, "seed")
    tar = make_rootfs_tar(os.path.join(work, "rootfs.tar"), os.path.join(work, "rootfs"))
    engine("_ops.layer_import").layer_import({"data_root": root, "src": tar, "tag": [BASE]})
    archive = os.path.join(work, "base.tar")
    engine("_ops.image_export").image_export({"data_root": root, "image": BASE,
                                              "dest": archive, "format": "docker-archive"})
    wipe(root)
    return archive


def report(results: Results, buildah: Optional[Buildah], notes: List[str]) -> None:
    med = results.median
    cached = med("cached rebuild (image_build)")
    ratio = cached / med("sha256 of the context (hashlib)")
    print("\ncached rebuild / hashlib hash of the context: %.2fx; / sha256sum: %.2fx"
          % (ratio, cached / med("find | xargs sha256sum")))
    print("target: cached rebuild under 1.5x of hashing the context: %s" % verdict(ratio < 1.5))
    for note in notes:
        print("buildah: %s" % note)
    if buildah is None:
        print("buildah: not compared")
        return
    print("buildah ran with --isolation %s" % buildah.isolation)
    print("RUN spec, no cache: image_build %.2f s vs buildah bud --layers %.2f s (%.2fx); "
          "cached: %.2f s vs %.2f s (%.2fx)" % (
              med("image_build, RUN spec"), med("buildah bud --layers, RUN spec"),
              med("image_build, RUN spec") / med("buildah bud --layers, RUN spec"),
              med("image_build, RUN spec, cached"), med("buildah bud --layers, RUN spec, cached"),
              med("image_build, RUN spec, cached")
              / med("buildah bud --layers, RUN spec, cached")))


if __name__ == "__main__":
    sys.exit(main())
