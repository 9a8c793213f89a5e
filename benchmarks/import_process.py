"""layer_import as users run it (the module as a process, as Ansible runs it), against
GNU ``tar -xf`` + ``sync -f`` of the same layer, ``docker load`` (a private dockerd
20.10, overlay2) and ``podman load`` (overlay) of the same archive, in one run.

The layer is built at run time from directories of this host's /usr (sorted, numeric
owners).  A private dockerd imports it (``docker import``) and writes the archive with
``docker save``: the docker-archive is the one Docker itself writes, and the plain layer
is that archive's ``layer.tar``, so every tool handles the same bytes.  Outputs go to
one ext4 loop filesystem of the benchmark's own (the dockerd data root and the podman
root included); the sources stay in the page cache for every tool alike.

Each round runs, in turn: layer_import of the docker-archive, tar -xf + sync -f,
layer_import of the plain layer, docker load, podman load (interleaved A B A B, so
load from other work falls on all alike; medians of ``--runs``).  Before each timed
command, untimed: its previous output is removed and the filesystem flushed; our store
is set up with its driver (overlay2) and empty, as dockerd and podman's roots are.

    sudo .venv/bin/python benchmarks/import_process.py [--runs 5] [--quick] [--base REF]

With ``--base REF`` the module of commit REF (its plugins from ``git archive``) also
runs in every round, just before ours on the same input (A/B, interleaved).

What each row includes:
  layer_import ...    ``python AnsiballZ_layer_import.py``: the program Ansible runs on a
                      managed host (made by ``ansible`` itself, see _peers.ansiballz):
                      interpreter start, the module_utils unpacked from the zip and
                      compiled, argument parsing, format detection, lock, safe apply,
                      diff_id, header record, syncfs, durable layer record
  tar -xf + sync      GNU tar as root (owners kept), then ``sync -f`` (syncfs) of its
                      output's filesystem: what a durable extraction costs at least
  ... re-run          the plain layer's program run again on the same store: nothing to
                      import, so the fixed cost of running a module
  docker load         ``docker load -i`` against the running daemon (the client's start
                      included); docker's own durability, no extra sync
  podman load         ``podman load -i`` into a fresh root (its own durability)
With ``--floor``, more rows say how low any Python module could go here:
  ansible.builtin.ping  the same kind of program for Ansible's own ``ping``: the fixed
                      cost of any module run that is not ours to cut (interpreter,
                      AnsiballZ, ``ansible.module_utils.basic`` compiled from the zip)
  floor extraction    ``_floor_extract.py``: the least a Python program does to extract
                      the layer durably with its sha256, on both cores (a forked writer
                      process), checking nothing; see its docstring
  floor's interpreter start  ``python -c`` importing what the floor program imports
  floor of a module   ping + floor extraction - that start (a module starts once), per round
Peak RSS is the module process's ru_maxrss (wait4).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Dict, List, Optional

from _common import (Results, dirs_arg, engine, file_sha256, goal, loop_fs, machine,
                     make_tar, podman_cmd, progress, release_podman_root, save_goals, sh,
                     short_runroot, syncfs, timed, verdict, wipe, workspace)
from _peers import PYTHON, Dockerd, ansiballz, dockerd, run_measured
from apply_cpu import tree_of

DEFAULT_DIRS = "usr/include,usr/lib/gcc,usr/lib/python3.11,usr/libexec,usr/share/perl"
QUICK_DIRS = "usr/lib/python3.11,usr/share/perl"
IMAGE = "strata-bench/import:1"
BASE = "tar -xf + sync"
PING = "ansible.builtin.ping"
FLOOR = "floor extraction (2 processes)"
FLOOR_START = "floor's interpreter start"
FLOOR_MODULE = "floor of a module (ping + floor - start)"


class Sources:
    """The docker-archive (``docker save``) and its plain layer."""

    def __init__(self, work: str, dirs: List[str], daemon: Optional[Dockerd]) -> None:
        built = os.path.join(work, "built.tar")
        self.info = make_tar(built, dirs)
        self.diff_id: Optional[str] = None      # the layer's, for --floor's check
        self.archive: Optional[str] = None
        self.layer = built
        if daemon is None:
            return
        daemon.docker("import", built, IMAGE)
        self.archive = os.path.join(work, "docker-save.tar")
        daemon.docker("save", "-o", self.archive, IMAGE)
        daemon.docker("rmi", IMAGE)
        manifest = json.loads(sh(["tar", "-xOf", self.archive, "manifest.json"]).stdout)
        member = manifest[0]["Layers"][0]
        self.layer = os.path.join(work, "layer.tar")
        with open(self.layer, "wb") as out:
            out.write(b"")
        sh(["sh", "-c", 'tar -xOf "$0" "$1" > "$2"', self.archive, member, self.layer])
        os.unlink(built)


class Round:
    """One of each tool, in turn, on the loop filesystem ``out``."""

    def __init__(self, out: str, sources: Sources, daemon: Optional[Dockerd],
                 programs: Dict[str, str], podman: bool, results: Results,
                 cpu: Results) -> None:
        self.out, self.sources, self.daemon = out, sources, daemon
        self.programs, self.podman, self.results = programs, podman, results
        self.cpu = cpu
        self.switch = engine("_ops.storage_driver")
        self.store = os.path.join(out, "store")
        self.rss: List[float] = []

    def fresh_store(self) -> None:
        wipe(self.store)
        self.switch.storage_driver({"data_root": self.store, "driver": "overlay2"})
        syncfs(self.out)

    def ours(self, label: str, rerun: bool = False) -> None:
        self.fresh_store()
        got = run_measured([PYTHON, self.programs[label]])
        self.results.add(label, got["wall"])
        self.cpu.add(label, got["cpu"])
        if "(base" not in label:
            self.rss.append(got["maxrss"])
        if rerun:
            # the same module run again: nothing to import, so this is the fixed cost of
            # a module run (interpreter, Ansible's and our module_utils from the zip,
            # arguments, lock, the stat-key lookup)
            again = run_measured([PYTHON, self.programs[label]])
            self.results.add("layer_import re-run, nothing to do", again["wall"])
            self.cpu.add("layer_import re-run, nothing to do", again["cpu"])
        wipe(self.store)

    def tar(self) -> None:
        dest = os.path.join(self.out, "tar-out")
        wipe(dest)
        os.mkdir(dest)
        syncfs(self.out)
        extract = run_measured(["tar", "-C", dest, "--numeric-owner", "-xf",
                                self.sources.layer])
        flush = run_measured(["sync", "-f", dest])
        self.results.add(BASE, extract["wall"] + flush["wall"])
        self.results.add("tar -xf (no sync)", extract["wall"])
        self.cpu.add(BASE, extract["cpu"] + flush["cpu"])
        wipe(dest)

    def floor(self) -> None:
        """Ansible's fixed cost, the floor extraction, and the two added up."""
        ping = run_measured([PYTHON, self.programs[PING]])
        # the floor program's own interpreter start and imports: a module has one start,
        # counted in ping's row already
        start = run_measured([PYTHON, "-c", "import ctypes, hashlib, json, pickle, struct, "
                              "threading, traceback"])
        dest = os.path.join(self.out, "floor-out")
        wipe(dest)
        os.mkdir(dest)
        syncfs(self.out)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_floor_extract.py")
        got = run_measured([PYTHON, script, self.sources.layer, dest])
        diff_id = json.loads(got["output"].splitlines()[-1])["diff_id"]
        if diff_id != self.sources.diff_id:
            raise RuntimeError("the floor extraction hashed %s, the layer is %s"
                               % (diff_id, self.sources.diff_id))
        for results, key in ((self.results, "wall"), (self.cpu, "cpu")):
            results.add(PING, ping[key])
            results.add(FLOOR, got[key])
            results.add(FLOOR_START, start[key])
            results.add(FLOOR_MODULE, ping[key] + got[key] - start[key])
        wipe(dest)

    def docker_load(self) -> None:
        assert self.daemon is not None and self.sources.archive is not None
        syncfs(self.out)
        self.results.add("docker load", timed(lambda: self.daemon.docker(
            "load", "-q", "-i", self.sources.archive)))
        self.daemon.docker("rmi", IMAGE)
        syncfs(self.out)

    def podman_load(self) -> None:
        assert self.sources.archive is not None
        root = os.path.join(self.out, "podman")
        with short_runroot() as runroot:
            try:
                syncfs(self.out)
                try:
                    got = run_measured(podman_cmd(root, runroot) +
                                       ["load", "-q", "-i", self.sources.archive])
                except RuntimeError as exc:
                    # a peer's failure (others' work on a shared machine may remove
                    # podman's /run/libpod meanwhile) costs its sample, not the run
                    progress("podman load failed, sample left out: %s" % str(exc)[-200:])
                    return
                self.results.add("podman load", got["wall"])
                self.cpu.add("podman load", got["cpu"])
            finally:
                release_podman_root(root, runroot)

    def run(self, number: int = 0) -> None:
        for label in ("layer_import docker-archive", "layer_import plain layer"):
            # the base commit and ours take turns at going first (A B, then B A)
            turn = [p for p in sorted(self.programs) if p.startswith(label + " (base")]
            if label in self.programs:
                turn = turn + [label] if number % 2 == 0 else [label] + turn
            for program in turn:
                self.ours(program, rerun=program == "layer_import plain layer")
            if label.endswith("docker-archive"):
                self.tar()
        if PING in self.programs:
            self.floor()
        if self.daemon is not None:
            self.docker_load()
        if self.podman:
            self.podman_load()


