"""The Galaxy tarball holds the collection, not a checkout's caches and test outputs.

A copy of the tracked files gets the debris a working checkout gathers (hypothesis's
example database, bytecode, pytest and molecule state, test and benchmark outputs) at the
top and deeper down; ``ansible-galaxy collection build`` must leave all of it out
(``build_ignore`` in galaxy.yml).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

from tests.support.paths import REPO

DEBRIS = [
    ".hypothesis/examples/0a1b/2c3d",
    "tests/unit/.hypothesis/examples/0a1b/2c3d",
    "__pycache__/x.cpython-311.pyc",
    "plugins/module_utils/__pycache__/_store.cpython-311.pyc",
    "plugins/module_utils/_store.pyc",
    ".pytest_cache/v/cache/lastfailed",
    "tests/unit/.pytest_cache/v/cache/nodeids",
    "tests/output/junit/sanity.xml",
    "benchmarks/results/import.json",
    ".molecule/state.yml",
    "extensions/molecule/default/.molecule/state.yml",
    ".mypy_cache/3.11/x.json",
    ".ruff_cache/0.1/x",
    ".tox/py311/x",
    ".coverage",
    ".coverage.host.1234",
    "htmlcov/index.html",
    ".cache/molecule/x",
    "strata-layers-0.0.9.tar.gz",
    ".venv/bin/python",
    ".collections/ansible_collections/strata/layers/x",
]
IGNORED_TOP = {".hypothesis", ".pytest_cache", ".molecule", ".mypy_cache", ".ruff_cache",
               ".tox", ".coverage", "htmlcov", ".cache", ".venv", ".collections"}
IGNORED_ANYWHERE = {".hypothesis", "__pycache__", ".pytest_cache", ".molecule"}


def _tracked_copy(dest: str) -> None:
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    for rel in listed.decode().split("\0"):
        src = os.path.join(REPO, rel)
        if not rel or not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel), follow_symlinks=False)


def _plant(root: str) -> None:
    for rel in DEBRIS:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write("debris\n")


def _built_members(src: str, out: str) -> list:
    galaxy = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    subprocess.run([galaxy, "collection", "build", "--output-path", out, src], check=True,
                   capture_output=True)
    (tarball,) = os.listdir(out)
    with tarfile.open(os.path.join(out, tarball)) as archive:
        return archive.getnames()


def _debris_in(names: list) -> list:
    found = []
    for name in names:
        parts = name.split("/")
        if parts[0] in IGNORED_TOP or IGNORED_ANYWHERE.intersection(parts) \
                or name.endswith((".pyc", ".tar.gz")) or name.startswith(("tests/output",
                                                                          "benchmarks/results")):
            found.append(name)
    return found


def test_build_leaves_caches_and_test_outputs_out(tmp_path):
    src = str(tmp_path / "src")
    _tracked_copy(src)
    _plant(src)
    names = _built_members(src, str(tmp_path / "out"))
    assert "plugins/modules/image.py" in names
    assert "MANIFEST.json" in names and "docs/modules/image_module.rst" in names
    assert _debris_in(names) == []
