"""kill -9 at every crash point of every mutation, then reopen the store.

For each operation: a run with ``STRATA_CRASH_LOG`` lists the crash points it passes
(the reference run, which also gives the state after the operation); then, for every
point and occurrence (``STRATA_CRASH_SKIP``; a point met more than three times is
tried at its first two and its last occurrence, every one with ``STRATA_CRASH_ALL=1``),
the operation runs again in a fresh copy of the prepared store with ``STRATA_CRASH_AT``
and must die by SIGKILL.  Then:

- ``store_check`` without repair writes nothing, finds no damage, reports the marks;
- the next write open settles every mark and sweeps every staging name, tmp/ entry,
  orphan driver directory and stray mount; ``store_check`` is then clean;
- the store is as before the operation, as after it, or in between with each step
  complete (never anything neither state has, never anything lost that both have);
- running the operation again succeeds with the ids of the reference run, and the
  store ends as the reference run left it.  A difference ("garbage") would have to be
  only what ``store_prune`` reclaims, and none is allowed: an ``image`` removal killed
  after its untag used to leave one (its re-run no longer finds the name); its mark now
  names the image and its layers, and the next open finishes it.

All of that runs on overlay2; vfs, btrfs and fuse-overlayfs run it for the operations
whose crash windows are the driver's own, at the points just after the driver acted
(``DRIVER_POINTS``).  The table of points tried is printed (``-s``) and written to
``$STRATA_RELIABILITY_OUT`` (JSON lines) when that is set; docs/reliability.md quotes it.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import tempfile

import pytest

from tests.support import loopfs, ops
from tests.support.images import make_oci_layout
from tests.support.tars import LayerTar, write

# occurrences tried per point: the first two and the last (every one with STRATA_CRASH_ALL=1)
CAP = 10 ** 6 if os.environ.get("STRATA_CRASH_ALL") else 3
HELLO = b"#!/bin/sh\necho hello\n"
BUILD = ("FROM app:1\n"
         "COPY hello.sh /app/hello.sh\n"
         # touch -t: the step's layer is the same bytes every run (a reproducible diff_id)
         "RUN echo built > /app/built && touch -t 202401010000 /app/built /app\n"
         "CMD [\"/app/hello.sh\"]\n")


def layer(name: str, size: int = 0) -> bytes:
    data = (name.encode() * (size // len(name) + 1))[:size] if size else name.encode()
    return LayerTar().dir(name).file("%s/data" % name, data).file(
        "%s/more" % name, data[: size // 3]).bytes()


def make_archive(path: str, work: str) -> str:
    """An oci-archive (a tar of an OCI layout) with two layers, one of them gzip'ed."""
    import tarfile
    layout = os.path.join(work, "layout")
    make_oci_layout(layout, [layer("arch-a", 40000), layer("arch-b", 20000)], ref="1")
    with tarfile.open(path, "w") as tar:
        for name in sorted(os.listdir(layout)):
            tar.add(os.path.join(layout, name), arcname=name)
    return path


