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
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional

from _common import REPO, progress, sh, wipe

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"          # the client that matches dockerd 20.10
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


# ---------------------------------------------------------------------- ansible-style runs

def ansiballz(module: str, params: Dict[str, Any], dest: str, seed_args: str,
              collections: Optional[str] = None) -> str:
    """An AnsiballZ program of ``strata.layers.<module>`` with ``params`` at ``dest``.

    ``seed_args`` are ad-hoc arguments of a cheap first run (its only purpose is to
    leave the program behind); ``collections`` the collections path to take the
    collection from (this tree's by default)."""
    keep = tempfile.mkdtemp(prefix="strata-bench-ansiballz-")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections or os.path.join(REPO, ".collections"),
               ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=keep,
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    try:
        sh([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost",
            "-e", "ansible_python_interpreter=%s" % PYTHON,
            "-m", "strata.layers.%s" % module, "-a", seed_args], env=env)
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


def run_measured(cmd: List[str]) -> Dict[str, float]:
    """Wall seconds, CPU seconds (user + system, its waited-for children included) and
    peak resident memory (bytes, ru_maxrss) of ``cmd`` run as a child process, from
    wait4; a module that reports ``failed`` raises."""
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
            "cpu": usage.ru_utime + usage.ru_stime}


# ---------------------------------------------------------------------- dockerd

def _free_name(base: str) -> str:
    return tempfile.mkdtemp(prefix=base, dir="/tmp")


class Dockerd:
    """A private dockerd 20.10 (overlay2) whose data root is on the benchmark's
    filesystem; stopped by its pid."""

    def __init__(self, data_root: str) -> None:
        self.run_dir = _free_name("sbd-")
        self.sock = os.path.join(self.run_dir, "docker.sock")
        self.pidfile = os.path.join(self.run_dir, "docker.pid")
        self.data_root = data_root
        self.proc: Optional[subprocess.Popen] = None
        self.log = open(os.path.join(self.run_dir, "dockerd.log"), "wb")

    def start(self) -> "Dockerd":
        cmd = [DOCKERD, "--data-root", self.data_root,
               "--exec-root", os.path.join(self.run_dir, "exec"), "-H", "unix://" + self.sock,
               "--pidfile", self.pidfile, "--storage-driver", "overlay2",
               "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dockerd exited: see %s" % self.log.name)
            if os.path.exists(self.sock) and self._answers():
                return self
            time.sleep(0.2)
        raise RuntimeError("dockerd did not answer within 60 s")

    def _answers(self) -> bool:
        with contextlib.suppress(OSError):
            with socket.socket(socket.AF_UNIX) as conn:
                conn.connect(self.sock)
                return subprocess.run(self.cmd(["version"]), capture_output=True,
                                      check=False).returncode == 0
        return False

    def cmd(self, args: List[str]) -> List[str]:
        return [DOCKER, "-H", "unix://" + self.sock] + args

    def docker(self, args: List[str]) -> str:
        return sh(self.cmd(args), text=True).stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        from tests.support.loopfs import unmount_below  # pylint: disable=import-outside-toplevel
        unmount_below(self.run_dir)
        unmount_below(self.data_root)
        shutil.rmtree(self.run_dir, ignore_errors=True)


@contextlib.contextmanager
def dockerd(data_root: str) -> Iterator[Optional[Dockerd]]:
    """A running private dockerd, or None (said on stderr) when this host has none."""
    if not (os.access(DOCKERD, os.X_OK) and os.access(DOCKER, os.X_OK)):
        progress("dockerd or its client is not installed: docker load is left out")
        yield None
        return
    daemon = Dockerd(data_root)
    try:
        daemon.start()
    except RuntimeError as exc:
        progress("dockerd did not start (%s): docker load is left out" % exc)
        daemon.stop()
        yield None
        return
    try:
        yield daemon
    finally:
        daemon.stop()
        wipe(data_root)
