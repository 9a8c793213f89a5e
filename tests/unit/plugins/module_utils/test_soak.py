"""A seeded random kill -9 soak: imports, archive imports, container creates (some
mounted) and removes, commits and builds (a RUN and a COPY), each in a child process
that a timer SIGKILLs, with all it started, after a random delay (not at a crash point:
anywhere, in the middle of a tar member, an fsync or a RUN command).

After each kill: ``store_check`` (read-only) finds no damage, the next write open
leaves no mark, staging name, tmp/ entry, orphan directory or stray mount, and the check
is clean; then the killed operation is run again to completion, and the store must lie
between the states before and after it.  At the end the store must equal, content for
content, a serial run of the same operations with no kill at all.

Short by default (30 kills, about a minute); ``STRATA_SOAK_KILLS=N`` for a longer run,
``STRATA_SOAK_SEED=S`` to replay a run (the seed is printed).  A run is reproducible in
its operations and delays, not in where the kernel happens to be when the signal lands.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import time

from tests.support import ops
from tests.support.images import make_oci_layout
from tests.support.tars import LayerTar, write

KILLS = int(os.environ.get("STRATA_SOAK_KILLS", "30"))
BASES = ("bb:1", "app:1")
SIZES = (2000, 150000, 2 << 20, 8 << 20, 24 << 20)
BUILD = ("FROM app:1\n"
         "COPY hello.sh /app/hello.sh\n"
         "RUN echo variant {v} > /app/v && touch -t 202401010000 /app/v /app\n"
         "CMD [\"/app/hello.sh\"]\n")


def layer_bytes(number: int, size: int) -> bytes:
    """A layer of a few files, ``size`` bytes of content, the same every run."""
    rng = random.Random(number)
    tar = LayerTar().dir("pool%d" % number)
    for part in range(4):
        tar.file("pool%d/f%d" % (number, part), rng.randbytes(size // 4))
    return tar.bytes()


def prepare(work: str, busybox_tar: str) -> dict:
    inputs = {"pool": [write(os.path.join(work, "pool%d.tar" % n), layer_bytes(n, size))
                       for n, size in enumerate(SIZES)]}
    layout = os.path.join(work, "layout")
    make_oci_layout(layout, [layer_bytes(10, 300000), layer_bytes(11, 50000)], ref="1")
    inputs["archive"] = os.path.join(work, "archive.tar")
    subprocess.run(["tar", "-C", layout, "-cf", inputs["archive"], "."], check=True)
    context = os.path.join(work, "context")
    os.mkdir(context)
    with open(os.path.join(context, "hello.sh"), "w") as handle:
        handle.write("#!/bin/sh\necho hello\n")
    os.utime(os.path.join(context, "hello.sh"), (1700000000, 1700000000))
    inputs["context"] = context
    root = os.path.join(work, "base")
    ops.run_here("migrate", {"data_root": root, "driver": "overlay2"})
    ops.run_here("import", {"data_root": root, "src": busybox_tar, "tag": ["bb:1"]})
    ops.run_here("import", {"data_root": root, "src": inputs["pool"][1], "parent": "bb:1",
                            "tag": ["app:1"]})
    inputs["base"] = root
    return inputs


class Plan:
    """Draws valid operations: a model of which containers exist keeps every draw
    meaningful (a commit or remove names a container that is there)."""

    def __init__(self, rng: random.Random, inputs: dict) -> None:
        self.rng = rng
        self.inputs = inputs
        self.containers: set = set()

    def draw(self) -> tuple:
        rng = self.rng
        kind = rng.choice(["import", "import", "import", "archive", "create", "create",
                           "remove", "commit", "commit", "build", "build"])
        if kind in ("remove", "commit") and not self.containers:
            kind = "create"
        if kind == "create" and len(self.containers) >= 4:
            kind = "remove"
        if kind == "import":
            number = rng.randrange(len(SIZES))
            parent = rng.choice(BASES)
            return "import", {"src": self.inputs["pool"][number], "parent": parent,
                              "tag": ["p%d-%s:1" % (number, parent[:2])]}
        if kind == "archive":
            return "archive", {"src": self.inputs["archive"], "tag": ["arch:1"]}
        if kind == "create":
            name = "c%d" % min(set(range(5)) - self.containers)
            self.containers.add(int(name[1:]))
            return "container", {"name": name, "image": rng.choice(BASES),
                                 "state": rng.choice(["present", "mounted"])}
        if kind == "build":
            variant = rng.randrange(2)
            return "build", {"spec": BUILD.format(v=variant), "context": self.inputs["context"],
                             "tag": ["built%d:1" % variant]}
        number = rng.choice(sorted(self.containers))
        if kind == "remove":
            self.containers.discard(number)
            return "container", {"name": "c%d" % number, "state": "absent"}
        return "commit", {"name": "c%d" % number, "tag": ["cm-c%d:1" % number]}


def after_kill(root: str, op: str, params: dict, before: dict) -> dict:
    seen = ops.recover_and_verify(root)
    crashed = ops.facts(root)
    ops.run_here(op, params)          # the killed operation, run again to completion
    ops.between(before, crashed, ops.facts(root))
    return seen


def first_point(child: subprocess.Popen, log: str, limit: float = 30.0) -> float:
    """When the child passed its first crash point (its work began), or exited."""
    deadline = time.monotonic() + limit
    while child.poll() is None and not os.path.exists(log) and time.monotonic() < deadline:
        time.sleep(0.002)
    return time.monotonic()


def soak(root: str, plan: Plan, rng: random.Random, kills: int, log: str) -> dict:
    """Run drawn operations until ``kills`` of them were killed; returns the tally.

    The children log the crash points they pass (without stopping at any).  A quarter
    of the timers start with the child (the kill may land in start-up, the lock wait or
    recovery), the rest when the operation passed its first crash point, so that most
    kills land in its work; the delay is drawn up to the length of the last completed
    run of the same kind."""
    took = {}
    done = []
    tally = {"kills": 0, "completed": 0, "inside": 0, "recovered": 0}
    while tally["kills"] < kills and len(done) < kills * 10:
        op, params = plan.draw()
        params = dict(params, data_root=root)
        before = ops.facts(root)
        if os.path.exists(log):
            os.unlink(log)
        started = time.monotonic()
        child = ops.start(op, params, env=ops.child_env(crash_log=log))
        blind = rng.random() < 0.25
        origin = started if blind else first_point(child, log)
        span = took.get((op, blind), 0.6 if blind else 0.3)
        wait = origin + rng.uniform(0.0, span) - time.monotonic()
        try:
            out, err = child.communicate(timeout=max(wait, 0.001))
        except subprocess.TimeoutExpired:
            ops.kill_group(child)
            tally["kills"] += 1
            tally["inside"] += os.path.exists(log) and os.path.getsize(log) > 0
            seen = after_kill(root, op, params, before)
            tally["recovered"] += bool(seen["marks"] or seen["recovered"])
        else:
            assert child.returncode == 0, (op, params, out, err[-3000:])
            took[(op, blind)] = time.monotonic() - origin
            tally["completed"] += 1
        done.append((op, params))
    tally["operations"] = done
    return tally


def test_random_kill_9_soak(tmp_path, busybox_tar):
    seed = int(os.environ.get("STRATA_SOAK_SEED") or random.SystemRandom().randrange(1 << 30))
    print("soak seed %d, %d kills (STRATA_SOAK_SEED=%d STRATA_SOAK_KILLS=%d to replay)"
          % (seed, KILLS, seed, KILLS))
    inputs = prepare(str(tmp_path), busybox_tar)
    rng = random.Random(seed)
    root = ops.copy_store(inputs["base"], str(tmp_path / "soaked"))
    serial = ops.copy_store(inputs["base"], str(tmp_path / "serial"))
    try:
        started = time.monotonic()
        tally = soak(root, Plan(rng, inputs), rng, KILLS, str(tmp_path / "points.log"))
        assert ops.findings(root) == [] and ops.debris(root) == []
        for op, params in tally["operations"]:
            ops.run_here(op, dict(params, data_root=serial))
        assert ops.normal_form(root) == ops.normal_form(serial)
        row = {"seed": seed, "kills": tally["kills"], "inside": tally["inside"],
               "recovered": tally["recovered"],
               "completed": tally["completed"], "operations": len(tally["operations"]),
               "seconds": round(time.monotonic() - started, 1)}
        print("soak survived: %s" % json.dumps(row))
        if os.environ.get("STRATA_RELIABILITY_OUT"):
            with open(os.environ["STRATA_RELIABILITY_OUT"], "a") as handle:
                handle.write(json.dumps(dict(row, test="soak")) + "\n")
        assert tally["kills"] == KILLS
    finally:
        ops.unmount_and_remove(root)
        ops.unmount_and_remove(serial)
        ops.unmount_and_remove(str(tmp_path))     # the inputs: some 40 MB of layers
