"""A real dockerd (Debian's docker.io 20.10) for tests: private data root, exec root,
socket and pid file, no networking set-up; stopped by its pid, its mounts undone.

The driver comes from the daemon.json this helper writes (``--config-file``), as on a
real host, so the module under test can switch it there.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional

from tests.support import loopfs

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # the client that matches dockerd 20.10 (a newer one is in PATH)


def available() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root"
    for prog in (DOCKERD, DOCKER):
        if not os.path.exists(prog):
            return "%s is not installed (apt install docker.io)" % prog
    return None


class Dockerd:
    """One daemon over ``data_root``; ``config`` is its daemon.json."""

    def __init__(self, data_root: str, config: str) -> None:
        self.data_root = data_root
        self.config = config
        # a short private directory: unix socket paths are limited to 108 bytes
        self.run_dir = tempfile.mkdtemp(prefix="dk-", dir="/tmp")
        self.exec_root = os.path.join(self.run_dir, "x")
        self.socket = os.path.join(self.run_dir, "docker.sock")
        self.pidfile = os.path.join(self.run_dir, "docker.pid")
        self.log = os.path.join(self.run_dir, "dockerd.log")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def host(self) -> str:
        return "unix://" + self.socket

    def base_config(self) -> Dict[str, Any]:
        """Everything private to this daemon lives in its daemon.json (not in flags: the
        module under test finds the socket, pid file and data root there, as on a host)."""
        return {"data-root": self.data_root, "exec-root": self.exec_root,
                "hosts": [self.host], "pidfile": self.pidfile, "iptables": False,
                "ip-forward": False, "ip-masq": False, "bridge": "none"}

    def write_config(self, **settings: Any) -> None:
        config = self.base_config()
        config.update({k.replace("_", "-"): v for k, v in settings.items()})
        with open(self.config, "w") as handle:
            json.dump(config, handle, indent=2)

    def driver(self) -> str:
        return self.docker("info", "-f", "{{.Driver}}").strip()

    def start(self, timeout: float = 60.0) -> None:
        os.makedirs(self.data_root, exist_ok=True)
        # data root, exec root, -H, pid file and no-network flags are in daemon.json
        cmd = [DOCKERD, "--config-file", self.config]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dockerd exited with %s:\n%s"
                                   % (self.proc.returncode, self.tail()))
            if os.path.exists(self.socket) and self.docker_ok(["version"]):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("dockerd did not answer within %ss:\n%s" % (timeout, self.tail()))

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log, "rb") as handle:
                return b"".join(handle.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def cmd(self, *args: str) -> List[str]:
        """The client's command line for ``args`` against this daemon."""
        return [DOCKER, "-H", self.host] + list(args)

    def docker_ok(self, args: List[str]) -> bool:
        return subprocess.run(self.cmd(*args), capture_output=True,
                              check=False).returncode == 0

    def docker(self, *args: str, check: bool = True, input: Optional[bytes] = None,
               text: bool = True) -> Any:
        done = subprocess.run([DOCKER, "-H", self.host] + list(args), capture_output=True,
                              check=False, input=input, text=text if input is None else False)
        if check and done.returncode != 0:
            raise RuntimeError("docker %s failed (%s): %s"
                               % (" ".join(args), done.returncode, done.stderr))
        return done.stdout if check else done

    def save(self, image: str) -> bytes:
        return subprocess.run([DOCKER, "-H", self.host, "save", image], capture_output=True,
                              check=True).stdout

    def stop(self) -> None:
        """SIGTERM by pid (SIGKILL after 30 s); its containerd and mounts go too."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        self._kill_leftovers()
        loopfs.unmount_below(self.exec_root)
        for sub in os.listdir(self.data_root) if os.path.isdir(self.data_root) else []:
            # below the data root only: it may itself be a test filesystem's mount point
            loopfs.unmount_below(os.path.join(self.data_root, sub))
        if self._self_bound():
            # dockerd binds its data root onto itself (shared propagation) and leaves the
            # bind behind when live-restore keeps containers running
            subprocess.run(["umount", "-l", self.data_root], capture_output=True, check=False)

    def _self_bound(self) -> bool:
        """dockerd's bind of the data root onto itself (its mountinfo root is the path)."""
        real = os.path.realpath(self.data_root)
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                fields = line.split()
                if fields[4] == real and fields[3] != "/" and real.endswith(fields[3]):
                    return True
        return False

    def stop_daemon_only(self) -> None:
        """SIGTERM dockerd by pid and wait, leaving live-restore containers running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def _kill_leftovers(self) -> None:
        """containerd-shim processes of our exec root that outlived dockerd (by pid)."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                continue
            if self.run_dir.encode() in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def state(self) -> Dict[str, Any]:
        """What dockerd shows: images, containers, diffs (the before/after record)."""
        images = sorted(self.docker("images", "-a", "--no-trunc", "--format",
                                    "{{.ID}} {{.Repository}}:{{.Tag}}").split("\n"))
        ps = sorted(self.docker("ps", "-a", "--no-trunc", "--format",
                                "{{.ID}} {{.Names}} {{.Image}} {{.Status}}").split("\n"))
        ids = [line.split()[0] for line in ps if line.strip()]
        diffs = {cid: sorted(self.docker("diff", cid).splitlines()) for cid in ids}
        return {"images": images, "containers": [" ".join(p.split()[:3]) for p in ps],
                "diffs": diffs}


@contextlib.contextmanager
def running(data_root: str, work: Optional[str] = None,
            storage_driver: Optional[str] = "overlay2", **settings: Any) -> Iterator[Dockerd]:
    """A started daemon over ``data_root``, its daemon.json in ``work`` (in its own run
    directory when None) with ``settings`` added; ``storage_driver`` None leaves the
    choice to dockerd. Stopped by its pid, its mounts undone and its run directory
    removed on the way out, also when starting it or the body fails."""
    daemon = Dockerd(data_root, "")
    daemon.config = os.path.join(work or daemon.run_dir, "daemon.json")
    if storage_driver is not None:
        settings["storage_driver"] = storage_driver
    try:
        daemon.write_config(**settings)
        daemon.start()
        yield daemon
    finally:
        daemon.close()
