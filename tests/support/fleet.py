"""Several real managed hosts on this one machine: one sshd per host, each with its own
filesystem at ``/var/lib/strata``.

How it works
------------
A fleet "host" is an ``sshd`` started as::

    unshare --mount --uts --propagation private -- \\
        python fleet.py _enter --hostname H --device /dev/loopN ... --config CFG

which, inside the new (private) mount and UTS namespace, sets the hostname, detaches the
mounts it inherited from the machine that it does not need (see ``detach_inherited``),
mounts the host's loop device at ``/var/lib/strata`` and ``exec``\\ s
``/usr/sbin/sshd -D -e -f CFG``.  Because ``unshare`` does not fork (no ``--fork``, no
``--pid``), the PID that ``up`` started is the sshd listener itself.  Every ssh session
the listener forks lives in the same mount namespace, so Ansible connecting to
``root@127.0.0.1x`` sees that host's filesystem at ``/var/lib/strata`` and everything else
(``/usr``, ``/tmp``, ``/root``...) shared with the machine.  The machine's own
``/var/lib/strata`` (the demo's default store) is untouched: the mount is private to the
namespace; the integration test checks that.

Per host ``up`` makes, under ``STATE/<name>/``: a sparse image (``fs.img``, 400 MB by
default), ``mkfs`` of it, a loop device (``losetup -f --show``), an ed25519 host key, an
``sshd_config`` (``ListenAddress 127.0.0.1x:22``, or a free high port when 22 is taken on
that address; key-only root login, ``UsePAM no``, ``StrictModes no`` because the state
dir may sit under the world-writable ``/tmp``, ``Subsystem sftp internal-sftp``) and
``sshd.log``.  Shared by the fleet: one client key pair (``STATE/id_ed25519``), the
``authorized_keys`` file, ``cp/`` for ssh ControlPersist sockets (the inventory points
``ControlPath`` there so ``down`` can close the masters Ansible leaves), the Ansible
inventory ``STATE/inventory.yml`` and the record ``STATE/state.json``, rewritten
atomically after each resource is made, so ``down`` can clean up after a crash at any
point.  Hosts are made and started in parallel; ``up`` returns once each host answers a
real ssh login with its own hostname and filesystem (about 1.5 s for four hosts).

Two fleets may run at once (different state dirs): a host whose address already has
something on port 22 gets a free high port instead; the inventory and ``state.json``
carry the port.  Inherited mounts are detached in each host's namespace because a copy
of, say, another test's loop filesystem under /tmp would keep that filesystem and its
loop device alive after the other test unmounted it.

Default fleet (``DEFAULT_HOSTS``): ``strata-ext4`` (ext4, 127.0.0.11), ``strata-xfs``
(xfs with ftype=1, .12), ``strata-btrfs`` (btrfs, .13), ``strata-nodtype`` (ext4 made
with ``-O ^filetype``: no d_type, .14).  Only 127.0.0.0/8 addresses are accepted.

What ``down`` does (idempotent; also after a failed or interrupted ``up``)
-------------------------------------------------------------------------
1. ``ssh -O exit`` every ControlPersist master socket in ``cp/`` (and kill a master
   that does not answer).
2. SIGKILL every process that holds one of the fleet's filesystems: the recorded
   listeners (checked by start time against PID reuse), any process whose command line
   names one of the fleet's ``sshd_config`` files, and every process whose mount
   namespace has one of the fleet's loop devices mounted (ssh sessions, and any nested
   namespace a module made).  The mounts go away with the last process of a namespace.
3. ``losetup -d`` every loop device whose backing file lies in the state dir (found in
   ``/sys/block/loop*/loop/backing_file``, so a device whose number was not recorded is
   found too), and waits until the kernel has released it.
4. Removes the state dir.  If a process or loop device could not be removed it keeps
   the state dir and raises ``FleetError`` naming it; running ``down`` again retries.

What is left on the machine on purpose: the directories ``/var/lib/strata`` (the mount
point; another fleet's namespaces may be using it, and removing a mount point from the
machine would detach their mounts) and ``/run/sshd`` (sshd's privilege-separation dir),
and sshd's lines in ``/var/log/wtmp`` / ``lastlog`` (sshd without PAM writes them).

Manual clean-up, if even ``down`` cannot run::

    cat STATE/state.json                   # pids, loop devices, ports
    for s in STATE/cp/*; do ssh -o ControlPath=$s -O exit x; done
    pkill -KILL -f 'STATE/.*/sshd_config'  # the listeners (sessions: see step 2 above)
    losetup -a | grep STATE                # then: losetup -d /dev/loopN
    rm -rf STATE

Use
---
CLI, from the repository root (run as root)::

    python -m tests.support.fleet up --state /tmp/strata-fleet [--hosts ext4 b=btrfs ...]
    python -m tests.support.fleet status --state /tmp/strata-fleet [--json]
    python -m tests.support.fleet down --state /tmp/strata-fleet

A host spec is ``FS``, ``NAME=FS`` or a JSON object ``{"name": ..., "fs": ...,
"address": "127.0.0.21", "port": 2222, "vars": {...}}``; ``vars`` become extra inventory
variables of that host (e.g. ``{"rollout_inject_failure": true}`` for a host a test wants
to fail mid-rollout).  ``--hosts-json '[{...}, ...]'`` gives the whole list at once.

Library (pytest)::

    with fleet(str(tmp_path / "fleet"), hosts=[{"name": "a", "fs": "ext4"}]) as f:
        subprocess.run(["ansible-playbook", "-i", f.inventory, ...], check=True)

Only the standard library is used (``_enter`` runs this file by path, before ``sshd``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set

MOUNTPOINT = "/var/lib/strata"
SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"
# Debian's interpreter: what the fleet's ssh sessions run modules with.  An explicit path,
# because interpreter discovery over ssh finds a pyenv shim here that fails.
REMOTE_PYTHON = "/usr/bin/python3"
FIRST_ADDRESS = ipaddress.ip_address("127.0.0.11")
DEFAULT_SIZE_MB = 400
STATE_FILE = "state.json"
STATE_VERSION = 1

DEFAULT_HOSTS: List[Dict[str, Any]] = [
    {"name": "strata-ext4", "fs": "ext4"},
    {"name": "strata-xfs", "fs": "xfs"},
    {"name": "strata-btrfs", "fs": "btrfs"},
    {"name": "strata-nodtype", "fs": "ext4-nodtype"},
]

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "ext4-nodtype": ["mkfs.ext4", "-q", "-F", "-O", "^filetype"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-n", "ftype=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
# What the kernel calls each kind once mounted (and what store_info reports).
KERNEL_FSTYPE = {"ext4": "ext4", "ext4-nodtype": "ext4", "xfs": "xfs", "btrfs": "btrfs"}
MIN_SIZE_MB = {"xfs": 300, "btrfs": 256}

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]
# sun_path is 108 bytes and ssh appends ".XXXXXXXXXXXXXXXX" while it creates the socket.
MAX_CONTROL_PATH = 88

_LOCK = threading.RLock()
_CHILDREN: Dict[int, subprocess.Popen] = {}  # listeners this process started, to reap them


class FleetError(RuntimeError):
    """The fleet could not be brought up, checked or removed; the message says why."""


@dataclass
class Host:
    """One managed host of the fleet and everything ``up`` made for it."""

    name: str
    fs: str
    address: str
    port: int = 22
    vars: Dict[str, Any] = field(default_factory=dict)
    dir: str = ""
    image: str = ""
    loop: str = ""
    config: str = ""
    pid: int = 0
    start_time: int = 0
    mnt_ns: str = ""

    @property
    def kernel_fstype(self) -> str:
        return KERNEL_FSTYPE[self.fs]


@dataclass
class Fleet:
    """A running fleet: what a test needs to talk to it."""

    state_dir: str
    inventory: str
    key: str
    control_dir: str
    hosts: List[Host]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError("no host %r in the fleet at %s" % (name, self.state_dir))

    def ssh(self, name: str, command: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command on host ``name`` over its sshd, as Ansible would reach it."""
        return ssh_run(self.host(name), self.key, command, check=check, timeout=timeout)

    def fail_flag(self, name: str) -> str:
        """A per-host file path a test may create to make that host fail on purpose.

        The path lies in the state dir, which every namespace sees alike; the inventory
        gives it to the host as ``strata_fleet_fail_flag``.
        """
        return fail_flag(self.state_dir, self.host(name))