def prepare(work, busybox_tar: str, driver: str) -> tuple:
    """A store at ``<work>/store`` on ``driver``: bb:1, app:1, a container c1 on app:1
    with changes, extra:1, a layer no image uses and an untagged image (prune has work);
    left unmounted.  Returns (root, the inputs of the scenarios)."""
    root = os.path.join(str(work), "store")
    inputs = {"work": str(work)}
    for name, size in (("app", 30000), ("extra", 5000), ("loose", 3000), ("old", 4000),
                       ("new", 200000)):
        inputs[name] = write(os.path.join(str(work), "%s.tar" % name), layer(name, size))
    inputs["archive"] = make_archive(os.path.join(str(work), "archive.tar"), str(work))
    context = os.path.join(str(work), "context")
    os.mkdir(context)
    with open(os.path.join(context, "hello.sh"), "wb") as handle:
        handle.write(HELLO)
    os.utime(os.path.join(context, "hello.sh"), (1700000000, 1700000000))
    inputs["context"] = context
    run = ops.run_here
    run("migrate", {"data_root": root, "driver": driver})
    run("import", {"data_root": root, "src": busybox_tar, "tag": ["bb:1"]})
    run("import", {"data_root": root, "src": inputs["app"], "parent": "bb:1", "tag": ["app:1"]})
    c1 = run("container", {"data_root": root, "name": "c1", "image": "app:1",
                           "state": "mounted"})
    try:
        with open(os.path.join(c1["mount_point"], "etc", "c1-note"), "w") as handle:
            handle.write("written in c1\n")
        os.unlink(os.path.join(c1["mount_point"], "app", "more"))
    finally:
        run("container", {"data_root": root, "name": "c1", "state": "unmounted"})
    run("import", {"data_root": root, "src": inputs["extra"], "parent": "bb:1",
                   "tag": ["extra:1"]})
    run("import", {"data_root": root, "src": inputs["loose"], "parent": "app:1"})
    run("import", {"data_root": root, "src": inputs["old"], "parent": "bb:1", "tag": ["tmp:1"]})
    run("image", {"data_root": root, "name": "bb:1", "tag": ["tmp:1"]})
    assert ops.debris(root) == [] and ops.findings(root) == []
    return root, inputs


@pytest.fixture(scope="module")
def base(tmp_path_factory, busybox_tar):
    """The prepared store on overlay2 (see ``prepare``).  Never mounted: every case
    works on a copy."""
    work = tmp_path_factory.mktemp("crash-base")
    yield prepare(work, busybox_tar, "overlay2")
    ops.unmount_and_remove(str(work))


def scenarios(inputs: dict) -> dict:
    """operation name -> (op, params)."""
    return {
        "import": ("import", {"src": inputs["new"], "parent": "app:1", "tag": ["new:1"]}),
        "archive import": ("archive", {"src": inputs["archive"], "tag": ["arch:1"]}),
        "container create+mount": ("container", {"name": "c2", "image": "app:1",
                                                 "state": "mounted"}),
        "container remove": ("container", {"name": "c1", "state": "absent"}),
        # the container module's create: a writable layer over an init layer (not run)
        "container with init layer": ("run", {"name": "c3", "image": "app:1",
                                              "state": "stopped", "command": ["true"]}),
        "commit": ("commit", {"name": "c1", "tag": ["c1img:1"]}),
        "build": ("build", {"spec": BUILD, "context": inputs["context"], "tag": ["built:1"]}),
        "migrate": ("migrate", {"driver": "vfs"}),
        "prune": ("prune", {}),
        "image remove": ("image", {"name": "extra:1", "state": "absent"}),
    }


NAMES = ["import", "archive import", "container create+mount", "container remove",
         "container with init layer", "commit",
         "build", "migrate", "prune", "image remove"]
# one commit point each: never seen half done (the others commit step by step, each step
# complete: a layer before its image, an image before its tag)
ALL_OR_NOTHING = {"container create+mount", "container remove", "container with init layer",
                  "migrate"}


def occurrences(points: list) -> list:
    counts = collections.Counter(points)
    cases = []
    for point in dict.fromkeys(points):
        n = counts[point]
        for skip in sorted({0, 1, n - 1} if n > CAP else set(range(n))):
            if skip < n:
                cases.append((point, skip))
    return cases


def ids_of(op: str, result: dict) -> dict:
    """What a re-run must give again: image ids, diff ids, the driver."""
    keep = {}
    for key in ("image_id", "image_ids", "driver", "tags"):
        if key in result:
            keep[key] = result[key]
    if "layers" in result and isinstance(result["layers"], list):
        keep["layers"] = [x["diff_id"] if isinstance(x, dict) else x for x in result["layers"]]
    if op == "build":
        keep.pop("image_id", None)   # a build's configs carry the time they were made
    return keep


