"""image_push of a large one-layer image to a loopback registry, side by side with
``skopeo copy`` and ``podman push`` of the same image to the same kind of registry; then
the re-push of each (the registry has everything).

The layer is real files of this host (``/usr/include`` and ``/usr/lib/gcc``, ~250 MB of
tar), imported once into a strata store (overlay2 on a loop filesystem of its own), into
a podman root (``podman load`` of our export) and kept as an OCI layout for skopeo.
Every first push of every tool goes to a registry of its own, freshly started (no blob
is there yet), and our store's push records are cleared before it, so each first push
compresses the whole layer.  Tools take turns within each run; medians of ``--runs``.

    sudo .venv/bin/python benchmarks/push.py [--runs 3] [--dirs usr/include,usr/lib/gcc]

What each row includes:
  image_push          a python process: store opened, layer re-emitted from the store and
                      checked against its diff_id, gzip -6 (fixed header, 1 MiB blocks on 2
                      threads), chunked upload (32 MiB PATCHes), config, manifest, tag
  skopeo copy         oci: layout (uncompressed layer) -> docker://, --dest-compress
                      (gzip, pgzip), as a user would push a built layout
  podman push         from podman's overlay storage, gzip on the way (its default)
  ... (re-push)       the same command again: the registry has every blob and the manifest
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys

from _common import (Results, engine, loop_fs, machine, make_tar, progress, sh, timed, wipe,
                     workspace)
from tests.support.paths import python_env
from tests.support.registry import Registry, missing_tools

DEFAULT_DIRS = "usr/include,usr/lib/gcc"
PUSH_CODE = ("import json, sys\n"
             "from ansible_collections.strata.layers.plugins.module_utils._ops.image_push "
             "import image_push\n"
             "r = image_push(json.loads(sys.argv[1]))\n"
             "print(json.dumps({'digest': r['digest'], 'bytes': r['bytes_sent'], "
             "'blobs': r['blobs']}))\n")


def child_cpu(fn) -> float:
    """CPU seconds (user + system) of the child processes ``fn`` ran: what a command
    costs apart from the wait for a loaded machine's processors."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class Bench:
    def __init__(self, work: str, store: str, layout: str, podman: list) -> None:
        self.work, self.store, self.layout, self.podman = work, store, layout, podman
        self.last = {}

    def strata(self, host: str) -> None:
        params = {"name": "bench:1", "dest": "%s/bench/strata:1" % host, "insecure": True,
                  "data_root": self.store}
        out = sh([sys.executable, "-c", PUSH_CODE, json.dumps(params)], env=python_env(),
                 text=True).stdout
        self.last = json.loads(out.strip().splitlines()[-1])

    def in_process(self, host: str) -> None:
        """The module's own work, without the interpreter's start and imports."""
        push = engine("_ops.image_push").image_push
        result = push({"name": "bench:1", "dest": "%s/bench/strata:1" % host, "insecure": True,
                       "data_root": self.store})
        assert result["bytes_sent"] == 0 and not result["changed"], result

    def skopeo(self, host: str) -> None:
        sh(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "--dest-compress",
            "--dest-compress-format", "gzip", "oci:%s:bench" % self.layout,
            "docker://%s/bench/skopeo:1" % host])

    def podman_push(self, host: str) -> None:
        sh(self.podman + ["push", "--quiet", "--tls-verify=false", "localhost/bench:1",
                          "docker://%s/bench/podman:1" % host])


