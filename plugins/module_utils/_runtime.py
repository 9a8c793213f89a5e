# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Driving an OCI runtime (runc, crun) on a bundle, and the container's run state.

The runtime keeps its own state under ``<data_root>/runtime/<runtime>`` (its
``--root``), so two stores on one host never share container ids with each other or
with Docker.

A detached container gets a monitor, as containerd's shim: the module forks a
process that leaves the module's session, becomes the child subreaper, runs
``<runtime> run --detach`` (the container's stdout and stderr go to its log file,
its stdin is ``/dev/null`` or, ``interactive``, a FIFO that the container itself
holds open so reads block as with ``docker run -i``), tells the module the
container's pid, then waits for the container's init to exit, writes ``exit.json``
(exit code, finish time; the module never waits on it under the store lock) and
deletes the runtime's state.  The monitor holds no store lock and no descriptor of
the module's.

Run state lives beside the container record: ``state.json`` (written by the module
under the store lock: pid, the pid's start time in clock ticks, start time, log) and
``exit.json`` (written once by the monitor).  Status is derived, never trusted: a
recorded pid that is gone (or reused: its start time differs) without an
``exit.json`` is a container that exited whose code nobody saw (-1).
On-disk layout (``runtime/``, a container's record directory): docs/design.md, "Layout
of a store".
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    makedirs, read_json, write_json)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import umount

RUNTIMES = ("runc", "crun")
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15
OUTPUT_LIMIT = 256 * 1024     # stdout/stderr returned by a foreground run, each (its tail)
EXIT_RECORD_WAIT = 10.0       # seconds a stop waits for the monitor's exit.json


class RuntimeFailed(StoreError):
    """The OCI runtime refused to create or start the container."""


def find_runtime(name: str) -> str:
    if name not in RUNTIMES:
        raise InvalidInput("runtime %r is not one of %s" % (name, ", ".join(RUNTIMES)))
    path = shutil.which(name) or next((p for p in ("/usr/sbin/" + name, "/usr/bin/" + name)
                                       if os.access(p, os.X_OK)), None)
    if path is None:
        raise Unsupported("the OCI runtime %s is not installed on this host: install the %s "
                          "package (apt-get install %s / dnf install %s) or choose another "
                          "runtime" % (name, name, name, name))
    return path


def pid_start_ticks(pid: int) -> Optional[int]:
    """Field 22 of /proc/<pid>/stat: when the process started (None: no such process)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def alive(pid: Optional[int], ticks: Optional[int]) -> bool:
    if not pid:
        return False
    now = pid_start_ticks(pid)
    if now is None:
        return False
    if ticks is not None and now != ticks:
        return False
    try:
        with open("/proc/%d/status" % pid) as handle:
            return not any(line.startswith("State:") and "Z" in line.split()[1:2]
                           for line in handle)
    except OSError:
        return False


class Runtime:
    """One OCI runtime binary with the store's own state root."""

    def __init__(self, name: str, state_root: str) -> None:
        self.name = name
        self.binary = find_runtime(name)
        self.root = os.path.join(state_root, name)
        self.monitor: Optional[int] = None    # the last detached start's monitor

    def argv(self, *args: str) -> List[str]:
        return [self.binary, "--root", self.root] + list(args)

    def delete(self, cid: str) -> None:
        """Forget the container (runtime state, cgroup); nothing to forget is fine."""
        if not os.path.isdir(os.path.join(self.root, cid)):
            return
        subprocess.run(self.argv("delete", "--force", cid), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       timeout=60)

    def run_foreground(self, cid: str, bundle: str, out: str, err: str
                       ) -> Tuple[int, str, str]:
        """Run to completion; (exit code, stdout tail, stderr tail)."""
        makedirs(self.root)
        # the pid file lets another module stop or kill this run (state: stopped or
        # absent elsewhere); a stale one from an earlier run must not name it
        pid_file = os.path.join(bundle, "pid")
        if os.path.lexists(pid_file):
            os.unlink(pid_file)
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.run(self.argv("run", "--pid-file", pid_file, "--bundle", bundle,
                                            cid),
                                  stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                  check=False)
        self.delete(cid)
        return _exit_code(proc.returncode), tail(out), tail(err)

    def start_detached(self, cid: str, bundle: str, log: str, stdin: Optional[str],
                       exit_path: str, unmount: Optional[str] = None) -> int:
        """Start the container under a monitor (module docstring); its pid.  The monitor
        unmounts ``unmount`` (the root filesystem the start mounted) once it exited."""
        makedirs(self.root)
        pid_file = os.path.join(bundle, "pid")
        for stale in (pid_file, exit_path):
            if os.path.exists(stale):
                os.unlink(stale)
        argv = self.argv("run", "--detach", "--pid-file", pid_file, "--bundle", bundle, cid)
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked monitor
            os.close(reader)
            _monitor(argv, log, stdin, writer, pid_file, exit_path, self.argv("delete", cid),
                     unmount)
        os.close(writer)
        with os.fdopen(reader, "rb") as handle:
            message = handle.read().decode("utf-8", "replace")
        os.waitpid(child, 0)
        if not message.startswith("ok:"):
            raise RuntimeFailed("%s could not start the container: %s" % (
                self.name, message.partition(":")[2].strip() or last_lines(log)))
        pid, _sep, monitor = message[3:].partition(":")
        self.monitor = int(monitor) if monitor else None
        return int(pid)

    def kill(self, pid: int, ticks: Optional[int], signum: int) -> None:
        if alive(pid, ticks):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def tail(path: str, limit: int = OUTPUT_LIMIT) -> str:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def last_lines(path: str, count: int = 3) -> str:
    lines = [line for line in tail(path, 8192).splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no message (see %s)" % path


def _monitor(argv: List[str], log: str, stdin: Optional[str], report: int, pid_file: str,
             exit_path: str, delete: List[str], unmount: Optional[str]
             ) -> None:  # pragma: no cover - forked
    """The body of the monitor process; never returns."""
    code = 1
    try:
        os.setsid()
        if os.fork() != 0:       # the module reaps the first child at once
            os._exit(0)
        _detach_descriptors(report)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        libc.prctl(PR_SET_NAME, b"strata-monitor", 0, 0, 0)
        container = _launch(argv, log, stdin, report, pid_file)
        if container is None:
            os._exit(1)
        status = _reap(container)
        finished = timestamp()
        if unmount:
            # before exit.json: whoever waits for it (a stop) finds the mount gone
            try:
                umount(unmount)
            except OSError:
                pass
        write_json(exit_path, {"exit_code": status, "finished_at": finished})
        subprocess.run(delete, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, timeout=60)
        code = 0
    except BaseException:
        pass
    os._exit(code)


def _detach_descriptors(keep: int) -> None:  # pragma: no cover - forked
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in (keep, null):
            try:
                os.close(fd)
            except OSError:
                pass
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.chdir("/")


def _launch(argv: List[str], log: str, stdin: Optional[str], report: int,
            pid_file: str) -> Optional[int]:  # pragma: no cover - forked
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    # O_RDWR on the FIFO: the container holds a writer itself, so its reads block
    # rather than see end-of-file (docker run -i with nobody typing)
    inp = os.open(stdin or os.devnull, os.O_RDWR | os.O_CLOEXEC)
    proc = subprocess.run(argv, stdin=inp, stdout=out, stderr=out, check=False)
    os.close(inp)
    os.close(out)
    pid = None
    if proc.returncode == 0:
        try:
            with open(pid_file) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            pid = None
    message = ("ok:%d:%d" % (pid, os.getpid())) if pid else ("fail:%s" % last_lines(log))
    os.write(report, message.encode())
    os.close(report)
    return pid


def _reap(pid: int) -> int:  # pragma: no cover - forked
    """Wait for the container's init (reparented to us, the subreaper); its exit code
    (128 + signal when killed, as Docker reports it)."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return -1
        except InterruptedError:
            continue
        if got == pid:
            return _exit_code(os.waitstatus_to_exitcode(status))


def wait_gone(pid: int, ticks: Optional[int], timeout: float) -> bool:
    """Whether ``pid`` is gone within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while alive(pid, ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def wait_file(path: str, timeout: float) -> Optional[Dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_json(path)
        except (FileNotFoundError, ValueError):
            if time.monotonic() >= deadline:
                return None
        time.sleep(0.01)


# ---------------------------------------------------------------------- run state

STATE_FILE = "state.json"
EXIT_FILE = "exit.json"


def timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%06dZ" % (now % 1 * 1e6)


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        data = read_json(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_state(record_dir: str) -> Dict[str, Any]:
    """The container's run state as the module returns it (module docstring)."""
    state = _read(os.path.join(record_dir, STATE_FILE))
    if state is None:
        return {"status": "created", "pid": None, "exit_code": None, "started_at": None,
                "finished_at": None, "log_path": None}
    out = {"status": "exited", "pid": None, "exit_code": state.get("exit_code"),
           "started_at": state.get("started_at"), "finished_at": state.get("finished_at"),
           "log_path": state.get("log_path")}
    ended = _read(os.path.join(record_dir, EXIT_FILE))
    if ended is not None and state.get("status") == "running":
        out.update(exit_code=ended.get("exit_code"), finished_at=ended.get("finished_at"))
    elif state.get("status") == "running":
        pid, ticks = container_pid(record_dir, state)
        if alive(pid, ticks) or monitor_alive(state):
            out.update(status="running", pid=pid)
        elif out["exit_code"] is None:
            out["exit_code"] = -1   # gone, and its monitor with it: nobody saw the code
    return out


def monitor_alive(state: Dict[str, Any]) -> bool:
    """Whether whoever records this run's end is still at it: the detached monitor (until
    it has unmounted and written exit.json the run is not over, and a new start must not
    run on the mount it is about to unmount) or the foreground module."""
    return alive(state.get("monitor"), state.get("monitor_ticks")) or \
        alive(state.get("shim"), state.get("shim_ticks"))


def container_pid(record_dir: str, state: Dict[str, Any]) -> Tuple[Optional[int], Optional[int]]:
    """(pid, start ticks) of the container's init: recorded, or (a foreground run) from
    the runtime's pid file once it has started."""
    if state.get("pid"):
        return int(state["pid"]), state.get("ticks")
    try:
        with open(os.path.join(record_dir, "bundle", "pid")) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return None, None
    # a pid file outlives its process: the pid may be another process's by now (the
    # module that ran it was killed), and a stop would signal it.  It is the container's
    # only while that process is in the container's cgroup
    if not in_cgroup(pid, os.path.basename(os.path.normpath(record_dir))):
        return None, None
    return pid, pid_start_ticks(pid)


def in_cgroup(pid: int, cid: str) -> bool:
    """Whether ``pid`` runs in container ``cid``'s cgroup (``/strata/<cid>``, the spec's
    cgroupsPath), as /proc/<pid>/cgroup shows it."""
    try:
        with open("/proc/%d/cgroup" % pid) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    wanted = "/strata/" + cid
    return any(line.split(":", 2)[-1] == wanted or
               line.split(":", 2)[-1].startswith(wanted + "/") for line in lines)