def fail_flag(state_dir: str, host: Host) -> str:
    return os.path.join(os.path.abspath(state_dir), host.name, "fail-flag")


# --------------------------------------------------------------------------- host specs

def parse_spec(text: str) -> Dict[str, Any]:
    """``FS``, ``NAME=FS`` or a JSON object, as given on the command line."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    if "=" in text:
        name, kind = text.split("=", 1)
        return {"name": name, "fs": kind}
    return {"fs": text}


def make_hosts(specs: Optional[Sequence[Dict[str, Any]]]) -> List[Host]:
    """Hosts from specs, with names, addresses and checks filled in."""
    hosts = []
    for index, spec in enumerate(specs if specs is not None else DEFAULT_HOSTS):
        unknown = set(spec) - {"name", "fs", "address", "port", "vars"}
        if unknown:
            raise FleetError("host spec %r: unknown keys %s" % (spec, sorted(unknown)))
        kind = spec.get("fs", "ext4")
        if kind not in MKFS:
            raise FleetError("host spec %r: fs must be one of %s" % (spec, sorted(MKFS)))
        address = str(spec.get("address", FIRST_ADDRESS + index))
        if not ipaddress.ip_address(address).is_loopback:
            raise FleetError("host spec %r: only 127.0.0.0/8 addresses may be used" % (spec,))
        name = spec.get("name") or "strata-%s" % kind.replace("ext4-", "")
        hosts.append(Host(name=name, fs=kind, address=address, port=int(spec.get("port", 0)),
                          vars=dict(spec.get("vars") or {})))
    _check_unique(hosts)
    return hosts


def _check_unique(hosts: List[Host]) -> None:
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise FleetError("host names must be unique: %s" % names)
    if not hosts:
        raise FleetError("a fleet needs at least one host")
    for host in hosts:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$", host.name):
            raise FleetError("host name %r is not a valid hostname" % host.name)


# --------------------------------------------------------------------------- state file

def _state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def save_state(state_dir: str, state: Dict[str, Any]) -> None:
    """Atomically rewrite the record (called after every resource is made)."""
    with _LOCK:
        tmp = _state_path(state_dir) + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, _state_path(state_dir))


def load_state(state_dir: str) -> Optional[Dict[str, Any]]:
    try:
        with open(_state_path(state_dir)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        # A torn write cannot happen (os.replace), but a hand-edited file can be broken;
        # down still finds everything by scanning, so treat it as an empty record.
        return {"hosts": []}


def hosts_of(state: Dict[str, Any]) -> List[Host]:
    return [Host(**h) for h in state.get("hosts", [])]


def _record(state_dir: str, state: Dict[str, Any], host: Host) -> None:
    with _LOCK:
        state["hosts"] = [asdict(host) if h["name"] == host.name else h
                          for h in state["hosts"]]
        save_state(state_dir, state)


# --------------------------------------------------------------------------- processes

def _run(cmd: Sequence[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)
    if proc.returncode != 0:
        raise FleetError("%s failed (exit %d): %s" % (" ".join(cmd), proc.returncode,
                                                      (proc.stderr or proc.stdout).strip()))
    return proc


def start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (0 when it is gone or a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return 0 if fields[0] in ("Z", "X") else int(fields[19])


def _cmdline(pid: int) -> List[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


def _pids() -> List[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ancestors() -> Set[int]:
    """This process and its ancestors: never victims, whatever their command line says."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open("/proc/%d/stat" % pid) as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return found


