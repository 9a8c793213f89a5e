"""Images for the image_distribute scenario and benchmark: one chain of layers and its
prefixes, as OCI archives: ``p1.tar`` (the bottom layer) ... ``pN.tar`` (the whole image,
tagged ``dist/app:1``; the prefixes are tagged ``dist/pK:1``).

    python -m tests.support.distimages DIR [--layers N] [--size BYTES]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile

from tests.support.registry import image_layout, layer_tar


def oci_archive(layout: str, dest: str) -> None:
    with tarfile.open(dest, "w") as tar:
        for name in sorted(os.listdir(layout)):
            tar.add(os.path.join(layout, name), arcname=name)


def make(directory: str, layers: int = 4, size: int = 2 << 20) -> dict:
    os.makedirs(directory, exist_ok=True)
    tars = [(layer_tar({"layer%d/data" % n: os.urandom(size)}), "gzip") for n in range(layers)]
    made = {}
    for count in range(1, layers + 1):
        ref = "dist/app:1" if count == layers else "dist/p%d:1" % count
        work = tempfile.mkdtemp(prefix="strata-dist-")
        try:
            desc = image_layout(work, ref, tars[:count])
            oci_archive(work, os.path.join(directory, "p%d.tar" % count))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        made["p%d" % count] = desc["image_id"]
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--size", type=int, default=2 << 20)
    args = parser.parse_args()
    for name, image_id in make(args.directory, args.layers, args.size).items():
        print(name, image_id)


if __name__ == "__main__":
    main()
