"""RUN --mount=type=cache filling a package cache from 127.0.0.1: image_build vs buildah
bud vs docker build (dockerd 20.10, BuildKit), uncached and with the cache mount warm.

The "packages" are files of random bytes served by an HTTP server on 127.0.0.1 (in this
process); the step downloads into the cache mount every package it does not hold yet,
then "installs" them (reads them all, writes a small digest into the layer).  Uncached:
a fresh store / root / builder cache, the cache mount empty.  Warm: the same step again
with another value of a build arg it sees (``BUST``), so the build cache misses and the
step runs, but the cache mount already holds every package.  (Not ``--no-cache``:
BuildKit then starts its cache mounts empty too.)  The three tools take turns in each
round (A, B, C, A...).  RUN has the host's network in all three (``--network host`` for buildah and docker).

    sudo .venv/bin/python benchmarks/build_cache_mount.py [--runs N] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import random
import shutil
import tempfile
import threading
from typing import Iterator, Optional

from _common import (Results, engine, loop_fs, machine, podman_cmd, progress,
                     release_podman_root, sh, short_runroot, timed, wipe, workspace)

from tests.support.dockerd import Dockerd, running
from tests.support.rootfs import make_rootfs_tar

BASE = "bench/base:1"
DOCKERFILE = """FROM {base}
ARG URL
ARG BUST
RUN --mount=type=cache,target=/var/cache/pkgs,id=pkgs \\
    cd /var/cache/pkgs && busybox wget -q -O index "$URL/index" && \\
    for f in $(cat index); do [ -f "$f" ] || busybox wget -q "$URL/$f"; done && \\
    mkdir -p /opt && cat $(cat index) | busybox md5sum > /opt/installed