def _mnt_ns(pid: int) -> str:
    try:
        return os.readlink("/proc/%d/ns/mnt" % pid)
    except OSError:
        return ""


def _mounted_sources(pid: int) -> Set[str]:
    """Mount sources (e.g. ``/dev/loop3``) in the mount namespace of ``pid``."""
    try:
        with open("/proc/%d/mountinfo" % pid) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return set()
    sources = set()
    for line in lines:
        tail = line.split(" - ", 1)[1].split() if " - " in line else []
        if len(tail) >= 2:
            sources.add(tail[1])
    return sources


def holders(devices: Set[str]) -> Set[int]:
    """Processes whose mount namespace has one of ``devices`` mounted."""
    if not devices:
        return set()
    own_ns, by_ns, found = _mnt_ns(os.getpid()), {}, set()
    for pid in _pids():
        ns = _mnt_ns(pid)
        if not ns or ns == own_ns:
            continue
        if ns not in by_ns:
            by_ns[ns] = bool(_mounted_sources(pid) & devices)
        if by_ns[ns]:
            found.add(pid)
    return found


def _named(needles: Sequence[str]) -> Set[int]:
    """Processes with one of ``needles`` as an argument (or inside one)."""
    found = set()
    for pid in _pids():
        args = _cmdline(pid)
        if any(n in a for a in args for n in needles):
            found.add(pid)
    return found


