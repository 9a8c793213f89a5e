"""image_pull of a large image from a loopback registry, side by side with
``skopeo copy`` + ``umoci unpack`` and ``podman pull`` of the same image.

The image is built from real files of this host (directories of /usr, one gzip layer
each, as ``docker build`` would make them), pushed with skopeo to Debian's
docker-registry on 127.0.0.1.  Every run of every tool starts from an empty store /
directory; the registry's blobs are in the page cache for all of them alike.  Medians
of ``--runs`` runs, and the ratio of each tool's median to image_pull's.

    sudo .venv/bin/python benchmarks/pull.py [--runs 5] [--dirs usr/include,usr/lib/gcc]

What each column includes:
  image_pull        manifest, config, download (3 in parallel), verify, decompress, apply
                    (overlay2 on this host), header records, syncfs per layer, image+tag
  skopeo+umoci      skopeo copy docker:// -> oci: (download, verify), then umoci unpack
                    (decompress, apply into one rootfs)
  podman pull       containers/storage with the overlay driver (download, verify,
                    decompress, apply, tar-split), no fsync
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

from _common import LoopFS, file_sha256, sh, timed, wipe
from tests.support.paths import python_env
from tests.support.registry import Registry, missing_tools

DEFAULT_DIRS = "usr/include,usr/lib/gcc,usr/lib/python3.11,usr/libexec,usr/share/perl"
PULL_CODE = ("import json, sys\n"
             "from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull\n"
             "r = image_pull(json.loads(sys.argv[1]))\n"
             "print(json.dumps({'image_id': r['image_id'], 'n': len(r['layers'])}))\n")


def build_layout(work: str, dirs: List[str]) -> Dict[str, object]:
    """An OCI layout with one gzip layer per directory (tar | pigz, numeric owners)."""
    layout = os.path.join(work, "layout")
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    layers, diff_ids, raw_total = [], [], 0
    for directory in dirs:
        tar = os.path.join(work, "layer.tar")
        sh(["tar", "-C", "/", "--sort=name", "--numeric-owner", "-cf", tar, directory])
        raw_total += os.path.getsize(tar)
        diff_ids.append("sha256:" + file_sha256(tar))
        sh(["pigz", "-6", "-n", "-f", tar])  # -> layer.tar.gz, gzip -6 as docker push uses
        digest = "sha256:" + file_sha256(tar + ".gz")
        size = os.path.getsize(tar + ".gz")
        os.rename(tar + ".gz", os.path.join(blobs, digest[7:]))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": digest, "size": size})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "created": "2024-01-01T00:00:00Z", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created_by": "COPY /%s" % d} for d in dirs]}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": write_blob(blobs, config), "size": len(config)},
                           "layers": layers}).encode()
    with open(os.path.join(layout, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": write_blob(blobs, manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "big"}}]}, handle)
    return {"layout": layout, "raw": raw_total, "compressed": sum(l["size"] for l in layers),
            "layers": len(layers)}


def write_blob(blobs: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest[7:]), "wb") as handle:
        handle.write(data)
    return digest


class Bench:
    def __init__(self, work: str, name: str) -> None:
        self.work, self.name = work, name

    def strata(self, out: str) -> None:
        params = {"name": self.name, "insecure": True, "data_root": out}
        sh([sys.executable, "-c", PULL_CODE, json.dumps(params)], env=python_env())

    def strata_repull(self, out: str) -> None:
        self.strata(out)

    def skopeo_umoci(self, out: str) -> Dict[str, float]:
        os.makedirs(out)
        oci = os.path.join(out, "oci")
        copy = timed(lambda: sh(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                                 "docker://" + self.name, "oci:%s:big" % oci]))
        unpack = timed(lambda: sh(["umoci", "unpack", "--image", "%s:big" % oci,
                                   os.path.join(out, "bundle")]))
        return {"copy": copy, "unpack": unpack}

    def podman(self, out: str) -> None:
        # podman wants a runroot path under 50 characters: a short one under /tmp, kept
        # next to the output (as out + ".runroot") so wipe() finds it
        runroot_link = out + ".runroot"
        if not os.path.islink(runroot_link):
            os.symlink(tempfile.mkdtemp(prefix="sbp-", dir="/tmp"), runroot_link)
        sh(["podman", "--root", os.path.join(out, "root"), "--runroot",
            os.readlink(runroot_link), "--storage-driver", "overlay", "pull", "--quiet",
            "--tls-verify=false", self.name])


def median_row(label: str, times: List[float], base: float, compressed: int) -> str:
    med = statistics.median(times)
    rate = "%7.0f" % (compressed / med / 1e6) if "re-pull" not in label else "%7s" % "-"
    return "| %-22s | %7.2f | %7.2f | %7.2f | %s | %5.2fx |" % (
        label, med, min(times), max(times), rate, med / base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dirs", default=DEFAULT_DIRS,
                        help="comma-separated directories under / (one layer each)")
    parser.add_argument("--work", default="/var/tmp", help="where the image is built")
    parser.add_argument("--fs", default="ext4", choices=("ext4", "xfs", "none"),
                        help="a loop filesystem of its own for the stores and bundles (its "
                             "own journal: other work on the host's disk does not stall "
                             "file creation here); none: under --work")
    args = parser.parse_args()
    why = missing_tools()
    if why or not shutil.which("umoci") or not shutil.which("pigz"):
        print("benchmark needs %s, umoci and pigz" % (why or "its tools"))
        return 2
    work = tempfile.mkdtemp(prefix="strata-bench-pull-", dir=args.work)
    registry = None
    loop = None
    try:
        outputs = work
        if args.fs != "none":
            loop = LoopFS(args.fs, os.path.join(work, "fs"), 4096)
            outputs = loop.mountpoint
        dirs = [d.strip().strip("/") for d in args.dirs.split(",") if d.strip()]
        image = build_layout(work, dirs)
        registry = Registry()
        name = registry.push(image["layout"], "big", "bench/big:1")
        print("image: %d layers from /%s; %.0f MB of tar, %.0f MB gzip; registry %s; %d runs; "
              "outputs on %s" % (image["layers"], ", /".join(dirs), image["raw"] / 1e6,
                                 image["compressed"] / 1e6, registry.host, args.runs,
                                 args.fs if loop else args.work))
        bench = Bench(work, name)
        results: Dict[str, List[float]] = {"image_pull": [], "skopeo+umoci": [],
                                           "  skopeo copy": [], "  umoci unpack": []}
        if shutil.which("podman"):
            results["podman pull"] = []
        results["image_pull (re-pull)"] = []
        if shutil.which("podman"):
            results["podman pull (re-pull)"] = []
        for run in range(args.runs):
            for label in ("image_pull", "skopeo+umoci", "podman pull"):
                if label not in results:
                    continue
                out = os.path.join(outputs,
                                   "out-%s-%d" % (label.split()[0].replace("+", "-"), run))
                subprocess.run(["sync"], check=True)
                try:
                    if label == "image_pull":
                        results[label].append(timed(lambda: bench.strata(out)))
                        results["image_pull (re-pull)"].append(timed(lambda: bench.strata(out)))
                    elif label == "skopeo+umoci":
                        parts = bench.skopeo_umoci(out)
                        results[label].append(parts["copy"] + parts["unpack"])
                        results["  skopeo copy"].append(parts["copy"])
                        results["  umoci unpack"].append(parts["unpack"])
                    else:
                        results[label].append(timed(lambda: bench.podman(out)))
                        results["podman pull (re-pull)"].append(timed(lambda: bench.podman(out)))
                finally:
                    wipe(out)
            print("run %d/%d done" % (run + 1, args.runs), file=sys.stderr)
        base = statistics.median(results["image_pull"])
        print("| %-22s | %7s | %7s | %7s | %7s | %6s |"
              % ("tool", "median", "min", "max", "MB/s gz", "ratio"))
        print("|%s|%s|%s|%s|%s|%s|" % ("-" * 24, "-" * 9, "-" * 9, "-" * 9, "-" * 9, "-" * 8))
        for label, times in results.items():
            if times:
                print(median_row(label, times, base, int(image["compressed"])))
        print("(seconds; ratio = median / image_pull median; MB/s over the gzip bytes)")
    finally:
        if registry is not None:
            registry.close()
        if loop is not None:
            loop.close()
        wipe(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
