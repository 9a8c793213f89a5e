"""Many writers on one store at once: child processes, and ansible-playbook with four
forks on localhost aliases.  They import the same and different images and create and
remove containers at the same moment: nothing fails (they wait for the lock), nothing
is corrupt, and the store ends as a serial run of the same operations leaves it.  A
lock held longer than ``lock_timeout`` fails the module with a message naming the
holder's pid and what it is doing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from tests.support import ops
from tests.support.images import make_oci_layout
from tests.support.paths import COLLECTIONS, REPO
from tests.support.tars import LayerTar, write

WORKERS = 6


def layer_bytes(number: int, size: int) -> bytes:
    data = bytes([number]) * size
    return LayerTar().dir("c%d" % number).file("c%d/data" % number, data).bytes()


@pytest.fixture
def world(tmp_path, busybox_tar):
    """A store holding bb:1 (overlay2), an archive and three layer tars to import."""
    work = str(tmp_path)
    layout = os.path.join(work, "layout")
    make_oci_layout(layout, [layer_bytes(1, 400000), layer_bytes(2, 100000)], ref="1")
    archive = os.path.join(work, "shared.tar")
    subprocess.run(["tar", "-C", layout, "-cf", archive, "."], check=True)
    pool = [write(os.path.join(work, "p%d.tar" % n), layer_bytes(10 + n, 300000 * (n + 1)))
            for n in range(3)]
    base = os.path.join(work, "base")
    ops.run_here("migrate", {"data_root": base, "driver": "overlay2"})
    ops.run_here("import", {"data_root": base, "src": busybox_tar, "tag": ["bb:1"]})
    yield {"base": base, "archive": archive, "pool": pool, "work": work}
    ops.unmount_and_remove(work)


def worker_steps(w: int, root: str, world: dict) -> list:
    """Worker ``w``: the shared archive, a layer some others import too, a mounted
    container created and removed, a read, another container committed."""
    mine = w % 3
    steps = [
        ["archive", {"src": world["archive"], "tag": ["shared:1"]}],
        ["import", {"src": world["pool"][mine], "parent": "bb:1", "tag": ["w%d:1" % mine]}],
        ["container", {"name": "w%d-a" % w, "image": "shared:1", "state": "mounted"}],
        ["info", {}],
        ["container", {"name": "w%d-b" % w, "image": "w%d:1" % mine, "state": "present"}],
        ["container", {"name": "w%d-a" % w, "state": "absent"}],
        ["import", {"src": world["pool"][(mine + 1) % 3], "parent": "shared:1",
                    "tag": ["s%d:1" % ((mine + 1) % 3)]}],
        ["commit", {"name": "w%d-b" % w, "tag": ["cw%d:1" % w]}],
    ]
    return [[op, dict(params, data_root=root)] for op, params in steps]


def most_at_once(intervals: list) -> int:
    """The largest number of (start, end) intervals that overlap at one moment."""
    edges = sorted([(s, 1) for s, _e in intervals] + [(e, -1) for _s, e in intervals])
    best = now = 0
    for _t, step in edges:
        now += step
        best = max(best, now)
    return best


def test_concurrent_processes_wait_and_agree_with_a_serial_run(world):
    root = ops.copy_store(world["base"], os.path.join(world["work"], "shared-store"))
    serial = ops.copy_store(world["base"], os.path.join(world["work"], "serial-store"))
    children = []
    try:
        for w in range(WORKERS):
            children.append(ops.start("batch", worker_steps(w, root, world)))
        outputs = [child.communicate(timeout=300) for child in children]
        for child, (out, err) in zip(children, outputs):
            assert child.returncode == 0, out + err[-3000:]
        runs = [ops.parse(child, out) for child, (out, _err) in zip(children, outputs)]
        mutations = [(s["start"], s["end"]) for run in runs for s in run if s["op"] != "info"]
        overlap = most_at_once(mutations)
        assert overlap >= 4, "the workers never ran at the same time (%d)" % overlap
        shared = [run[0]["result"] for run in runs]
        assert sum(r["changed"] for r in shared) == 1     # one imported, the rest found it
        assert len({r["image_id"] for r in shared}) == 1
        assert ops.findings(root) == [] and ops.debris(root) == []
        for w in range(WORKERS):
            ops.run_batch(worker_steps(w, serial, world))
        assert ops.normal_form(root) == ops.normal_form(serial)
        print(json.dumps({"test": "concurrency", "processes": WORKERS,
                          "operations": len(mutations), "most_at_once": overlap}))
    finally:
        for child in children:
            if child.poll() is None:
                ops.kill_group(child)
        ops.unmount_and_remove(root)
        ops.unmount_and_remove(serial)


PLAYBOOK = """
- hosts: all
  gather_facts: false
  vars:
    number: "{{ groups['all'].index(inventory_hostname) }}"
  module_defaults:
    group/strata.layers.layers:
      data_root: "{{ root }}"
  tasks:
    - name: The same archive on every host, at once
      strata.layers.layer_import: {src: "{{ archive }}", tag: ["shared:1"]}
      register: shared
    - name: A layer per host (two hosts share one)
      strata.layers.layer_import:
        src: "{{ pool[number | int % 3] }}"
        parent: shared:1
        tag: ["{{ inventory_hostname }}:1"]
    - strata.layers.container_layer:
        name: "{{ inventory_hostname }}-tmp"
        image: shared:1
        state: mounted
    - strata.layers.container_layer:
        name: "{{ inventory_hostname }}-keep"
        image: "{{ inventory_hostname }}:1"
    - strata.layers.container_layer:
        name: "{{ inventory_hostname }}-tmp"
        state: absent
    - name: Exactly one fork imported the shared archive
      run_once: true
      ansible.builtin.assert:
        that:
          - groups['all'] | map('extract', hostvars, ['shared', 'changed']) | select | list | length == 1
