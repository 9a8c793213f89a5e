"""The hostile-input corpus (tests/support/hostile.py) through the real import path.

Every case is imported by ``layer_import`` into a fresh store (one per storage driver,
overlay2 and vfs) that already holds a base layer.  For every case nothing outside the
store and the layer root may change: a sentinel directory next to the store, a path on
``/`` that must never appear, and the host files a case aims at.  A refused case must
fail with the store's error class it names, its message must name the input and the
member or entry at fault, and the store must be byte for byte as before, with no
staging leftover and no incomplete mark.  A confined case must re-emit its tar
byte-identical from the header record and meet its own post-condition.  Bombs run in
a subprocess whose peak RSS is measured.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import secrets
import stat
import subprocess
import sys

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _errors
from ansible_collections.strata.layers.plugins.module_utils._atomic import TEMP_PREFIX, remove_tree
from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import emit
from tests.support import hostile
from tests.support.paths import python_env
from tests.support.tars import LayerTar, write

CASES = hostile.cases()
BASE = LayerTar().dir("etc").file("etc/hostname", b"base\n").dir("bin").file(
    "bin/sh", b"#!sh\n", mode=0o755).bytes()
# names some cases aim at on the host, by climbing with ../ to /
FIXED_TARGETS = ("/tmp/smuggled", "/tmp/second", "/tmp/from-archive", "/tmp/x", "/tmp/evil",
                 "/etc/passwd", "/etc/shadow")
PEAK_RSS_LIMIT = 100 << 20
MEMORY_HEADROOM = 2 << 30
RUNNER_AS_LIMIT = 2 << 30
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def params(bombs: bool):
    return [pytest.param(case, driver, id="%s-%s" % (case.name, driver))
            for case in CASES if case.bomb == bombs for driver in hostile.DRIVERS]


# ---------------------------------------------------------------------------- snapshots

def snapshot(root: str, times: bool = False) -> dict:
    """Every path below ``root``: type, mode, owner, size, content digest, link target.

    Walks with directory descriptors (no path grows past PATH_MAX) and never opens
    anything but regular files (a FIFO would block)."""
    out = {}
    if not os.path.lexists(root):
        return out
    stack = [(os.open(root, _DIR), b"")]
    while stack:
        fd, rel = stack.pop()
        try:
            for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
                path = rel + name
                if path == b"lock":
                    continue
                st = os.lstat(name, dir_fd=fd)
                item = [st.st_mode, st.st_uid, st.st_gid]
                if stat.S_ISDIR(st.st_mode):
                    stack.append((os.open(name, _DIR, dir_fd=fd), path + b"/"))
                    item.append(st.st_mtime_ns if times else 0)
                elif stat.S_ISREG(st.st_mode):
                    item += [st.st_size, _digest(fd, name), st.st_mtime_ns]
                elif stat.S_ISLNK(st.st_mode):
                    item.append(os.readlink(name, dir_fd=fd))
                else:
                    item.append(st.st_rdev)
                out[path] = tuple(item)
        finally:
            os.close(fd)
    return out


def _digest(dir_fd: int, name: bytes) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    hasher = hashlib.sha256()
    try:
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                return hasher.hexdigest()
            hasher.update(data)
    finally:
        os.close(fd)


def fingerprint(path: str):
    """What identifies a host file (None when absent); unreadable ones by stat only."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    item = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as handle:
            return item + (hashlib.sha256(handle.read()).hexdigest(),)
    return item


def leftovers(store_root: str, driver: str) -> list:
    """Staging debris a finished import must not leave."""
    found = []
    tmp = os.path.join(store_root, "tmp")
    found += ["tmp/" + n for n in os.listdir(tmp)] if os.path.isdir(tmp) else []
    for sub in ("", "layers", "images", "distribution", "sources", "incomplete",
                driver, os.path.join(driver, "layers")):
        base = os.path.join(store_root, sub)
        if os.path.isdir(base):
            found += [os.path.join(sub, n) for n in os.listdir(base) if n.startswith(TEMP_PREFIX)]
    found += ["incomplete/" + n for n in Store(store_root).marks.pending()]
    return found


