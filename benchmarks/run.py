"""Issue 15: create + mount + run ``true`` + remove a container, three ways, on the same
small image (the busybox root filesystem the tests use, imported into each):

- ours: the ``strata.layers.container`` module run as the process Ansible runs
  (``python plugins/modules/container.py args.json``: its imports, the store lock, the
  layer and init layer, the bundle, runc, removal) with ``detach: false,
  auto_remove: true``: ``docker run --rm`` in one process;
- ``docker run --rm --network none`` against a private dockerd 20.10 (started here with
  its own data root on the same loop filesystem, stopped by its pid at the end);
- ``podman run --rm --runtime runc --network none`` with a throwaway root there too,
  and ``--ulimit nofile=1024:1024 --ulimit nproc=1024:1024``: podman's default limits
  are above what runc may set here and it fails without them.

Each is timed from outside, wall clock, process start to exit; they take turns (ours,
docker, podman, ours, ...) so load from other work falls on all three; medians.  Two
more rows explain ours: the same call made in-process (the engine alone, as the other
benchmarks time it) and the floor every Ansible module pays (the interpreter and
``ansible.module_utils.basic``).

    sudo .venv/bin/python benchmarks/run.py [--runs N] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (REPO, Results, engine, loop_fs, machine, podman_cmd,  # noqa: E402
                     progress, release_podman_root, sh, short_runroot, timed, workspace)
from tests.support.dockerd import running  # noqa: E402

PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def image_tar(work: str) -> str:
    from tests.support import rootfs
    return rootfs.make_rootfs_tar(os.path.join(work, "busybox.tar"), work)


def prepare_ours(base: str, tar: str) -> list:
    root = os.path.join(base, "strata")
    engine("_ops.layer_import").layer_import({"data_root": root, "src": tar, "format": "layer",
                                              "tag": ["bench:1"]})
    args = os.path.join(base, "args.json")
    with open(args, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {
            "data_root": root, "name": "bench", "image": "bench:1", "command": ["true"],
            "detach": False, "auto_remove": True}}, handle)
    return [PYTHON, os.path.join(REPO, "plugins", "modules", "container.py"), args]


IN_PROCESS = "ours, the engine call alone (in-process)"
FLOOR = "python -c 'import ansible.module_utils.basic'"


def in_process_run(argv: list):
    """The module's one call, made in this process: what the engine itself costs, without
    the interpreter's start-up and Ansible's module boilerplate (every module pays those)."""
    with open(argv[-1]) as handle:
        params = json.load(handle)["ANSIBLE_MODULE_ARGS"]
    params = dict(params, name="bench-in-process", lock_timeout=300.0)
    run = engine("_ops.container").container
    return lambda: run(dict(params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    runs = 3 if opts.quick else opts.runs
    results = Results()
    with workspace("run") as work, loop_fs("ext4", work, 1024) as base, \
            running(os.path.join(base, "docker"), work) as dockerd, \
            short_runroot("sbp-") as podman_run:
        tar = image_tar(work)
        ours = prepare_ours(base, tar)
        podman_root = os.path.join(base, "podman")
        try:
            sh(dockerd.cmd("import", tar, "bench:1"))
            podman = podman_cmd(podman_root, podman_run)
            sh(podman + ["import", tar, "bench:1"])
            commands = {
                "ours (container module, runc)": ours,
                "docker run --rm --network none": dockerd.cmd(
                    "run", "--rm", "--network", "none", "bench:1", "true"),
                "podman run --rm --runtime runc": podman + [
                    "run", "--rm", "--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=1024:1024",
                    "bench:1", "true"],
            }
            # the module's bytecode cached as an installed collection's is (PYTHONDONTWRITEBYTECODE
            # would make it compile the engine at every run)
            env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".collections"))
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            floor = [PYTHON, "-c", "import ansible.module_utils.basic"]
            in_process = in_process_run(ours)
            for label, argv in commands.items():       # warm-up, not counted
                sh(argv, env=env)
            in_process()
            for index in range(runs):
                progress("run %d/%d" % (index + 1, runs))
                for label, argv in commands.items():
                    results.add(label, timed(lambda: sh(argv, env=env)))
                results.add(IN_PROCESS, timed(in_process))
                results.add(FLOOR, timed(lambda: sh(floor, env=env)))
        finally:
            release_podman_root(podman_root, podman_run)
    print("create + mount + run `true` + remove, busybox image (%d runs, turns taken)" % runs)
    print(machine())
    print(results.table(base="ours (container module, runc)"))


if __name__ == "__main__":
    main()