"""


def playbook_env() -> dict:
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1",
                ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")


def test_ansible_playbook_with_four_forks_on_one_store(world, tmp_path):
    hosts = ["h%d" % n for n in range(1, 5)]
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {
        "hosts": {h: {} for h in hosts},
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}))
    playbook = tmp_path / "concurrent.yml"
    playbook.write_text(PLAYBOOK)
    root = ops.copy_store(world["base"], str(tmp_path / "played"))
    serial = ops.copy_store(world["base"], str(tmp_path / "serial"))
    extra = {"root": root, "archive": world["archive"], "pool": world["pool"]}
    try:
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                               "-i", str(inventory), "-f", "4", str(playbook),
                               "-e", json.dumps(extra)], cwd=REPO, env=playbook_env(),
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert ops.findings(root) == [] and ops.debris(root) == []
        for number, host in enumerate(hosts):
            ops.run_batch([
                ["archive", {"data_root": serial, "src": world["archive"], "tag": ["shared:1"]}],
                ["import", {"data_root": serial, "src": world["pool"][number % 3],
                            "parent": "shared:1", "tag": ["%s:1" % host]}],
                ["container", {"data_root": serial, "name": host + "-tmp", "image": "shared:1",
                               "state": "mounted"}],
                ["container", {"data_root": serial, "name": host + "-keep",
                               "image": "%s:1" % host}],
                ["container", {"data_root": serial, "name": host + "-tmp", "state": "absent"}]])
        assert ops.normal_form(root) == ops.normal_form(serial)
    finally:
        ops.unmount_and_remove(root)
        ops.unmount_and_remove(serial)


def test_a_lock_held_too_long_fails_the_module_naming_the_holder(world, tmp_path):
    """The holder is a real layer_import, blocked reading its source (a FIFO) with the
    store lock held; the module run through ``ansible`` gives up after lock_timeout."""
    root = ops.copy_store(world["base"], str(tmp_path / "locked"))
    fifo = str(tmp_path / "slow-source")
    os.mkfifo(fifo)
    holder = ops.start("import", {"data_root": root, "src": fifo, "format": "layer",
                                  "tag": ["slow:1"]})
    try:
        note = wait_for_lock_note(os.path.join(root, "lock"), holder)
        assert note.startswith("pid %d " % holder.pid)
        args = "data_root=%s src=%s lock_timeout=1" % (root, world["pool"][0])
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"),
                               "localhost", "-i", "localhost,", "-c", "local",
                               "-e", "ansible_python_interpreter=%s" % sys.executable,
                               "-m", "strata.layers.layer_import", "-a", args],
                              cwd=REPO, env=playbook_env(), capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode != 0 and "FAILED! => " in proc.stdout, proc.stdout + proc.stderr
        failed = json.loads(proc.stdout.split("FAILED! => ", 1)[1])
        assert failed["error"] == "Locked"
        assert "pid %d" % holder.pid in failed["msg"]
        assert "layer_import of %s" % fifo in failed["msg"]
        assert "gave up after 1s" in failed["msg"] and "lock_timeout" in failed["msg"]
        feeder = threading.Thread(target=feed, args=(fifo, layer_bytes(30, 5000)))
        feeder.start()
        out, err = holder.communicate(timeout=120)
        feeder.join()
        assert holder.returncode == 0, out + err[-2000:]
        assert ops.findings(root) == [] and "slow:1" in ops.facts(root)["tags"]
    finally:
        if holder.poll() is None:
            ops.kill_group(holder)
        ops.unmount_and_remove(root)


def wait_for_lock_note(path: str, holder: subprocess.Popen, limit: float = 60) -> str:
    import time
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert holder.poll() is None, holder.communicate()
        try:
            with open(path) as handle:
                note = handle.read().strip()
        except FileNotFoundError:
            note = ""
        if note:
            return note
        time.sleep(0.02)
    raise AssertionError("the holder never took the lock")


def feed(fifo: str, data: bytes) -> None:
    with open(fifo, "wb") as handle:
        handle.write(data)