# ---------------------------------------------------------------------------- the world

class World:
    """A store with a base layer, a sentinel next to it, and the case's input."""

    def __init__(self, tmp_path, case: hostile.Case, driver: str) -> None:
        self.case, self.driver = case, driver
        self.root = str(tmp_path / "store")
        sentinel = tmp_path / "sentinel"
        (sentinel / "sub").mkdir(parents=True)
        (sentinel / "secret").write_bytes(b"safe")
        (sentinel / "sub" / "kept").write_bytes(b"kept")
        self.ctx = hostile.Ctx(work=str(tmp_path / "work"), sentinel=str(sentinel),
                               host="/tmp/strata-hostile-%s" % secrets.token_hex(6))
        store = Store(self.root)
        with store.write("test", init=False):
            store.initialize(driver)
        base = write(tmp_path / "base.tar", BASE)
        layer_import({"data_root": self.root, "src": base})
        self.inp = case.build(self.ctx)
        self.parent = None
        for number, data in enumerate(self.inp.parents):
            src = write(tmp_path / ("parent%d.tar" % number), data)
            args = {"data_root": self.root, "src": src}
            if self.parent:
                args["parent"] = self.parent
            self.parent = layer_import(args)["layers"][-1]["chain_id"]
        self.targets = sorted(set(FIXED_TARGETS + case.targets + (self.ctx.host,)))
        self.before = {"store": snapshot(self.root), "sentinel": snapshot(str(sentinel), True),
                       "targets": {t: fingerprint(t) for t in self.targets}}

    def args(self) -> dict:
        args = dict({"data_root": self.root, "src": self.inp.src}, **self.inp.params)
        if self.parent:
            args["parent"] = self.parent
        return args

    def assert_outside_unchanged(self) -> None:
        assert snapshot(self.ctx.sentinel, True) == self.before["sentinel"], \
            "the sentinel next to the store changed"
        assert {t: fingerprint(t) for t in self.targets} == self.before["targets"], \
            "a host path the case aims at changed"
        assert not os.path.lexists(self.ctx.host)
        assert leftovers(self.root, self.driver) == []
        store = Store(self.root)
        with store.write("reopen after the case"):
            assert store.recovered == [], "the next open had to recover: %r" % store.recovered

    def assert_refused(self, error_name: str, message: str, mro: list) -> None:
        case = self.case
        assert case.error in mro, "%s raised, %s expected: %s" % (error_name, case.error, message)
        assert self.inp.src in message, "the message does not name the input: %s" % message
        needle = case.needle_for(self.ctx)
        if needle:
            assert needle in message, "the message does not name %r: %s" % (needle, message)
        after = snapshot(self.root)
        if not case.keeps_verified_layers:
            assert after == self.before["store"], _diff(self.before["store"], after)
            return
        before = self.before["store"]
        assert all(after.get(k) == v for k, v in before.items()), _diff(before, after)
        added = [k for k in after if k not in before]
        allowed = (b"layers/", b"distribution/", self.driver.encode() + b"/")
        assert all(k.startswith(allowed) for k in added), added

    def assert_confined(self, result: dict) -> None:
        store = Store(self.root)
        chain = result["layers"][-1]["chain_id"]
        record = store.layers.get(chain)
        files = store.driver.layer_files(chain)
        parent_files = store.driver.layer_files(self.parent) if self.parent else None
        chunks = []
        digest, _size = emit(store.layers.split_path(chain), files, chunks.append)
        assert digest == record.diff_id, "the layer does not re-emit to its diff_id"
        if self.inp.layer is not None:
            assert b"".join(chunks) == self.inp.layer, "re-emitted tar differs from the input"
            assert record.diff_id == "sha256:" + hashlib.sha256(self.inp.layer).hexdigest()
        if self.case.check is not None:
            self.case.check(hostile.View(files, self.driver, parent_files, self.ctx, self.inp,
                                         record.diff_id))


def _diff(before: dict, after: dict) -> str:
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return "the store changed: %r" % changed[:10]


# ---------------------------------------------------------------------------- tests