def _kill(pids: Set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pids: Set[int], timeout: float) -> Set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            _reap(pid)
            if start_time(pid) == 0:
                alive.discard(pid)
        if alive:
            time.sleep(0.05)
    return alive


# --------------------------------------------------------------------------- loop devices

def _loop_backing() -> Dict[str, str]:
    """``/dev/loopN`` -> backing file, for every attached loop device."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/sys/block"):
            if not name.startswith("loop"):
                continue
            with contextlib.suppress(OSError):
                with open("/sys/block/%s/loop/backing_file" % name) as handle:
                    found["/dev/" + name] = handle.read().strip()
    return found


def fleet_loops(state_dir: str) -> Dict[str, str]:
    """Loop devices whose backing file lies in ``state_dir`` (deleted or not)."""
    prefix = os.path.realpath(state_dir).rstrip("/") + "/"
    return {dev: path for dev, path in _loop_backing().items()
            if path.startswith(prefix)}


def _detach(devices: Set[str], timeout: float) -> Set[str]:
    """``losetup -d`` each device; a busy one is auto-cleared by the kernel once released."""
    for dev in devices:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False, timeout=30)
    deadline = time.monotonic() + timeout
    while True:
        left = {d for d in devices if d in _loop_backing()}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# --------------------------------------------------------------------------- up

def _preflight(hosts: List[Host]) -> None:
    if os.geteuid() != 0:
        raise FleetError("the fleet needs root (mount namespaces, loop devices, sshd)")
    needed = ["unshare", "losetup", "mount", "ssh", "ssh-keygen"]
    needed += sorted({MKFS[h.fs][0] for h in hosts})
    missing = [p for p in needed if shutil.which(p) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD + " (openssh-server)")
    if not os.access(REMOTE_PYTHON, os.X_OK):
        missing.append(REMOTE_PYTHON)
    if missing:
        raise FleetError("cannot start a fleet, missing: %s (run ./scripts/setup)"
                         % ", ".join(missing))


def _control_dir(state_dir: str) -> str:
    """Where ssh ControlPersist sockets go: in the state dir unless its path is too long."""
    inside = os.path.join(state_dir, "cp")
    if len(inside) + len("/127.255.255.255-65535") <= MAX_CONTROL_PATH:
        return inside
    digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:12]
    return "/tmp/strata-fleet-cp-%s" % digest


def _prepare(state_dir: str) -> Dict[str, Any]:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    os.makedirs(MOUNTPOINT, mode=0o755, exist_ok=True)
    cp_dir = _control_dir(state_dir)
    os.makedirs(cp_dir, mode=0o700, exist_ok=True)
    key = os.path.join(state_dir, "id_ed25519")
    state = {"version": STATE_VERSION, "state_dir": state_dir, "key": key,
             "control_dir": cp_dir, "inventory": os.path.join(state_dir, "inventory.yml"),
             "mountpoint": MOUNTPOINT, "hosts": [], "started": time.time()}
    save_state(state_dir, state)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "strata-fleet", "-f", key])
    shutil.copyfile(key + ".pub", os.path.join(state_dir, "authorized_keys"))
    return state


def _port_for(host: Host) -> int:
    """22 when it is free on the host's address, else a free port the kernel picks."""
    for port in ([host.port] if host.port else [22, 0]):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As sshd does: connections of an earlier fleet in TIME_WAIT must not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.address, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise FleetError("%s: port %d is taken on %s" % (host.name, host.port, host.address))


