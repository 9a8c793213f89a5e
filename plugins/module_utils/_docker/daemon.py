# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine around the data root: ``daemon.json`` and the running dockerd.

``daemon.json`` is read and written as JSON keeping every key it holds (in order), its
indentation, its mode and its owner; a file that is not JSON fails naming the file and
the line and column.  Whether dockerd runs is asked the way the docker client asks:
``GET /info`` over its unix socket (the ``hosts`` of daemon.json, else
``/var/run/docker.sock``), then its pid file.  Nothing here starts or stops anything.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import write_file
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._docker.layout import (
    ContainerConfig, container_ids)

DEFAULT_CONFIG = "/etc/docker/daemon.json"
DEFAULT_ROOT = "/var/lib/docker"
DEFAULT_SOCKET = "/var/run/docker.sock"
DEFAULT_PIDFILE = "/var/run/docker.pid"


class DaemonConfig:
    """One ``daemon.json`` (absent: an empty configuration)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.text: Optional[str] = None
        self.data: Dict[str, Any] = {}
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise InvalidInput("daemon_config %s cannot be read: %s" % (self.path, exc.strerror)) \
                from exc
        try:
            self.text = raw.decode("utf-8")
            data = json.loads(self.text) if self.text.strip() else {}
        except UnicodeDecodeError as exc:
            raise InvalidInput("daemon_config %s is not UTF-8 text (byte %d)"
                               % (self.path, exc.start)) from exc
        except json.JSONDecodeError as exc:
            raise InvalidInput("daemon_config %s is not valid JSON: %s at line %d column %d; "
                               "fix it (dockerd would not start with it either)"
                               % (self.path, exc.msg, exc.lineno, exc.colno),
                               line=exc.lineno, column=exc.colno) from exc
        if not isinstance(data, dict):
            raise InvalidInput("daemon_config %s holds a JSON %s, not an object"
                               % (self.path, type(data).__name__))
        self.data = data

    @property
    def driver(self) -> Optional[str]:
        value = self.data.get("storage-driver")
        return str(value) if value else None

    def data_root(self) -> str:
        return str(self.data.get("data-root") or self.data.get("graph") or DEFAULT_ROOT)

    def socket_paths(self) -> List[str]:
        hosts = self.data.get("hosts") or []
        found = [h[len("unix://"):] for h in hosts if isinstance(h, str) and h.startswith("unix://")]
        return found or [DEFAULT_SOCKET]

    def pidfile(self) -> str:
        return str(self.data.get("pidfile") or DEFAULT_PIDFILE)

    def render(self, updates: Dict[str, Any]) -> str:
        """The file's text with ``updates`` applied (None removes a key)."""
        data = dict(self.data)
        for key, value in updates.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return json.dumps(data, indent=self._indent()) + "\n"

    def _indent(self) -> Optional[int]:
        if self.text is None or "\n" not in self.text.strip():
            return 2 if self.text is None else None
        for line in self.text.splitlines()[1:]:
            stripped = line.lstrip(" ")
            if stripped and len(stripped) < len(line):
                return len(line) - len(stripped)
        return 2

    def write(self, text: str) -> None:
        """Replace the file atomically, keeping its mode and owner (new: 0644 root)."""
        try:
            st = os.stat(self.path)
            mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or ".", 0o755, exist_ok=True)
            mode, owner = 0o644, None
        write_file(self.path, text.encode("utf-8"), mode, owner)
        self.text = text
        self.data = json.loads(text)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def info(socket_path: str, timeout: float = 10.0) -> Optional[Dict[str, Any]]:
    """``GET /info`` of the daemon at ``socket_path``; None when nothing answers."""
    if not os.path.exists(socket_path):
        return None
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request("GET", "/info", headers={"Host": "docker"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        data = json.loads(body.decode("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def running_daemon(config: DaemonConfig) -> Optional[Dict[str, Any]]:
    """What tells that dockerd runs: its /info (with ``socket``), or its live pid."""
    for path in config.socket_paths():
        answer = info(path)
        if answer is not None:
            answer["socket"] = path
            return answer
    pid = _pid_from(config.pidfile())
    if pid is not None and _comm(pid) == "dockerd":
        return {"pid": pid, "socket": None}
    return None


def _pid_from(path: str) -> Optional[int]:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _comm(pid: int) -> str:
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def running_containers(data_root: str) -> List[Tuple[str, str, int]]:
    """(id, name, pid) of containers whose process lives on without dockerd (live-restore)."""
    found = []
    for cid in container_ids(data_root):
        config = ContainerConfig(data_root, cid)
        state = config.load().get("State") or {}
        pid = int(state.get("Pid") or 0)
        if state.get("Running") and pid > 0 and alive(pid):
            found.append((cid, config.name, pid))
    return found


def stop_processes(found: List[Tuple[str, str, int]], timeout: float = 10.0) -> List[str]:
    """SIGTERM each container's init process, SIGKILL after ``timeout``; their names."""
    for _cid, _name, pid in found:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for *_x, p in found):
        time.sleep(0.1)
    for _cid, _name, pid in found:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for *_x, p in found):
        time.sleep(0.1)
    return [name for _cid, name, _pid in found]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (its shim may not have reaped it yet)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