@pytest.fixture(autouse=True)
def remove_deep_trees(tmp_path):
    """Stores here may hold directories 1000 deep, more than pytest's recursive rmtree
    of old temporary directories survives: remove them (the engine's way) at once."""
    yield
    remove_tree(str(tmp_path))


@pytest.fixture(autouse=True)
def bounded_memory():
    """A case that makes the engine allocate without bound fails with MemoryError here
    instead of bringing the OOM killer to a shared machine: the address space may grow
    by MEMORY_HEADROOM at most while a case runs (children inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as handle:
        vm = [int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:")][0]
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_HEADROOM, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("case,driver", params(bombs=False))
def test_hostile_case(tmp_path, case, driver):
    world = World(tmp_path, case, driver)
    try:
        result = layer_import(world.args())
    except StoreError as exc:
        assert case.outcome_for(driver) == hostile.REFUSED, "refused: %s" % exc
        world.assert_refused(type(exc).__name__, str(exc),
                             [c.__name__ for c in type(exc).__mro__])
    else:
        assert case.outcome_for(driver) == hostile.CONFINED, "imported: %r" % result
        world.assert_confined(result)
    world.assert_outside_unchanged()


_RUNNER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (%d, %d))  # fail with MemoryError, not the OOM killer
from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
out = {}
try:
    out["result"] = layer_import(json.loads(sys.argv[1]))
except StoreError as exc:
    out["error"] = type(exc).__name__
    out["mro"] = [c.__name__ for c in type(exc).__mro__]
    out["msg"] = str(exc)
# VmHWM, not ru_maxrss: the latter keeps the forking pytest's peak across execve
with open("/proc/self/status") as handle:
    out["maxrss"] = [int(l.split()[1]) * 1024 for l in handle if l.startswith("VmHWM:")][0]
out["children_maxrss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps(out))
""" % (RUNNER_AS_LIMIT, RUNNER_AS_LIMIT)


@pytest.fixture(scope="module")
def bomb_inputs(tmp_path_factory):
    """Bomb inputs are built once (they take seconds) and shared by both drivers."""
    return {"dir": str(tmp_path_factory.mktemp("bombs")), "built": {}}


@pytest.mark.parametrize("case,driver", params(bombs=True))
def test_bomb(tmp_path, case, driver, bomb_inputs, monkeypatch):
    built = bomb_inputs["built"]
    if case.name not in built:
        ctx = hostile.Ctx(work=os.path.join(bomb_inputs["dir"], case.name), sentinel="/nonexistent",
                          host="/nonexistent")
        built[case.name] = case.build(ctx)
    # the world builds the input again unless told otherwise: hand it the cached one
    monkeypatch.setattr(case, "build", lambda ctx: built[case.name])
    world = World(tmp_path, case, driver)
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(world.args())],
                          env=python_env(), capture_output=True, text=True, check=False,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    print("%s on %s: peak RSS %.1f MiB (children %.1f MiB), input %d bytes"
          % (case.name, driver, out["maxrss"] / 2**20, out["children_maxrss"] / 2**20,
             os.path.getsize(world.inp.src)))
    assert out["maxrss"] < PEAK_RSS_LIMIT and out["children_maxrss"] < PEAK_RSS_LIMIT
    assert "error" in out, "imported: %r" % out.get("result")
    world.assert_refused(out["error"], out["msg"], out["mro"])
    world.assert_outside_unchanged()


def test_corpus_covers_every_class_and_driver():
    classes = {case.cls for case in CASES}
    assert classes >= {"traversal", "long names", "links", "whiteouts", "xattrs",
                       "setuid and devices", "duplicates", "corrupt streams", "trailing data",
                       "bombs", "deep and long paths", "odd names", "PAX headers", "formats",
                       "image archives"}
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        assert case.outcome in (hostile.REFUSED, hostile.CONFINED)
        if hostile.REFUSED in (case.outcome_for(d) for d in hostile.DRIVERS):
            assert case.error and hasattr(_errors, case.error), case.name
        if hostile.CONFINED in (case.outcome_for(d) for d in hostile.DRIVERS):
            assert case.post, case.name


def test_markdown_table_lists_every_case():
    table = hostile.markdown()
    for case in CASES:
        assert "`%s`" % case.name in table