def comparable(fact: dict, op: str) -> dict:
    out = dict(fact, containers=sorted((n, v[1], v[2]) for n, v in fact["containers"].items()))
    if op == "build":   # see ids_of: the images are new ones each run, count them
        out["images"] = len(fact["images"])
        out["tags"] = sorted(fact["tags"])
    return out


def one_case(name, op, params, base_root, copy, point, skip, before, reference):
    """One kill at ``point`` (after ``skip`` earlier passes) in a copy of the store."""
    ops.copy_store(base_root, copy)
    try:
        params = dict(params, data_root=copy)
        killed = ops.run(op, params, env=ops.child_env(point, skip))
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout,
                                                      killed.stderr[-2000:])
        seen = ops.recover_and_verify(copy)
        crashed = ops.facts(copy)
        again = ops.run_here(op, params)
        assert ops.debris(copy) == [] and ops.findings(copy) == []
        final = ops.facts(copy)
        # a build's images are new each run: its own re-run is the "after" to compare with
        state = ops.between(before, crashed, final if op == "build" else reference["facts"])
        assert state != "partial" or name not in ALL_OR_NOTHING, "%s left half done" % name
        garbage = comparable(final, op) != comparable(reference["facts"], op)
        if garbage:   # only what store_prune reclaims may differ, nothing else
            ops.run_here("prune", {"data_root": copy})
            assert comparable(ops.facts(copy), op) == comparable(reference["pruned"], op)
        if again.get("changed", True):   # a removal the crash had committed: nothing to say
            assert ids_of(op, again) == reference["ids"]
        if op == "container" and params["state"] != "absent" and "c2" in crashed["containers"]:
            assert again["id"] == crashed["containers"]["c2"][0]   # kept, not re-created
        return dict(seen, state=state, garbage=garbage)
    finally:
        ops.unmount_and_remove(copy)


def reference_run(op: str, params: dict, base_root: str, work: str, log: str) -> dict:
    """The operation run whole in a copy of the prepared store, logging its points: the
    state after it, the ids a re-run must give, the state after a prune."""
    ref_root = ops.copy_store(base_root, os.path.join(work, "reference"))
    try:
        done = ops.run(op, dict(params, data_root=ref_root), env=ops.child_env(crash_log=log))
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        result = ops.parse(done, done.stdout)
        assert ops.findings(ref_root) == [] and ops.debris(ref_root) == []
        reference = {"facts": ops.facts(ref_root), "ids": ids_of(op, result)}
        ops.run_here("prune", {"data_root": ref_root})
        reference["pruned"] = ops.facts(ref_root)
    finally:
        ops.unmount_and_remove(ref_root)
    return reference


def logged_points(log: str) -> list:
    with open(log) as handle:
        return [line.strip() for line in handle if line.strip()]


def try_cases(name, op, params, base_root, work, cases, before, reference) -> tuple:
    """Every (point, skip) of ``cases``, each in its own copy below ``work``: the states
    seen and every failure (all points are tried, all failures reported)."""
    states = collections.Counter()
    failures = []
    for number, (point, skip) in enumerate(cases):
        try:
            seen = one_case(name, op, params, base_root, os.path.join(work, "c%d" % number),
                            point, skip, before, reference)
            states[seen["state"]] += 1
            states["garbage"] += seen["garbage"]
        except Exception as exc:  # every point is tried; all failures are reported
            failures.append("%s#%d: %s: %s" % (point, skip, type(exc).__name__,
                                               str(exc)[:1500]))
    return states, failures


