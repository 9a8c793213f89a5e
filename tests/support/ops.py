"""Run one store operation, in this process or in a child: the driver of the kill -9,
soak, concurrency and disk-full tests.

``python -m tests.support.ops <op> '<json params>'`` runs the module entry point named
by ``op`` and prints its JSON result on stdout (exit 0), or ``{"failed": true, "error":
<class>, "msg": ...}`` (exit 1) for the store's own errors.  Any other exception is a
crash of the engine and exits with Python's traceback (exit 1, no JSON).

The ops: ``import`` and ``archive`` (layer_import of a layer tar / an image archive),
``container`` (container_layer: create, mount, unmount, remove by ``state``),
``commit`` (container_commit), ``build`` (image_build), ``migrate`` (storage_driver,
``migrate: true`` added), ``prune`` (store_prune), ``image`` (image: tag / remove),
``check`` (store_check) and ``info`` (store_info); ``batch`` runs a JSON list of
``[op, params]`` pairs one after the other and prints when each started and ended.

The crash-point variables of ``_crash`` (``STRATA_CRASH_AT``, ``STRATA_CRASH_SKIP``,
``STRATA_CRASH_LOG``) are read by the child at import time, so they are passed through
``env``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional

from tests.support.paths import REPO, python_env

OPS = ("import", "archive", "container", "commit", "build", "migrate", "prune", "image",
       "check", "info", "run")


def entry_point(op: str) -> Callable[..., Dict[str, Any]]:
    """The module_utils function behind ``op`` (imported lazily: the child reads the
    crash variables when ``_crash`` is first imported)."""
    base = "ansible_collections.strata.layers.plugins.module_utils."
    module, name = {
        "import": ("_ops.layer_import", "layer_import"),
        "archive": ("_ops.layer_import", "layer_import"),
        "container": ("_ops.container_layer", "container_layer"),
        "commit": ("_ops.container_commit", "container_commit"),
        "build": ("_ops.image_build", "image_build"),
        "migrate": ("_ops.storage_driver", "storage_driver"), "prune": ("_ops.store_prune", "store_prune"),
        "image": ("_ops.image", "image"), "check": ("_ops.store_check", "store_check"),
        "info": ("_ops.store_info", "store_info"), "run": ("_ops.container", "container")}[op]
    return getattr(__import__(base + module, fromlist=[name]), name)


def params_for(op: str, params: Dict[str, Any]) -> Dict[str, Any]:
    if op == "migrate":
        return dict(params, migrate=True)
    return dict(params)


def run_here(op: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``op`` in this process (the store's errors propagate)."""
    return entry_point(op)(params_for(op, params))