def _make_filesystem(state_dir: str, state: Dict[str, Any], host: Host, size_mb: int) -> None:
    host.dir = os.path.join(state_dir, host.name)
    os.makedirs(host.dir, mode=0o700, exist_ok=True)
    host.image = os.path.join(host.dir, "fs.img")
    with open(host.image, "wb") as handle:
        handle.truncate(max(size_mb, MIN_SIZE_MB.get(host.fs, 0)) << 20)
    _run(MKFS[host.fs] + [host.image])
    host.loop = _run(["losetup", "-f", "--show", host.image]).stdout.strip()
    _record(state_dir, state, host)


def _write_config(state_dir: str, host: Host) -> None:
    key = os.path.join(host.dir, "ssh_host_ed25519_key")
    if not os.path.exists(key):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", key])
    host.config = os.path.join(host.dir, "sshd_config")
    lines = [
        "# strata fleet host %s (%s on %s); made by tests/support/fleet.py" % (
            host.name, host.fs, host.loop),
        "ListenAddress %s:%d" % (host.address, host.port),
        "HostKey " + key,
        "PidFile " + os.path.join(host.dir, "sshd.pid"),
        "AuthorizedKeysFile " + os.path.join(state_dir, "authorized_keys"),
        "PermitRootLogin prohibit-password",
        "AllowUsers root",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The state dir may be under /tmp (mode 1777), which StrictModes rejects.
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "PermitUserEnvironment no",
        # Ansible opens many sessions at once over one multiplexed connection.
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "LoginGraceTime 30",
        "LogLevel INFO",
        "Subsystem sftp internal-sftp",
    ]
    with open(host.config, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _start(state_dir: str, state: Dict[str, Any], host: Host) -> None:
    host.port = _port_for(host)
    _write_config(state_dir, host)
    cmd = ["unshare", "--mount", "--uts", "--propagation", "private", "--",
           sys.executable, os.path.abspath(__file__), "_enter", "--hostname", host.name,
           "--device", host.loop, "--mountpoint", MOUNTPOINT, "--config", host.config]
    with open(os.path.join(host.dir, "sshd.log"), "ab") as log:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True, cwd="/")
    _CHILDREN[child.pid] = child
    host.pid, host.start_time = child.pid, start_time(child.pid)
    _record(state_dir, state, host)