def programs_for(work: str, store: str, sources: Sources, base: Optional[str] = None
                 ) -> Dict[str, str]:
    """The AnsiballZ programs, one per source (made once, untimed), and with ``base``
    the same of that commit."""
    seed = os.path.join(work, "seed.tar")
    make_tar(seed, ["usr/share/doc/tar"])
    seed_args = "data_root=%s src=%s" % (os.path.join(work, "seed-store"), seed)
    programs = {}
    cases = [("layer_import plain layer", sources.layer)]
    if sources.archive is not None:
        cases.insert(0, ("layer_import docker-archive", sources.archive))
    trees = [("", None)]
    if base is not None:
        trees.append((" (base %s)" % base, tree_of(base, work)))
    for suffix, tree in trees:
        for label, src in cases:
            programs[label + suffix] = ansiballz(
                "layer_import", {"data_root": store, "src": src},
                os.path.join(work, "AnsiballZ_%d.py" % len(programs)), seed_args, tree)
    wipe(os.path.join(work, "seed-store"))
    return programs


def report(results: Results, cpu: Results, sources: Sources, rss: List[float],
           args: argparse.Namespace, out: str) -> None:
    info = sources.info
    print("\n## layer_import as a process (as Ansible runs it) against tar, docker, podman\n")
    print("layer: %s, %.0f MB, %d entries; archive: docker save (dockerd 20.10)"
          % (",".join(dirs_arg(args.dirs)), info["bytes"] / 1e6, info["entries"]))
    print("machine: %s" % machine(out))
    with open("/proc/loadavg") as handle:
        print("load average at the end: %s" % " ".join(handle.read().split()[:3]))
    print()
    print(results.table(base=BASE))
    print("\nCPU seconds (user + system of the process and its children; dockerd's work is "
          "not the client's, so docker load has no row):\n")
    print(cpu.table(base=BASE))
    print()
    rows = []
    for label in ("layer_import docker-archive", "layer_import plain layer"):
        if label in results.samples:
            ratio = results.median(label) / results.median(BASE)
            rows.append(goal("import (%s, as Ansible runs it) / tar -xf + sync -f"
                             % label.split(" ", 1)[1], "%.2fx" % ratio, "<= 1.0x", ratio <= 1.0))
            rows.append(goal("same, CPU seconds (not the goal: robust to load)",
                             "%.2fx" % (cpu.median(label) / cpu.median(BASE)), "-", None))
    for label in ("layer_import docker-archive", "layer_import plain layer"):
        base = "%s (base %s)" % (label, args.base)
        if args.base and label in results.samples and base in results.samples:
            rows.append(goal("%s, this tree / base %s" % (label, args.base), "%.2fx wall, %.2fx CPU"
                             % (results.median(label) / results.median(base),
                                cpu.median(label) / cpu.median(base)), "(A/B)", None))
    if FLOOR_MODULE in results.samples:
        floor = results.median(FLOOR_MODULE)
        rows.append(goal("the least any Python module could take here (%s) / tar -xf + sync -f"
                         % FLOOR_MODULE, "%.2fx" % (floor / results.median(BASE)), "(floor)",
                         None))
        for label in ("layer_import docker-archive", "layer_import plain layer"):
            if label in results.samples:
                rows.append(goal("%s / that floor" % label, "%.2fx (%.3f s above it)"
                                 % (results.median(label) / floor,
                                    results.median(label) - floor), "(floor)", None))
    for peer in ("docker load", "podman load"):
        if peer in results.samples and "layer_import docker-archive" in results.samples:
            ratio = results.median("layer_import docker-archive") / results.median(peer)
            rows.append(goal("import of the docker-archive / %s" % peer, "%.2fx" % ratio,
                             "(peer)", None))
    if rss:
        rows.append(goal("peak RSS of the layer_import process", "%.1f MB" % (max(rss) / 1e6),
                         "< 100 MB", max(rss) < 100e6))
    for row in rows:
        met = "" if row["met"] is None else ", " + verdict(bool(row["met"]))
        print("- %s: %s (goal %s)%s" % (row["goal"], row["figure"], row["target"], met))
    save_goals(args.goals, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller layer, 2 runs")
    parser.add_argument("--dirs", default=None, help="comma-separated dirs of / for the layer")
    parser.add_argument("--no-peers", action="store_true", help="leave docker and podman out")
    parser.add_argument("--base", help="also run the module of this commit, interleaved")
    parser.add_argument("--floor", action="store_true",
                        help="also run Ansible's ping and the floor extraction (see above)")
    parser.add_argument("--json", help="write the samples here")
    parser.add_argument("--goals", help="append the goal rows to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.runs = min(args.runs, 2)
    args.dirs = args.dirs or (QUICK_DIRS if args.quick else DEFAULT_DIRS)
    with workspace("import-process") as work:
        size = 6000 if not args.quick else 2500
        with loop_fs("ext4", work, size) as out:
            docker_root = os.path.join(out, "docker")
            with dockerd(docker_root) if not args.no_peers else _none() as daemon:
                progress("making the layer and the docker-archive...")
                sources = Sources(work, dirs_arg(args.dirs), daemon)
                programs = programs_for(work, os.path.join(out, "store"), sources, args.base)
                if args.floor:
                    programs[PING] = ansiballz(PING, {}, os.path.join(work, "AnsiballZ_ping.py"),
                                               "")
                    sources.diff_id = "sha256:" + file_sha256(sources.layer)
                podman = not args.no_peers and sources.archive is not None and \
                    shutil.which("podman") is not None
                results, cpu = Results(), Results()
                bench = Round(out, sources, daemon, programs, podman, results, cpu)
                for number in range(args.runs):
                    progress("run %d/%d" % (number + 1, args.runs))
                    bench.run(number)
                report(results, cpu, sources, bench.rss, args, out)
                if args.json:
                    results.dump(args.json)


class _none:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
