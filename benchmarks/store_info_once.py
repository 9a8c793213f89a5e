"""One ``store_info`` as a process, for ``farm-bench`` against another tree.

    sudo .venv/bin/python benchmarks/store_info_once.py make DIR [--driver vfs] [--count 100]
    farm-bench -n 7 --vs "python benchmarks/store_info_once.py run DIR/store-vfs --tree OLD" \\
        -- python benchmarks/store_info_once.py run DIR/store-vfs

``make``: a store in DIR with COUNT fresh containers on the image of
``benchmarks/containers.py`` (busybox + /usr/share/perl), left there for the runs (remove
DIR afterwards); ``--init``: each with an init layer, as the ``container`` module creates
one.  ``run``: ``store_info`` with sizes (``--no-sizes``: ``sizes: false``), once, importing the collection from
``--tree`` (a checkout with ``.collections/`` made by ``scripts/setup``; default this
one), so two commits can be timed on one store.
"""
from __future__ import annotations

import argparse
import os
import sys


def make(args: argparse.Namespace) -> None:
    import containers  # noqa: E402  (this tree's benchmark: sets up sys.path)
    os.makedirs(args.dir, exist_ok=True)
    image = containers.build_image(args.dir, args.dir)
    ours = containers.Ours(args.dir, args.driver, str(image["archive"]))
    ours.fresh()
    init = list(containers.engine("_runtime_spec").INIT_ENTRIES) if args.init else None
    ours.create_all(args.count, init)
    print(ours.root)


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.join(os.path.abspath(args.tree), ".collections"))
    from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
    result = store_info({"data_root": args.store, "sizes": not args.no_sizes})
    print(len(result["containers"]), result["disk_usage"]["containers"],
          result["disk_usage"]["on_disk"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("make")
    made.add_argument("dir")
    made.add_argument("--driver", default="vfs")
    made.add_argument("--count", type=int, default=100)
    made.add_argument("--init", action="store_true",
                      help="each container with an init layer, as the container module makes "
                           "it (a default run's entries): vfs then compares each copy with its "
                           "own init copy")
    ran = sub.add_parser("run")
    ran.add_argument("store")
    ran.add_argument("--no-sizes", action="store_true", help="sizes: false")
    ran.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    (make if args.command == "make" else run)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