def _log_tail(host: Host, lines: int = 15) -> str:
    try:
        with open(os.path.join(host.dir, "sshd.log"), errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return "(no log)"


def _accepts(host: Host) -> bool:
    with contextlib.suppress(OSError):
        with socket.create_connection((host.address, host.port), timeout=0.5):
            return True
    return False


def _wait_listening(host: Host, deadline: float) -> bool:
    """True once sshd accepts; False when it exited (e.g. the port was taken meanwhile)."""
    while time.monotonic() < deadline:
        if start_time(host.pid) == 0:
            _reap(host.pid)
            return False
        if _accepts(host):
            return True
        time.sleep(0.05)
    raise FleetError("%s: sshd did not listen on %s:%d in time; its log:\n%s"
                     % (host.name, host.address, host.port, _log_tail(host)))


def ssh_run(host: Host, key: str, command: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["ssh", "-i", key, "-p", str(host.port), "-o", "BatchMode=yes",
           "-o", "ConnectTimeout=10", "-o", "ControlPath=none"] + SSH_OPTIONS
    cmd += ["root@" + host.address, command]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise FleetError("ssh to %s (%s:%d) failed (exit %d): %s" % (
            host.name, host.address, host.port, proc.returncode, proc.stderr.strip()))
    return proc


def _check_login(host: Host, key: str) -> None:
    """A real key login that must land on this host's hostname and filesystem."""
    out = ssh_run(host, key, "hostname; findmnt -rn -o SOURCE,FSTYPE --mountpoint %s; "
                  "%s -c 'print(1)'" % (MOUNTPOINT, REMOTE_PYTHON), timeout=30).stdout.split()
    want = [host.name, host.loop, host.kernel_fstype, "1"]
    if out != want:
        raise FleetError("%s answered %s over ssh, expected %s; its log:\n%s"
                         % (host.name, out, want, _log_tail(host)))


def _bring_up(state_dir: str, state: Dict[str, Any], host: Host, size_mb: int,
              timeout: float) -> None:
    _make_filesystem(state_dir, state, host, size_mb)
    deadline = time.monotonic() + timeout
    wanted_port = host.port
    for attempt in range(3):
        _start(state_dir, state, host)
        if _wait_listening(host, deadline):
            break
        if wanted_port or "Address already in use" not in _log_tail(host):
            raise FleetError("%s: sshd exited at start; its log:\n%s"
                             % (host.name, _log_tail(host)))
        # Another process took the port between our probe and sshd's bind: pick again.
        host.port = 0
    else:
        raise FleetError("%s: no free port on %s after %d tries" % (
            host.name, host.address, attempt + 1))
    host.mnt_ns = _mnt_ns(host.pid)
    _record(state_dir, state, host)
    _check_login(host, state["key"])


def up(state_dir: str, hosts: Optional[Sequence[Dict[str, Any]]] = None,
       size_mb: int = DEFAULT_SIZE_MB, timeout: float = 60) -> Fleet:
    """Start the fleet recorded in ``state_dir`` (replacing any fleet left there)."""
    state_dir = os.path.realpath(state_dir)
    wanted = make_hosts(hosts)
    _preflight(wanted)
    down(state_dir)
    try:
        state = _prepare(state_dir)
        state["hosts"] = [asdict(h) for h in wanted]
        save_state(state_dir, state)
        _bring_up_all(state_dir, state, wanted, size_mb, timeout)
        write_inventory(state, wanted)
        save_state(state_dir, state)
    except BaseException:
        # Whatever was made is in state.json (or findable by scanning): remove it all.
        with contextlib.suppress(Exception):
            down(state_dir)
        raise
    return _fleet_from(state)


def _bring_up_all(state_dir: str, state: Dict[str, Any], hosts: List[Host], size_mb: int,
                  timeout: float) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = [pool.submit(_bring_up, state_dir, state, h, size_mb, timeout)
                   for h in hosts]
        errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise FleetError("; ".join(str(e) for e in errors)) from errors[0]


def _fleet_from(state: Dict[str, Any]) -> Fleet:
    return Fleet(state_dir=state["state_dir"], inventory=state["inventory"], key=state["key"],
                 control_dir=state["control_dir"], hosts=hosts_of(state))


# --------------------------------------------------------------------------- inventory

def host_vars(state: Dict[str, Any], host: Host) -> Dict[str, Any]:
    """Inventory variables of one host: how Ansible reaches it and what it is."""
    common = SSH_OPTIONS + ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                            "-o", "ControlPath=%s/%%h-%%p" % state["control_dir"]]
    result = {
        "ansible_host": host.address,
        "ansible_port": host.port,
        "ansible_user": "root",
        "ansible_connection": "ssh",
        "ansible_ssh_private_key_file": state["key"],
        "ansible_python_interpreter": REMOTE_PYTHON,
        "ansible_ssh_common_args": " ".join(common),
        "strata_fs": host.fs,
        "strata_data_root": MOUNTPOINT,
        "strata_fleet_loop": host.loop,
        "strata_fleet_fail_flag": fail_flag(state["state_dir"], host),
    }
    result.update(host.vars)
    return result


def _yaml(value: Any, indent: int) -> List[str]:
    """A small YAML emitter: mappings as blocks, every scalar in JSON (valid YAML) form."""
    pad = "  " * indent
    if not isinstance(value, dict):
        return [pad + json.dumps(value)]
    lines = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append("%s%s:" % (pad, json.dumps(str(key))))
            lines.extend(_yaml(item, indent + 1))
        else:
            lines.append("%s%s: %s" % (pad, json.dumps(str(key)), json.dumps(item)))
    return lines


def write_inventory(state: Dict[str, Any], hosts: List[Host]) -> str:
    tree = {"all": {"children": {"strata_fleet": {"hosts": {
        h.name: host_vars(state, h) for h in hosts}}}}}
    text = "# Made by tests/support/fleet.py; removed by its `down`.\n---\n"
    text += "\n".join(_yaml(tree, 0)) + "\n"
    tmp = state["inventory"] + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, state["inventory"])
    return state["inventory"]


# --------------------------------------------------------------------------- down