"""


def make_packages(path: str, count: int, size: int) -> int:
    rng = random.Random(17)
    os.makedirs(path)
    names = []
    for index in range(count):
        name = "pkg%03d.deb" % index
        with open(os.path.join(path, name), "wb") as handle:
            handle.write(rng.randbytes(size))
        names.append(name)
    with open(os.path.join(path, "index"), "w") as handle:
        handle.write("\n".join(names) + "\n")
    return count * size


DOWNLOADS = [0]   # package files served so far: shows that a warm cache mount was used


@contextlib.contextmanager
def serve(directory: str) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=directory, **k)

        def log_message(self, *args):  # type: ignore[no-untyped-def]
            pass

        def log_request(self, code="-", size="-"):  # type: ignore[no-untyped-def]
            if self.path.startswith("/pkg"):
                DOWNLOADS[0] += 1

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Ours:
    def __init__(self, out: str, base: str, url: str) -> None:
        self.out, self.base, self.url = out, base, url
        self.root = ""

    def fresh(self) -> None:
        self.root = os.path.join(self.out, "store")
        wipe(self.root)
        engine("_ops.storage_driver").storage_driver({"data_root": self.root, "driver": "overlay2"})
        engine("_ops.layer_import").layer_import({"data_root": self.root, "src": self.base})

    def build(self, bust: str) -> None:
        engine("_ops.image_build").image_build({
            "data_root": self.root, "spec": DOCKERFILE.format(base=BASE),
            "build_args": {"URL": self.url, "BUST": bust}, "tag": ["bench/out:1"]})


class Buildah:
    def __init__(self, out: str, base: str, url: str, context: str) -> None:
        self.root = os.path.join(out, "buildah-root")
        self.base, self.url, self.context = base, url, context
        self.runroot = ""
        self.tmp = ""

    def fresh(self, runroot: str) -> None:
        self.runroot = runroot
        # buildah keeps cache mounts under $TMPDIR/buildah-cache-<uid>: one per round
        self.tmp = tempfile.mkdtemp(prefix="sbt-", dir="/var/tmp")
        sh(podman_cmd(self.root, runroot, "buildah") + [
            "pull", "-q", "docker-archive:" + self.base])

    def build(self, bust: str) -> None:
        sh(podman_cmd(self.root, self.runroot, "buildah") + [
            "bud", "--layers", "--pull=never", "--network", "host", "--isolation", "chroot",
            "-q", "--build-arg", "URL=" + self.url, "--build-arg", "BUST=" + bust,
            "-t", "bench/out:1", self.context], env=dict(os.environ, TMPDIR=self.tmp))

    def release(self) -> None:
        release_podman_root(self.root, self.runroot)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Docker:
    """docker build against a private dockerd 20.10 (tests.support.dockerd's: own data
    root, exec root, socket; no bridge, no iptables; the driver dockerd picks)."""

    def __init__(self, daemon: Dockerd, base: str, url: str, context: str) -> None:
        self.daemon, self.url, self.context = daemon, url, context
        sh(self.daemon.cmd("load", "-q", "-i", base))

    def fresh(self) -> None:
        sh(self.daemon.cmd("builder", "prune", "-af"))

    def build(self, bust: str) -> None:
        sh(self.daemon.cmd("build", "-q", "--network", "host", "--build-arg", "URL=" + self.url,
                           "--build-arg", "BUST=" + bust, "-t", "bench/out:1", self.context),
           env=dict(os.environ, DOCKER_BUILDKIT="1"))


def build_base(work: str, out: str) -> str:
    root = os.path.join(out, "seed")
    tar = make_rootfs_tar(os.path.join(work, "rootfs.tar"), os.path.join(work, "rootfs"))
    engine("_ops.layer_import").layer_import({"data_root": root, "src": tar, "tag": [BASE]})
    archive = os.path.join(work, "base.tar")
    engine("_ops.image_export").image_export({"data_root": root, "image": BASE,
                                              "dest": archive, "format": "docker-archive"})
    wipe(root)
    return archive


FETCHED: dict = {}


def measure(results: Results, label: str, build) -> None:  # type: ignore[no-untyped-def]
    before = DOWNLOADS[0]
    results.add(label, timed(build))
    FETCHED.setdefault(label, []).append(DOWNLOADS[0] - before)


def rounds(ours: Ours, buildah: Buildah, docker: Optional[Docker], runs: int,
           results: Results) -> None:
    for run in range(runs):
        ours.fresh()
        measure(results, "image_build, uncached", lambda: ours.build("cold%d" % run))
        with short_runroot("sbb-") as runroot:
            buildah.fresh(runroot)
            try:
                measure(results, "buildah bud, uncached",
                        lambda: buildah.build("cold%d" % run))
                if docker is not None:
                    docker.fresh()
                    measure(results, "docker build, uncached",
                            lambda: docker.build("cold%d" % run))
                measure(results, "image_build, cache mount warm",
                        lambda: ours.build("warm%d" % run))
                measure(results, "buildah bud, cache mount warm",
                        lambda: buildah.build("warm%d" % run))
                if docker is not None:
                    measure(results, "docker build, cache mount warm",
                            lambda: docker.build("warm%d" % run))
            finally:
                buildah.release()
        progress("round %d/%d done" % (run + 1, runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packages", type=int, default=60)
    parser.add_argument("--size-kib", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="2 runs, 10 packages")
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument("--work", default="/var/tmp")
    args = parser.parse_args()
    runs, count = (2, 10) if args.quick else (args.runs, args.packages)
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(workspace("cachemount", args.work))
        out = stack.enter_context(loop_fs("ext4", work, 4096))
        total = make_packages(os.path.join(work, "www"), count, args.size_kib << 10)
        url = stack.enter_context(serve(os.path.join(work, "www")))
        base = build_base(work, out)
        context = os.path.join(work, "context")
        os.makedirs(context)
        with open(os.path.join(context, "Dockerfile"), "w") as handle:
            handle.write(DOCKERFILE.format(base=BASE))
        print("%d packages, %.1f MB served from 127.0.0.1; base: busybox rootfs; %d runs"
              % (count, total / 1e6, runs))
        print(machine(out))
        docker = None
        if not args.no_docker:
            daemon = stack.enter_context(running(os.path.join(out, "docker-data"), work,
                                                 storage_driver=None))
            docker = Docker(daemon, base, url, context)
        results = Results()
        rounds(Ours(out, base, url), Buildah(out, base, url, context), docker, runs, results)
        print("\n" + results.table(base="image_build, uncached", extra={
            "packages fetched": lambda label, _m: "/".join(str(n) for n in FETCHED[label])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