def prepare(work: str, outputs: str, dirs: list) -> Bench:
    tar = os.path.join(work, "layer.tar")
    made = make_tar(tar, dirs)
    progress("layer: %.0f MB, %d entries" % (made["bytes"] / 1e6, made["entries"]))
    store = os.path.join(outputs, "store")
    engine("_ops.storage_driver").storage_driver({"data_root": store, "driver": "overlay2"})
    engine("_ops.layer_import").layer_import({"data_root": store, "src": tar, "tag": ["bench:1"]})
    layout = os.path.join(work, "layout")
    engine("_ops.image_export").image_export({"data_root": store, "image": "bench:1",
                                              "dest": layout, "format": "oci-layout"})
    # skopeo names the image by the layout's ref annotation: "bench:1" -> ref "bench:1"
    with open(os.path.join(layout, "index.json")) as handle:
        index = json.load(handle)
    for entry in index["manifests"]:
        entry.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = "bench"
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump(index, handle)
    archive = os.path.join(work, "image.tar")
    engine("_ops.image_export").image_export({"data_root": store, "image": "bench:1", "dest": archive})
    runroot = os.path.join("/tmp", "sbpush-%d" % os.getpid())
    podman = ["podman", "--root", os.path.join(outputs, "podman"), "--runroot", runroot,
              "--storage-driver", "overlay"]
    sh(podman + ["load", "-q", "-i", archive])
    sh(podman + ["tag", "bench:1", "localhost/bench:1"])
    os.unlink(tar)
    os.unlink(archive)
    return Bench(work, store, layout, podman)


def one_run(bench: Bench, results: Results, order: list) -> None:
    for label in order:
        registry = Registry()
        try:
            if label == "image_push":
                wipe(os.path.join(bench.store, "registry"))   # a first push: nothing known
                subprocess.run(["sync"], check=True)
                results.add(label, timed(lambda: bench.strata(registry.host)))
                sent = bench.last["bytes"]
                results.add(label + " (re-push)", timed(lambda: bench.strata(registry.host)))
                assert bench.last["bytes"] == 0, bench.last
                results.add(label + " (re-push, in-process)",
                            timed(lambda: bench.in_process(registry.host)))
                results.add(label + " (re-push) cpu", child_cpu(lambda: bench.strata(registry.host)))
                results.add("  bytes sent (MB)", sent / 1e6)
            elif label == "skopeo copy":
                subprocess.run(["sync"], check=True)
                results.add(label, timed(lambda: bench.skopeo(registry.host)))
                results.add(label + " (re-push)", timed(lambda: bench.skopeo(registry.host)))
                results.add(label + " (re-push) cpu", child_cpu(lambda: bench.skopeo(registry.host)))
            else:
                subprocess.run(["sync"], check=True)
                results.add(label, timed(lambda: bench.podman_push(registry.host)))
                results.add(label + " (re-push)", timed(lambda: bench.podman_push(registry.host)))
                results.add(label + " (re-push) cpu",
                            child_cpu(lambda: bench.podman_push(registry.host)))
        finally:
            registry.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dirs", default=DEFAULT_DIRS)
    parser.add_argument("--work", default="/var/tmp")
    args = parser.parse_args()
    why = missing_tools()
    if why or not shutil.which("podman"):
        print("benchmark needs %s and podman" % (why or "its tools"))
        return 2
    dirs = [d.strip().strip("/") for d in args.dirs.split(",") if d.strip()]
    with workspace("push", args.work) as work, loop_fs("ext4", work, 3072) as outputs:
        bench = prepare(work, outputs, dirs)
        try:
            print(machine(outputs))
            results = Results()
            labels = ["image_push", "skopeo copy", "podman push"]
            for run in range(args.runs):
                order = labels[run % 3:] + labels[:run % 3]       # each goes first in turn
                one_run(bench, results, order)
                progress("run %d/%d done" % (run + 1, args.runs))
            ordered = Results()
            for label in ["image_push", "skopeo copy", "podman push", "image_push (re-push)",
                          "image_push (re-push, in-process)", "image_push (re-push) cpu",
                          "skopeo copy (re-push) cpu", "podman push (re-push) cpu",
                          "skopeo copy (re-push)", "podman push (re-push)",
                          "  bytes sent (MB)"]:
                for value in results.samples.get(label, []):
                    ordered.add(label, value)
            print(ordered.table(base="image_push"))
            print("(seconds; ratio = median / image_push median; re-push goal < 0.5 s: %s)"
                  % ("met" if ordered.median("image_push (re-push)") < 0.5 else "MISSED"))
        finally:
            subprocess.run(bench.podman + ["rmi", "-a", "-f"], capture_output=True, check=False)
            from _common import release_podman_root
            release_podman_root(os.path.join(outputs, "podman"), bench.podman[4])
    return 0


if __name__ == "__main__":
    sys.exit(main())