def _close_masters(cp_dir: str) -> None:
    """Ask every ControlPersist master to exit; kill those that do not."""
    if not cp_dir or not os.path.isdir(cp_dir):
        return
    sockets = [os.path.join(cp_dir, n) for n in os.listdir(cp_dir)]
    for sock in sockets:
        subprocess.run(["ssh", "-o", "ControlPath=" + sock, "-O", "exit", "fleet-host"],
                       capture_output=True, check=False, timeout=15)
    stray = _named([cp_dir.rstrip("/") + "/"]) - _ancestors()
    _kill(stray)
    _wait_gone(stray, 5)


def _forget_unrecorded(state_dir: str) -> None:
    """No state.json: nothing or an empty dir (``up`` writes the record first), or not ours."""
    if not os.path.exists(state_dir):
        return
    if os.path.isdir(state_dir) and not os.listdir(state_dir):
        os.rmdir(state_dir)
        return
    # Scanning and removing a directory that is not a fleet's (say /tmp, given by
    # mistake) would detach other people's loop devices and delete their files.
    raise FleetError("%s has no %s: not a fleet state dir, refusing to touch it"
                     % (state_dir, STATE_FILE))


def _victims(state_dir: str, hosts: List[Host], devices: Set[str]) -> Set[int]:
    found = {h.pid for h in hosts if h.pid and h.start_time and start_time(h.pid) == h.start_time}
    configs = [os.path.join(state_dir, h.name, "sshd_config") for h in hosts]
    if os.path.isdir(state_dir):
        configs += [os.path.join(state_dir, n, "sshd_config") for n in os.listdir(state_dir)]
    found |= _named(sorted(set(configs)))
    found |= holders(devices)
    return found - _ancestors()


