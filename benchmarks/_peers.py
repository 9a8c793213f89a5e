"""Peers and wrappers the process benchmarks run: a private dockerd (20.10, overlay2),
a throwaway podman root, and the engine's modules run as Ansible runs them.

Running a module as Ansible does: ``ansible`` (the ad-hoc command, on this host) is
asked once for the module with ``ANSIBLE_KEEP_REMOTE_FILES=1``; the ``AnsiballZ_*.py``
file it leaves is the very program Ansible runs on a managed host (a zip of the module
and the module_utils it imports, unpacked to a temporary file and imported from the
zip: nothing is byte-compiled ahead, as on a fresh host). Its parameters are one JSON
literal in the file, which ``ansiballz`` rewrites for each case.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional

from _common import REPO, progress, sh, wipe

from tests.support.dockerd import Dockerd, available, running

PYTHON = os.path.join(REPO, ".venv", "bin", "python")


# ---------------------------------------------------------------------- ansible-style runs

def ansiballz(module: str, params: Dict[str, Any], dest: str, seed_args: str,
              collections: Optional[str] = None) -> str:
    """An AnsiballZ program of ``strata.layers.<module>`` (or of ``module`` itself when
    it is a full name, ``ansible.builtin.ping``) with ``params`` at ``dest``.

    ``seed_args`` are ad-hoc arguments of a cheap first run (its only purpose is to
    leave the program behind); ``collections`` the collections path to take the
    collection from (this tree's by default)."""
    fqcn = module if module.count(".") == 2 else "strata.layers.%s" % module
    module = fqcn.rsplit(".", 1)[1]
    keep = tempfile.mkdtemp(prefix="strata-bench-ansiballz-")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections or os.path.join(REPO, ".collections"),
               ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=keep,
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    try:
        sh([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost",
            "-e", "ansible_python_interpreter=%s" % PYTHON,
            "-m", fqcn, "-a", seed_args], env=env)
        found = glob.glob(os.path.join(keep, "*", "AnsiballZ_%s.py" % module))
        if not found:
            raise RuntimeError("ansible left no AnsiballZ_%s.py in %s" % (module, keep))
        with open(found[0]) as handle:
            text = handle.read()
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    match = re.search(r"^params='(.*)',$", text, re.M)
    if match is None:
        raise RuntimeError("no params line in the AnsiballZ program of %s" % module)
    wrapped = json.loads(match.group(1))
    args = {k: v for k, v in wrapped["ANSIBLE_MODULE_ARGS"].items() if k.startswith("_ansible")}
    args.update(params)
    line = "params=%r," % json.dumps({"ANSIBLE_MODULE_ARGS": args})
    with open(dest, "w") as handle:
        handle.write(text[:match.start()] + line + text[match.end():])
    return dest


def run_measured(cmd: List[str]) -> Dict[str, Any]:
    """Wall seconds, CPU seconds (user + system, its waited-for children included) and
    peak resident memory (bytes, ru_maxrss) of ``cmd`` run as a child process, from
    wait4, and the last 3000 bytes it printed (``output``); a module that reports
    ``failed`` raises."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()[-3000:]
    if proc.returncode != 0 or b'"failed": true' in text:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd[:3]), proc.returncode,
                                                   text.decode("utf-8", "replace")))
    return {"wall": wall, "maxrss": usage.ru_maxrss * 1024.0,
            "cpu": usage.ru_utime + usage.ru_stime, "output": text}


# ---------------------------------------------------------------------- dockerd

@contextlib.contextmanager
def dockerd(data_root: str) -> Iterator[Optional[Dockerd]]:
    """A running private dockerd 20.10 (overlay2, tests.support.dockerd's) whose data root
    is on the benchmark's filesystem, or None (said on stderr) when this host has none
    or it does not start; stopped by its pid and its data root wiped at the end."""
    missing = available()
    if missing is not None:
        progress("no dockerd (%s): docker load is left out" % missing)
        yield None
        return
    with contextlib.ExitStack() as stack:
        stack.callback(wipe, data_root)     # after the daemon has stopped
        try:
            daemon: Optional[Dockerd] = stack.enter_context(running(data_root))
        except RuntimeError as exc:
            progress("dockerd did not start (%s): docker load is left out" % exc)
            daemon = None
        yield daemon