def child_env(crash_at: Optional[str] = None, skip: int = 0, crash_log: Optional[str] = None,
              extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = python_env()
    for name in ("STRATA_CRASH_AT", "STRATA_CRASH_SKIP", "STRATA_CRASH_LOG"):
        env.pop(name, None)
    if crash_at:
        env.update(STRATA_CRASH_AT=crash_at, STRATA_CRASH_SKIP=str(skip))
    if crash_log:
        env["STRATA_CRASH_LOG"] = crash_log
    env.update(extra or {})
    return env


def command(op: str, params: Dict[str, Any]) -> list:
    return [sys.executable, "-m", "tests.support.ops", op, json.dumps(params)]


def run(op: str, params: Dict[str, Any], env: Optional[Dict[str, str]] = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``op`` in a child and wait (its own session: a kill takes its children too)."""
    return subprocess.run(command(op, params), cwd=REPO, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout, check=False,
                          start_new_session=True)


def start(op: str, params: Dict[str, Any], env: Optional[Dict[str, str]] = None
          ) -> subprocess.Popen:
    """Start ``op`` in a child in its own session (see ``kill_group``)."""
    return subprocess.Popen(command(op, params), cwd=REPO, env=env or child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child and everything it started (a RUN step's unshare and command),
    as a power cut would; then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def parse(proc: "subprocess.CompletedProcess | subprocess.Popen", stdout: str) -> Dict[str, Any]:
    """The JSON a child printed (its last line)."""
    lines = [line for line in (stdout or "").splitlines() if line.strip()]
    if not lines:
        raise AssertionError("op printed nothing (rc %s)" % proc.returncode)
    return json.loads(lines[-1])


# ---------------------------------------------------------------------- after a kill
# What every kill test checks, in one place (the crash-point, soak, concurrency and
# disk-full tests share it).  These run in the test process, on the real store.

DAMAGE = ("corrupt-layer", "bad-layer-record", "missing-layer-data", "missing-parent",
          "corrupt-config", "missing-image-layer", "corrupt-tags", "dangling-tag",
          "bad-container-record", "missing-container-image", "missing-container-data")


def _mu(module: str) -> Any:
    return __import__("ansible_collections.strata.layers.plugins.module_utils." + module,
                      fromlist=["x"])


def facts(root: str) -> Dict[str, Any]:
    """What ``store_info`` shows of a store: driver, images, tags, layers, containers."""
    store = _mu("_store").Store(root)
    if not store.exists():
        return {"driver": None, "images": [], "tags": {}, "layers": [], "containers": {}}
    with store.read():
        containers = {c.name: (c.id, c.image_id, c.kind)
                      for c in _mu("_containers").ContainerDB(root).all()}
        return {"driver": store.driver_name,
                "images": sorted(i.id for i in store.images.all()),
                "tags": dict(store.images.tags()),
                "layers": sorted(store.layers.chains()),
                "containers": containers}


def normal_form(root: str) -> Dict[str, Any]:
    """The store's content with every image named by its layers (diff ids), not its id:
    equal for two runs of the same operations even where a config carries a time (a
    build's), and whatever ids the containers got."""
    store = _mu("_store").Store(root)
    if not store.exists():
        return {"images": [], "tags": {}, "layers": [], "containers": {}}
    with store.read():
        chains = {i.id: tuple(i.config.diff_ids) for i in store.images.all()}
        return {"images": sorted(chains.values()),
                "tags": {t: chains.get(i) for t, i in store.images.tags().items()},
                "layers": sorted(store.layers.chains()),
                "containers": {c.name: (chains.get(c.image_id), c.kind)
                               for c in _mu("_containers").ContainerDB(root).all()}}


def _comparable(fact: Dict[str, Any], ids: bool) -> Dict[str, Any]:
    out = dict(fact)
    out["tags"] = sorted(fact["tags"].items())
    out["containers"] = sorted((name, ) + (tuple(v) if ids else tuple(v[1:]))
                               for name, v in fact["containers"].items())
    return out


def between(before: Dict[str, Any], got: Dict[str, Any], after: Dict[str, Any]) -> str:
    """"before", "after" or "partial" (some steps done, each complete); raises when
    ``got`` holds something neither state has, or lost something both have."""
    b, g, a = (_comparable(f, ids=False) for f in (before, got, after))
    if g == b:
        return "before"
    if g == a:
        return "after"
    if g["driver"] not in (b["driver"], a["driver"]):
        raise AssertionError("driver %s is neither %s nor %s" % (g["driver"], b["driver"],
                                                                 a["driver"]))
    for key in ("images", "tags", "layers", "containers"):
        seen, old, new = set(g[key]), set(b[key]), set(a[key])
        foreign, lost = seen - (old | new), (old & new) - seen
        if foreign or lost:
            raise AssertionError("%s in between: foreign %s, lost %s" % (
                key, sorted(foreign), sorted(lost)))
    for name, value in got["containers"].items():
        if name in before["containers"] and before["containers"][name][1:] == value[1:]:
            if before["containers"][name][0] != value[0]:
                raise AssertionError("container %s changed id" % name)
    return "partial"


def snapshot(root: str) -> Dict[str, Any]:
    """Every path under ``root`` with its type, mode, owner, size, content digest, link
    target and xattrs (not times: opening a store touches directories' times)."""
    import hashlib
    import stat as st_
    out: Dict[str, Any] = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if rel == "lock":
                continue
            st = os.lstat(path)
            entry: list = [st_.S_IFMT(st.st_mode), st_.S_IMODE(st.st_mode), st.st_uid,
                           st.st_gid, st.st_rdev]
            if st_.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    entry += [st.st_size, hashlib.sha256(handle.read()).hexdigest()]
            elif st_.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            names = [] if st_.S_ISLNK(st.st_mode) else os.listxattr(path, follow_symlinks=False)
            entry.append(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))
            out[rel] = entry
    return out


def findings(root: str) -> List[Dict[str, str]]:
    return entry_point("check")({"data_root": root})["findings"]


def settle(root: str) -> List[str]:
    """Open the store for writing (recovery runs) and return what recovery did."""
    store = _mu("_store").Store(root)
    with store.write("settle after a kill", init=False):
        return list(store.recovered)


def debris(root: str) -> List[str]:
    """What must not exist once the store was opened for writing: marks, staging names,
    tmp/ entries, driver directories without a record, mounts nobody recorded.  Read
    under the shared lock, as any reader does: a run still holding the store (the
    detached remover of a migration's previous driver) is waited for."""
    store = _mu("_store").Store(root)
    with store.read():
        return _debris(store, root)


def _debris(store, root: str) -> List[str]:
    found = ["mark " + m for m in store.marks.pending()]
    for sub in ("", "layers", "images", "containers", "distribution", "sources", "incomplete",
                "pulls", os.path.join("cache", "build")):
        found += [os.path.join(sub, n) for n in _names(os.path.join(root, sub))
                  if n.startswith(".tmp-")]
    found += ["tmp/" + n for n in _names(store.tmp)]
    layers = set(_names(store.layers.dir))
    records = _mu("_containers").ContainerDB(root)
    cids = set(records.ids())
    for home in store.driver_homes():
        for sub in (home.layers_dir, home.containers_dir, "l"):
            found += [os.path.join(home.name, sub, n)
                      for n in _names(os.path.join(home.home, sub)) if n.startswith(".tmp-")]
        found += ["orphan %s layer %s" % (home.name, h) for h in home.layer_hexes()
                  if h not in layers]
        found += ["orphan %s container %s" % (home.name, c) for c in home.container_ids()
                  if c not in cids]
    wanted = {os.path.realpath(c.mount_point) for c in records.all() if c.mount_point}
    found += ["mount %s" % m.mount_point for m in _mu("_fsinfo").mounts_below(root)
              if m.mount_point not in wanted]
    return found


def _names(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def recover_and_verify(root: str) -> Dict[str, Any]:
    """After a kill: a read-only check changes nothing and finds no damage (only marks
    and debris, which the next write open settles); after that open nothing of the crash
    is left and ``store_check`` is clean.  Returns what was seen."""
    before = snapshot(root)
    first = findings(root)
    if snapshot(root) != before:
        raise AssertionError("store_check without repair wrote to the store")
    damage = [f for f in first if f["kind"] in DAMAGE]
    if damage:
        raise AssertionError("damage after the kill: %s" % damage)
    marks = _mu("_store").Store(root).marks.pending()
    if marks and "incomplete" not in {f["kind"] for f in first}:
        raise AssertionError("marks %s not reported by store_check" % marks)
    recovered = settle(root)
    left = debris(root)
    if left:
        raise AssertionError("left after the write open: %s" % left)
    last = findings(root)
    if last:
        raise AssertionError("store_check after recovery: %s" % last)
    return {"findings": sorted({f["kind"] for f in first}), "marks": len(marks),
            "recovered": recovered}


def unmount_and_remove(root: str) -> None:
    """Unmount everything below ``root`` and remove it (a store copy of a test)."""
    for entry in sorted(_mu("_fsinfo").mounts_below(root), key=lambda m: len(m.mount_point),
                        reverse=True):
        subprocess.run(["umount", "-l", entry.mount_point], capture_output=True, check=False)
    _mu("_atomic").remove_tree(root)


def copy_store(src: str, dst: str) -> str:
    """A faithful copy (xattrs, devices, owners, hardlinks) of an unmounted store; the
    btrfs driver's subvolumes are copied as snapshots (``cp`` makes plain directories,
    which the driver could not snapshot)."""
    subprocess.run(["cp", "-a", "--reflink=auto", src, dst], check=True)
    _snapshot_subvolumes(src, dst)
    return dst


def _snapshot_subvolumes(src: str, dst: str) -> None:
    btrfs = _mu("drivers.btrfs")
    for sub in ("layers", "containers", "init"):
        below = os.path.join(btrfs.Btrfs.name, sub)
        for name in _names(os.path.join(src, below)):
            if btrfs.is_subvolume(os.path.join(src, below, name)):
                _mu("_atomic").remove_tree(os.path.join(dst, below, name))
                btrfs.snapshot(os.path.join(src, below, name), os.path.join(dst, below, name))


def run_batch(steps: List[list]) -> List[Dict[str, Any]]:
    """Run ``[[op, params], ...]`` one after the other in this process; each entry of
    the answer has the op, its result and when it started and ended (time.time())."""
    import time
    done = []
    for op, params in steps:
        started = time.time()
        result = run_here(op, params)
        done.append({"op": op, "start": started, "end": time.time(), "result": result})
    return done


def main(argv: list) -> int:
    if len(argv) != 3 or argv[1] not in OPS + ("batch", ):
        sys.stderr.write("usage: python -m tests.support.ops {%s,batch} '<json params>'\n"
                         % ",".join(OPS))
        return 2
    from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError
    try:
        if argv[1] == "batch":
            result: Any = run_batch(json.loads(argv[2]))
        else:
            result = run_here(argv[1], json.loads(argv[2]))
    except StoreError as exc:
        print(json.dumps({"failed": True, "error": type(exc).__name__, "msg": str(exc)}))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