def down(state_dir: str) -> None:
    """Remove every process, mount, loop device and file of the fleet in ``state_dir``."""
    state_dir = os.path.realpath(state_dir)
    state = load_state(state_dir)
    if state is None:
        _forget_unrecorded(state_dir)
        return
    hosts = hosts_of(state)
    _close_masters(state.get("control_dir") or _control_dir(state_dir))
    devices = {h.loop for h in hosts if h.loop} | set(fleet_loops(state_dir))
    # Recorded devices count only while they still point into the state dir: a number
    # released earlier may have been reused by someone else's loop device.
    devices &= set(fleet_loops(state_dir))
    alive: Set[int] = set()
    for _round in range(3):
        victims = _victims(state_dir, hosts, devices)
        if not victims:
            break
        _kill(victims)
        alive = _wait_gone(victims, 5)
    left = _detach(devices | set(fleet_loops(state_dir)), timeout=10)
    if alive or left:
        raise FleetError("fleet at %s not fully removed: processes %s, loop devices %s "
                         "still there; run down again or clean up by hand (see %s)"
                         % (state_dir, sorted(alive), sorted(left), __file__))
    cp_dir = state.get("control_dir")
    if cp_dir and not cp_dir.startswith(state_dir + "/"):
        shutil.rmtree(cp_dir, ignore_errors=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    if os.path.exists(state_dir):
        raise FleetError("could not remove %s" % state_dir)


@contextlib.contextmanager
def fleet(state_dir: str, hosts: Optional[Sequence[Dict[str, Any]]] = None,
          **kwargs: Any) -> Iterator[Fleet]:
    """``up`` on entry, ``down`` on exit, whatever happened in between."""
    try:
        yield up(state_dir, hosts, **kwargs)
    finally:
        down(state_dir)


# --------------------------------------------------------------------------- status

def status(state_dir: str) -> List[Dict[str, Any]]:
    """Per host: is its sshd alive and listening, is its loop device attached."""
    state = load_state(os.path.realpath(state_dir))
    if state is None:
        return []
    loops = _loop_backing()
    rows = []
    for host in hosts_of(state):
        alive = bool(host.pid) and start_time(host.pid) == host.start_time
        rows.append({"name": host.name, "fs": host.fs, "address": host.address,
                     "port": host.port, "pid": host.pid, "loop": host.loop,
                     "alive": alive, "listening": alive and _accepts(host),
                     "loop_attached": loops.get(host.loop) == host.image})
    return rows


# --------------------------------------------------------------------------- inside the namespace

# Mount points below these are test scratch space: their copies in a fleet namespace would
# keep other tests' filesystems (and loop devices) alive after those tests unmount them.
_SCRATCH = ("/tmp/", "/var/tmp/", "/work/", "/root/", "/home/")
MNT_DETACH = 2


def _mountinfo() -> List[tuple]:
    rows = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            head, tail = line.split(" - ", 1)
            point = head.split()[4].encode().decode("unicode_escape")
            fstype, source = (tail.split() + ["", ""])[:2]
            rows.append((point, fstype, source))
    return rows


def _inherited(point: str, fstype: str, source: str, mountpoint: str) -> bool:
    """Whether a mount copied from the machine should not stay in a fleet host."""
    if point == "/":
        return False
    if point == mountpoint or point.startswith(mountpoint.rstrip("/") + "/"):
        return True
    if re.match(r"^/dev/loop\d+$", source) or fstype == "overlay" or fstype == "fuse" \
            or fstype.startswith("fuse."):
        return True
    return point.startswith(_SCRATCH)


def detach_inherited(mountpoint: str) -> List[str]:
    """Lazily unmount, in this (private) namespace only, what ``_inherited`` selects."""
    libc = ctypes.CDLL(None, use_errno=True)
    points = sorted({p for p, t, s in _mountinfo() if _inherited(p, t, s, mountpoint)},
                    key=len, reverse=True)
    for point in points:
        # A parent detached first takes its children along: EINVAL then is expected.
        libc.umount2(point.encode(), MNT_DETACH)
    return points


def enter(hostname: str, device: str, mountpoint: str, config: str) -> None:
    """Runs as the first program of a new namespace; becomes that host's sshd."""
    socket.sethostname(hostname)
    detach_inherited(mountpoint)
    subprocess.run(["mount", device, mountpoint], check=True)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8"}
    os.execve(SSHD, [SSHD, "-D", "-e", "-f", config], env)


# --------------------------------------------------------------------------- CLI

def _specs_from(args: argparse.Namespace) -> Optional[List[Dict[str, Any]]]:
    if args.hosts_json:
        return json.loads(args.hosts_json)
    if args.hosts:
        return [parse_spec(s) for s in args.hosts]
    return None


def _cli_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    made = up(args.state, _specs_from(args), size_mb=args.size_mb, timeout=args.timeout)
    for host in made.hosts:
        print("%-16s %-13s %s:%-5d pid %-7d %s" % (host.name, host.fs, host.address,
                                                   host.port, host.pid, host.loop))
    print("inventory: %s (up in %.1fs)" % (made.inventory, time.monotonic() - started))
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    rows = status(args.state)
    if args.json:
        print(json.dumps(rows, indent=2))
    for row in rows if not args.json else []:
        print("%-16s %-13s %s:%-5d %s %s" % (
            row["name"], row["fs"], row["address"], row["port"],
            "up" if row["listening"] else "DOWN", row["loop"]))
    if not rows:
        print("no fleet at %s" % args.state, file=sys.stderr)
        return 2
    return 0 if all(r["listening"] and r["loop_attached"] for r in rows) else 1


def _cli_enter(args: argparse.Namespace) -> int:
    enter(args.hostname, args.device, args.mountpoint, args.config)
    return 1  # not reached: enter() execs sshd


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fleet",
                                     description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd_up = sub.add_parser("up", help="start the fleet (replaces one already there)")
    cmd_up.add_argument("--hosts", nargs="+", metavar="SPEC",
                        help="FS, NAME=FS or a JSON object (default: the 4-host fleet)")
    cmd_up.add_argument("--hosts-json", help="a JSON list of host objects")
    cmd_up.add_argument("--size-mb", type=int, default=DEFAULT_SIZE_MB)
    cmd_up.add_argument("--timeout", type=float, default=60)
    cmd_down = sub.add_parser("down", help="remove everything (idempotent)")
    cmd_status = sub.add_parser("status", help="is each host up")
    cmd_status.add_argument("--json", action="store_true")
    for cmd in (cmd_up, cmd_down, cmd_status):
        cmd.add_argument("--state", required=True, help="the fleet's state directory")
    cmd_enter = sub.add_parser("_enter")  # internal: first program in a host's namespace
    for name in ("--hostname", "--device", "--mountpoint", "--config"):
        cmd_enter.add_argument(name, required=True)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    actions = {"up": _cli_up, "down": lambda a: down(a.state) or 0, "status": _cli_status,
               "_enter": _cli_enter}
    try:
        return actions[args.command](args)
    except FleetError as exc:
        print("fleet: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