def report(row: dict) -> None:
    print(json.dumps(row))
    out = os.environ.get("STRATA_RELIABILITY_OUT")
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("name", NAMES)
def test_kill_9_at_every_crash_point(name, base, tmp_path):
    base_root, inputs = base
    op, params = scenarios(inputs)[name]
    before = ops.facts(base_root)
    log = str(tmp_path / "points.log")
    reference = reference_run(op, params, base_root, str(tmp_path), log)
    points = logged_points(log)
    assert points, "%s passes no crash point" % name
    cases = occurrences(points)
    states, failures = try_cases(name, op, params, base_root, str(tmp_path), cases, before,
                                 reference)
    report({"operation": name, "points": sorted(set(points)), "occurrences": len(points),
            "tried": len(cases), "passed": len(cases) - len(failures), "states": dict(states)})
    assert not failures, "\n".join(failures)
    assert states["garbage"] == 0, "%d re-runs left what only store_prune reclaims" % (
        states["garbage"])


# ---------------------------------------------------------------------- on every driver
# The table above runs on overlay2.  The other drivers run the operations whose crash
# windows are their own (a layer staged, filled and committed; a container's directory,
# init layer, mount and removal; a commit's layer; a switch away from them), killed at
# the points just after the driver acted, each once: the same checks, a few seconds
# per driver.  (The record-only points in between do not depend on the driver.)
OTHER_DRIVERS = [("vfs", None), ("btrfs", "btrfs"), ("fuse-overlayfs", None)]
DRIVER_POINTS = {
    "import": ["import.applied", "import.committed"],
    "container create+mount": ["container-create.driver", "container-mount.mounted"],
    "container remove": ["container-remove.unrecorded"],
    "container with init layer": ["container-create.driver"],
    "commit": ["commit.layer"],   # its layer import is killed in "import"
    "migrate": ["migrate.layer", "migrate.switched"],
}
MIGRATE_TO = {"vfs": "overlay2", "btrfs": "vfs", "fuse-overlayfs": "overlay2"}


@pytest.fixture(scope="module", params=OTHER_DRIVERS, ids=lambda p: p[0])
def driver_base(request, tmp_path_factory, busybox_tar):
    """(driver, where case copies go, the prepared store on ``driver``): on a loop
    filesystem of its own for btrfs, where the copies must be too (snapshots)."""
    driver, fs = request.param
    work = tmp_path_factory.mktemp("crash-" + driver)
    disk = None
    if fs:
        why = loopfs.available(fs)
        if why:
            pytest.skip("cannot make %s here: %s" % (fs, why))
        disk = loopfs.LoopFS(fs, str(work / "fs"))
    place = disk.mountpoint if disk else str(work)
    try:
        yield driver, place, prepare(place, busybox_tar, driver)
    finally:
        ops.unmount_and_remove(os.path.join(place, "store"))
        if disk:
            disk.close()


@pytest.mark.parametrize("name", list(DRIVER_POINTS))
def test_kill_9_where_the_driver_acts_on_every_driver(name, driver_base, tmp_path):
    driver, place, (base_root, inputs) = driver_base
    op, params = scenarios(inputs)[name]
    if op == "migrate":
        params = dict(params, driver=MIGRATE_TO[driver])
    before = ops.facts(base_root)
    assert before["driver"] == driver
    log = str(tmp_path / "points.log")
    work = tempfile.mkdtemp(prefix="cases-", dir=place)
    try:
        reference = reference_run(op, params, base_root, work, log)
        points = logged_points(log)
        gone = [p for p in DRIVER_POINTS[name] if p not in points]
        assert not gone, "%s no longer passes %s: update DRIVER_POINTS" % (name, gone)
        cases = [(point, 0) for point in DRIVER_POINTS[name]]
        states, failures = try_cases(name, op, params, base_root, work, cases, before,
                                     reference)
    finally:
        ops.unmount_and_remove(work)
    report({"operation": name, "driver": driver, "points": DRIVER_POINTS[name],
            "tried": len(cases), "passed": len(cases) - len(failures), "states": dict(states)})
    assert not failures, "\n".join(failures)
    assert states["garbage"] == 0, "%d re-runs left what only store_prune reclaims" % (
        states["garbage"])
