"""The image_distribute role through a real ``ansible-playbook``, with four "hosts" that are
four stores on this machine (local connection; the fleet of sshd hosts in molecule's
``fleet`` scenario runs the same role over ssh).  Each host holds a different prefix of
a four-layer image and must receive exactly the layers it lacks; a second run sends
nothing to them while the image goes on from one host's store (source host, through
fetch) to a fifth store.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.distimages import make
from tests.support.paths import COLLECTIONS, REPO

LAYER = 1 << 20
HELD = {"h0": 0, "h1": 1, "h3": 3, "h4": 4}

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - strata.layers.layer_import:
        src: "{{ work }}/p{{ held }}.tar"
        data_root: "{{ image_distribute_data_root }}"
      when: held | int > 0 and run == 'first'
    - ansible.builtin.include_role: {name: strata.layers.image_distribute}
      vars:
        image_distribute_image: dist/app:1
        image_distribute_src: "{{ work }}/p4.tar"
        image_distribute_controller_store: "{{ work }}/controller-store"
        image_distribute_controller_staging: "{{ work }}/controller-staging"
      when: run != 'source'
    - ansible.builtin.include_role: {name: strata.layers.image_distribute}
      vars:
        image_distribute_image: dist/app:1
        image_distribute_source_host: h0
        image_distribute_source_data_root: "{{ work }}/stores/h0"
        image_distribute_controller_staging: "{{ work }}/controller-staging"
      when: run == 'source'
    - ansible.builtin.copy:
        content: "{{ image_distribute_result | to_json }}"
        dest: "{{ work }}/result-{{ run }}-{{ inventory_hostname }}.json"
        mode: "0644"
      delegate_to: localhost
"""


def _inventory(work: str, hosts: dict) -> str:
    lines = ["all:", "  hosts:"]
    for name, held in hosts.items():
        lines.append("    %s: {ansible_connection: local, held: %d}" % (name, held))
    lines += ["  vars:", "    ansible_python_interpreter: %s" % sys.executable,
              "    work: %s" % work,
              "    image_distribute_data_root: %s/stores/{{ inventory_hostname }}" % work,
              "    image_distribute_staging: %s/staging/{{ inventory_hostname }}" % work]
    path = os.path.join(work, "inventory-%d.yml" % len(hosts))
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _play(work: str, inventory: str, run: str) -> dict:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    playbook = os.path.join(work, "play.yml")
    with open(playbook, "w") as handle:
        handle.write(PLAYBOOK)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                           "-i", inventory, playbook, "-e", "run=" + run], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    out = {}
    for name in os.listdir(work):
        if name.startswith("result-%s-" % run):
            with open(os.path.join(work, name)) as handle:
                out[name[len("result-%s-" % run):-5]] = json.load(handle)
    out["stdout"] = proc.stdout
    return out


def test_each_host_receives_only_what_it_lacks(tmp_path):
    work = str(tmp_path)
    ids = make(work, layers=4, size=LAYER)
    inventory = _inventory(work, HELD)
    first = _play(work, inventory, "first")
    for host, held in HELD.items():
        result = first[host]
        assert result["image_id"] == ids["p4"]
        assert int(result["layers_held"]) == held
        assert int(result["layers_sent"]) == 4 - held
        assert result["received"] == (held < 4) and result["changed"] == (held < 4)
        # a layer tar is its file plus headers and tar padding (< 12 KiB); config, manifest
        assert (4 - held) * LAYER <= int(result["bytes_sent"]) < (4 - held) * (LAYER + 12288) + 16384
    assert "whole image to each" in first["stdout"]

    # again, now from one host's store (h0), with a fifth store that holds the bottom two
    # layers: it alone receives something (through fetch to the controller)
    layers_two = dict(HELD, h5=2)
    from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
    layer_import({"src": os.path.join(work, "p2.tar"),
                  "data_root": os.path.join(work, "stores", "h5")})
    source = _play(work, _inventory(work, layers_two), "source")
    assert int(source["h5"]["layers_sent"]) == 2 and source["h5"]["changed"] is True
    for host in HELD:
        assert source[host]["changed"] is False and int(source[host]["bytes_sent"]) == 0
    assert not os.listdir(os.path.join(work, "controller-staging"))
