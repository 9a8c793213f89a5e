"""Runs every integration target through a real ``ansible-playbook`` on localhost.

Each target under ``targets/`` is a role (its ``setup_*`` dependencies make its inputs);
this wrapper plays it against localhost with the repository's ansible.cfg.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.paths import COLLECTIONS, REPO

TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")
NAMES = sorted(n for n in os.listdir(TARGETS) if not n.startswith("setup_"))


@pytest.mark.parametrize("target", NAMES)
def test_target(target, tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [%s]\n" % target)
    env = dict(os.environ, ANSIBLE_ROLES_PATH=TARGETS, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    bindir = os.path.dirname(sys.executable)
    proc = subprocess.run([os.path.join(bindir, "ansible-playbook"), str(playbook)], cwd=REPO,
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
