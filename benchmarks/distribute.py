"""The image_distribute role to four fleet hosts (real sshd hosts on loopback, each with its
own loop filesystem: tests/support/fleet.py) against copying the whole archive to each
host and importing it there (what people do today: community.docker #1106).

The image has ``--layers`` layers of ``--layer-mb`` MiB (random bytes: incompressible,
like most binaries after gzip); the hosts hold 0, 1, 3 and all of its layers (images
``dist/pK:1`` imported beforehand).  Before each timed run the image under test is
removed from every host and pruned (its seed layers stay).  The controller-side store
the role reads an archive into is made once, in the warm-up run (a re-run reuses it).
Both sides are ``ansible-playbook`` runs over ssh, taking turns; medians of ``--runs``.

    sudo .venv/bin/python benchmarks/distribute.py [--runs 3]

The fleet is four ext4 hosts on 127.0.0.61-64 (not the molecule scenario's addresses).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import REPO, Results, machine, progress, timed, workspace
from tests.support import fleet as fleet_mod
from tests.support.distimages import make
from tests.support.paths import COLLECTIONS

HELD = {"dist-a": 0, "dist-b": 1, "dist-c": 3, "dist-d": 4}
# addresses of their own (the molecule fleet uses 127.0.0.11-14): no lock needed
HOSTS = [{"name": name, "fs": "ext4", "address": "127.0.0.%d" % (61 + n)}
         for n, name in enumerate(HELD)]

SEED = """
- hosts: strata_fleet
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        src: "{{ work }}/p{{ held[inventory_hostname] }}.tar"
        dest: "/tmp/strata-seed-{{ inventory_hostname }}.tar"
        mode: "0600"
      when: held[inventory_hostname] > 0
    - strata.layers.layer_import:
        src: "/tmp/strata-seed-{{ inventory_hostname }}.tar"
      when: held[inventory_hostname] > 0
    - ansible.builtin.file:
        path: "/tmp/strata-seed-{{ inventory_hostname }}.tar"
        state: absent
"""
RESET = """
- hosts: strata_fleet
  gather_facts: false
  tasks:
    - strata.layers.image: {name: dist/app:1, state: absent}
      when: held[inventory_hostname] < 4
    - strata.layers.store_prune:
"""
ROLE = """
- hosts: strata_fleet
  gather_facts: false
  roles:
    - role: strata.layers.image_distribute
      vars:
        image_distribute_image: dist/app:1
        image_distribute_src: "{{ work }}/p%(n)d.tar"
        image_distribute_controller_store: "{{ work }}/controller-store"
        image_distribute_summary: false
  post_tasks:
    - ansible.builtin.copy:
        content: "{{ image_distribute_result.bytes_sent }}"
        dest: "{{ work }}/sent-{{ inventory_hostname }}"
        mode: "0644"
      delegate_to: localhost
"""
WHOLE = """
- hosts: strata_fleet
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        src: "{{ work }}/p%(n)d.tar"
        dest: "/tmp/strata-whole-{{ inventory_hostname }}.tar"
        mode: "0600"
    - strata.layers.layer_import:
        src: "/tmp/strata-whole-{{ inventory_hostname }}.tar"
        tag: [dist/app:1]
    - ansible.builtin.file:
        path: "/tmp/strata-whole-{{ inventory_hostname }}.tar"
        state: absent
"""


class Plays:
    def __init__(self, work: str, inventory: str, layers: int) -> None:
        self.work, self.inventory, self.layers = work, inventory, layers
        held = {host: (layers if count == 4 else count) for host, count in HELD.items()}
        self.extra = json.dumps({"work": work, "held": held})

    def play(self, name: str, text: str) -> None:
        path = os.path.join(self.work, name + ".yml")
        with open(path, "w") as handle:
            handle.write(text % {"n": self.layers} if "%(n)d" in text else text)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                               "-i", self.inventory, "-e", self.extra, "-f", "4", path],
                              cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError("%s failed: %s %s" % (name, proc.stdout[-4000:], proc.stderr[-2000:]))

    def sent(self) -> int:
        total = 0
        for host in HELD:
            with open(os.path.join(self.work, "sent-" + host)) as handle:
                total += int(handle.read().strip())
        return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mb", type=int, default=32)
    args = parser.parse_args()
    with workspace("distribute", "/var/tmp") as work:
        state = os.path.join(work, "fleet")
        made = make(work, layers=args.layers, size=args.layer_mb << 20)
        progress("image %s: %d layers of %d MiB" % (made["p%d" % args.layers], args.layers,
                                                    args.layer_mb))
        with fleet_mod.fleet(state, HOSTS,
                             size_mb=max(400, args.layers * args.layer_mb * 3)) as fl:
            plays = Plays(work, fl.inventory, args.layers)
            plays.play("seed", SEED)
            plays.play("role", ROLE)                      # warm-up: the controller's store
            results = Results()
            whole = os.path.getsize(os.path.join(work, "p%d.tar" % args.layers))
            for run in range(args.runs):
                order = ["image_distribute", "whole archive"]
                if run % 2:
                    order.reverse()
                for label in order:
                    plays.play("reset", RESET)
                    if label == "image_distribute":
                        results.add(label, timed(lambda: plays.play("role", ROLE)))
                        results.add("  MB sent (image_distribute)", plays.sent() / 1e6)
                    else:
                        results.add(label, timed(lambda: plays.play("whole", WHOLE)))
                        results.add("  MB sent (whole archive)", whole * len(HELD) / 1e6)
                    if label == "image_distribute":              # every host has it now
                        results.add("image_distribute (re-run)",
                                    timed(lambda: plays.play("again", ROLE)))
                progress("run %d/%d done" % (run + 1, args.runs))
            print(machine(work))
            print("hosts hold 0, 1, 3 and %d of the %d layers" % (args.layers, args.layers))
            print(results.table(base="whole archive"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
