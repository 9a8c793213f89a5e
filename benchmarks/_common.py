"""What the benchmarks share: running tools, timing, building content from this host's
/usr, loop filesystems of their own, throwaway podman/buildah roots, and the tables.

Every benchmark prints its figures (medians of several runs, and ratios against a
baseline run side by side, interleaved A, B, A, B... so that load from other work on
the machine falls on both alike); nothing here asserts a time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, ".collections"))
sys.path.insert(0, REPO)

from tests.support.loopfs import LoopFS, unmount_below  # noqa: E402

MU = "ansible_collections.strata.layers.plugins.module_utils"


# ---------------------------------------------------------------------- running things

def sh(cmd: List[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, capture_output=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s"
                           % (" ".join(cmd[:4]), proc.returncode, proc.stderr[-2000:]))
    return proc


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` only (``sync -f``: syncfs(2)), so that dirty
    data of other work on the host's disk is not flushed on our clock."""
    sh(["sync", "-f", path])


def file_sha256(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def wipe(path: str) -> None:
    """Remove a tool's output (unmounting what podman/our store may have left mounted,
    and the short runroot kept as ``path + ".runroot"``)."""
    if os.path.islink(path + ".runroot"):
        wipe(os.readlink(path + ".runroot"))
        os.unlink(path + ".runroot")
    if not os.path.exists(path):
        return
    with open("/proc/self/mounts") as handle:
        mounts = [line.split()[1] for line in handle]
    for point in sorted((m for m in mounts if m.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def du_bytes(*paths: str) -> int:
    """Bytes allocated on disk (``du -s -B1``; hard links counted once)."""
    existing = [p for p in paths if os.path.exists(p)]
    if not existing:
        return 0
    out = sh(["du", "-s", "-c", "-B1"] + existing, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def engine(name: str):
    """A module of the engine (``_ingest``, ``_containers``...), imported in-process."""
    __import__("%s.%s" % (MU, name))
    return sys.modules["%s.%s" % (MU, name)]


# ---------------------------------------------------------------------- content

def make_tar(path: str, dirs: Sequence[str], root: str = "/") -> Dict[str, int]:
    """A tar of ``dirs`` (relative to ``root``) as ``docker build`` would lay a layer out:
    sorted, numeric owners.  Returns its size and its number of entries."""
    sh(["tar", "-C", root, "--sort=name", "--numeric-owner", "-cf", path] + list(dirs))
    entries = sh(["tar", "-tf", path]).stdout.count(b"\n")
    return {"bytes": os.path.getsize(path), "entries": entries}


def compress(path: str, kind: str) -> str:
    """``path`` compressed next to itself (gzip -6 with pigz, as docker push; zstd -3)."""
    if kind == "gzip":
        sh(["pigz", "-6", "-n", "-k", "-f", path])
        return path + ".gz"
    sh(["zstd", "-q", "-3", "-T0", "-f", "-k", path, "-o", path + ".zst"])
    return path + ".zst"


def dirs_arg(text: str) -> List[str]:
    return [d.strip().strip("/") for d in text.split(",") if d.strip()]


# ---------------------------------------------------------------------- places

@contextlib.contextmanager
def workspace(prefix: str, base: str = "/var/tmp") -> Iterator[str]:
    """A temporary directory removed with everything mounted below it."""
    work = tempfile.mkdtemp(prefix="strata-bench-%s-" % prefix, dir=base)
    try:
        yield work
    finally:
        unmount_below(work)
        wipe(work)


@contextlib.contextmanager
def loop_fs(kind: str, work: str, size_mb: int) -> Iterator[str]:
    """A filesystem of our own on a loop device (its own journal: other work on the
    host's disk does not stall file creation here); ``none`` gives a plain directory."""
    if kind == "none":
        path = os.path.join(work, "plain")
        os.makedirs(path, exist_ok=True)
        yield path
        return
    loop = LoopFS(kind, os.path.join(work, "fs-" + kind), size_mb)
    try:
        yield loop.mountpoint
    finally:
        loop.close()


@contextlib.contextmanager
def short_runroot(prefix: str = "sbr-") -> Iterator[str]:
    """A runroot for podman/buildah: they refuse paths of 50 characters or more."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        unmount_below(path)
        wipe(path)


def podman_cmd(root: str, runroot: str, tool: str = "podman") -> List[str]:
    return [tool, "--root", root, "--runroot", runroot, "--storage-driver", "overlay"]


def release_podman_root(root: str, runroot: str) -> None:
    """Unmount what podman/buildah left mounted (overlay layers, shm) and remove both."""
    unmount_below(root)
    unmount_below(runroot)
    wipe(root)
    shutil.rmtree(runroot, ignore_errors=True)


# ---------------------------------------------------------------------- reporting

def machine(path: Optional[str] = None) -> str:
    """One line: cores, OS, kernel, Python and the filesystem under ``path``."""
    pretty = platform.system()
    with contextlib.suppress(OSError):
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    pretty = line.split("=", 1)[1].strip().strip('"')
    where = ""
    if path:
        fstype = sh(["findmnt", "-n", "-o", "FSTYPE", "--target", path], text=True).stdout.strip()
        where = "; outputs on %s" % fstype
    return "%d cores, %s, kernel %s, Python %s%s (a shared VM: other work may run)" % (
        os.cpu_count() or 0, pretty, platform.release(), platform.python_version(), where)


class Results:
    """Samples per label, in the order labels were first given."""

    def __init__(self) -> None:
        self.samples: Dict[str, List[float]] = {}

    def add(self, label: str, value: float) -> None:
        self.samples.setdefault(label, []).append(value)

    def median(self, label: str) -> float:
        return statistics.median(self.samples[label])

    def table(self, base: Optional[str] = None, unit: str = "s", fmt: str = "%8.3f",
              extra: Optional[Dict[str, Callable[[str, float], str]]] = None) -> str:
        """A markdown table: median, min, max, runs and the ratio to ``base``'s median."""
        extra = extra or {}
        head = ["what", "median " + unit, "min", "max", "runs"] + list(extra)
        if base:
            head.append("ratio")
        rows = [head, ["---"] * len(head)]
        for label, values in self.samples.items():
            med = statistics.median(values)
            row = [label, fmt % med, fmt % min(values), fmt % max(values), str(len(values))]
            row += [fn(label, med) for fn in extra.values()]
            if base:
                row.append("%.2fx" % (med / self.median(base)) if base in self.samples else "-")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
                         for r in rows)

    def dump(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump(self.samples, handle, indent=1)


def save_goals(path: Optional[str], rows: List[Dict[str, object]]) -> None:
    """Append goal rows (``goal``, ``figure``, ``target``, ``met``) to the JSON list at
    ``path`` (``scripts/bench`` collects them into one table)."""
    if not path:
        return
    got: List[Dict[str, object]] = []
    if os.path.exists(path):
        with open(path) as handle:
            got = json.load(handle)
    with open(path, "w") as handle:
        json.dump(got + rows, handle, indent=1)


def goal(name: str, figure: str, target: str, met: Optional[bool]) -> Dict[str, object]:
    return {"goal": name, "figure": figure, "target": target, "met": met}


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
