"""Two real managed hosts on this machine (tests/support/fleet.py), driven by ansible-playbook.

Each host is an sshd in its own mount namespace with its own loop filesystem at
/var/lib/strata: the test checks that Ansible reaches each one, that each reports its
own filesystem and its own store, that the machine's /var/lib/strata is untouched, and
that ``down`` leaves no process, loop device, mount or file behind.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from tests.support import fleet as fleet_mod
from tests.support.paths import COLLECTIONS, REPO
from tests.support.tars import LayerTar, write

HOSTS = [{"name": "strata-ext4", "fs": "ext4"}, {"name": "strata-btrfs", "fs": "btrfs"}]

PLAYBOOK = """
- hosts: strata_fleet
  gather_facts: false
  tasks:
    - name: before
      strata.layers.store_info:
      register: before
    - name: import on one host only
      strata.layers.layer_import:
        src: "{{ layer }}"
        tag: [fleet/tiny:1]
      when: inventory_hostname == importer
    - name: after
      strata.layers.store_info:
      register: after
    - name: hostname
      ansible.builtin.command: hostname
      changed_when: false
      register: name
    # Written by the host itself (over ssh): the test's tmp dir is shared, not a mount.
    - name: report
      ansible.builtin.copy:
        content: "{{ {'before': before, 'after': after, 'hostname': name.stdout} | to_json }}"
        dest: "{{ out }}/{{ inventory_hostname }}.json"
        mode: "0644"
"""


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("the fleet needs root")
    for program in ("unshare", "losetup", "ssh", "ssh-keygen", "mkfs.ext4", "mkfs.btrfs"):
        if shutil.which(program) is None:
            pytest.skip("%s is not installed" % program)
    if not os.access(fleet_mod.SSHD, os.X_OK):
        pytest.skip("openssh-server is not installed (run ./scripts/setup)")


def _play(inventory: str, playbook: str, extra: dict) -> None:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory,
           "-e", json.dumps(extra), playbook]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def _reports(out: str) -> dict:
    found = {}
    for name in os.listdir(out):
        with open(os.path.join(out, name)) as handle:
            found[name[:-len(".json")]] = json.load(handle)
    return found


def _live_fleet_processes(state_dir: str) -> list:
    """Live (not zombie) processes whose command line mentions the state dir."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                args = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        if state_dir in args and fleet_mod.start_time(int(pid)):
            found.append((int(pid), args.replace("\0", " ")))
    return found


def _host_mounts_at_data_root() -> str:
    return subprocess.run(["findmnt", "-rn", "--mountpoint", fleet_mod.MOUNTPOINT],
                          capture_output=True, text=True, check=False).stdout.strip()


def test_two_hosts_each_see_their_own_store(tmp_path):
    _skip_unless_possible()
    state_dir = str(tmp_path / "fleet")
    layer = write(tmp_path / "tiny.tar", LayerTar().file("hello.txt", b"fleet\n").bytes())
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    out = tmp_path / "reports"
    out.mkdir()
    marker = "fleet-marker-%s" % uuid.uuid4().hex
    mounted_before = _host_mounts_at_data_root()
    with fleet_mod.fleet(state_dir, hosts=HOSTS) as running:
        pids = [h.pid for h in running.hosts]
        _play(running.inventory, str(playbook),
              {"layer": layer, "importer": "strata-ext4", "out": str(out)})
        # A file made on one host's data root is on neither the other host nor the machine.
        running.ssh("strata-ext4", "touch /var/lib/strata/%s" % marker)
        other = running.ssh("strata-btrfs", "ls /var/lib/strata", check=True).stdout
        machine_sees_marker = os.path.exists(os.path.join(fleet_mod.MOUNTPOINT, marker))
        mounted_during = _host_mounts_at_data_root()

    reports = _reports(str(out))
    assert sorted(reports) == sorted(h["name"] for h in HOSTS)
    for host in HOSTS:
        report = reports[host["name"]]
        assert report["hostname"] == host["name"]
        assert report["before"]["backing_filesystem"] == host["fs"]
        assert report["after"]["backing_filesystem"] == host["fs"]
        assert report["before"]["images"] == []
    after = {name: report["after"] for name, report in reports.items()}
    assert [i["tags"] for i in after["strata-ext4"]["images"]] == [["fleet/tiny:1"]]
    assert after["strata-btrfs"]["images"] == [] and after["strata-btrfs"]["layers"] == []
    assert marker not in other and not machine_sees_marker
    assert mounted_during == mounted_before, "the fleet's mounts leaked to the machine"

    # Everything is gone.
    assert not os.path.exists(state_dir)
    assert _live_fleet_processes(state_dir) == []
    for pid in pids:
        assert fleet_mod.start_time(pid) == 0, "sshd %d survived down" % pid
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                             check=True).stdout
    assert state_dir not in losetup
    assert fleet_mod.fleet_loops(state_dir) == {}
    assert _host_mounts_at_data_root() == mounted_before


def test_down_is_idempotent_and_cleans_a_half_made_fleet(tmp_path):
    _skip_unless_possible()
    state_dir = str(tmp_path / "fleet")
    # The second host cannot start (its port is taken): up must remove the first one too.
    with socket.socket() as taken:
        taken.bind(("127.0.0.12", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        bad = [{"name": "ok", "fs": "ext4"},
               {"name": "bad", "fs": "ext4", "address": "127.0.0.12", "port": port}]
        with pytest.raises(fleet_mod.FleetError, match="port %d is taken" % port):
            fleet_mod.up(state_dir, bad)
    assert not os.path.exists(state_dir)
    assert fleet_mod.fleet_loops(state_dir) == {}
    assert _live_fleet_processes(state_dir) == []
    fleet_mod.down(state_dir)
    fleet_mod.down(state_dir)
