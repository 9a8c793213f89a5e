# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An OCI runtime bundle's ``config.json`` for a container, with Docker's defaults.

Two steps, as ``docker create`` then ``docker start``:

1. ``run_config``: the image config and the caller's options made into what the
   container runs (recorded in the container record at creation, so every later
   start runs the same thing).  The OCI image-spec conversion rules: ``args`` =
   Entrypoint + Cmd (an ``entrypoint`` option drops the image's Cmd, as
   ``docker run --entrypoint`` does), ``env`` = the image's Env with the options
   replacing by name, ``cwd`` = WorkingDir, Labels and StopSignal as annotations.
2. ``runtime_spec``: that plus the user resolved against the container's own
   passwd/group (at start: the files may have changed) into the OCI runtime spec, with
   Docker's defaults for everything the image does not say: mounts (``/proc``, a
   ``/dev`` tmpfs, ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``, ``/sys`` read-only),
   namespaces, the default capability set, masked and read-only paths.

Not here (yet): Docker's default seccomp profile and AppArmor profile, cgroup
resource limits; the runtime's defaults apply.
"""
from __future__ import annotations

import os
import re
import resource
import signal
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._passwd import ExecUser

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORKS = ("none", "host")
HOSTNAME_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
# moby oci/caps: the capabilities a container's root keeps by default
CAPABILITIES = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# what the root filesystem needs for the runtime to mount on: the init layer holds
# whichever of them the image lacks (a trailing "/" marks a directory)
INIT_ENTRIES = ["dev/", "dev/pts/", "dev/shm/", "proc/", "sys/", "etc/",
                "etc/hostname", "etc/hosts", "etc/resolv.conf"]
NOFILE = 1048576            # what dockerd's containers get (LimitNOFILE of its unit)
HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
         "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
         "ff02::2\tip6-allrouters\n")


@dataclass
class Volume:
    source: str
    destination: str
    read_only: bool

    def as_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "destination": self.destination,
                "read_only": self.read_only}


def parse_volume(text: Any) -> Volume:
    """``SRC:DST[:ro|rw]``: SRC an existing absolute host path (never created)."""
    if not isinstance(text, str):
        raise InvalidInput("volume %r is not a string SRC:DST[:ro]" % (text,))
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidInput("volume %r is not SRC:DST[:ro]" % text)
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise InvalidInput("volume %r: mode %r is not ro or rw" % (text, parts[2]))
    source, dest = parts[0], parts[1]
    for what, path in (("source", source), ("destination", dest)):
        if not os.path.isabs(path):
            raise InvalidInput("volume %r: the %s %r must be an absolute path" % (text, what, path))
    if os.path.normpath(dest) == "/":
        raise InvalidInput("volume %r: the destination cannot be / " % text)
    if not os.path.exists(source):
        raise InvalidInput("volume %r: the source %s does not exist on the host (it is never "
                           "created for you); create it first" % (text, source))
    return Volume(os.path.normpath(source), os.path.normpath(dest),
                  len(parts) == 3 and parts[2] == "ro")


def _strings(value: Any, what: str) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) for v in value):
        raise InvalidInput("%s must be a list of strings, not %r" % (what, value))
    return list(value)


def process_args(image: Dict[str, Any], command: Optional[Sequence[str]],
                 entrypoint: Optional[Sequence[str]]) -> List[str]:
    """Entrypoint + Cmd; ``entrypoint`` set drops the image's Cmd (docker run)."""
    command = _strings(command, "command")
    entrypoint = _strings(entrypoint, "entrypoint")
    if entrypoint is not None:
        args = entrypoint + (command or [])
    else:
        args = (_strings(image.get("Entrypoint"), "the image's Entrypoint") or []) + \
            (command if command is not None else
             _strings(image.get("Cmd"), "the image's Cmd") or [])
    if not args:
        raise InvalidInput("nothing to run: the image has no Entrypoint or Cmd; give command")
    return args


def merge_env(image_env: Sequence[str], extra: Dict[str, Any]) -> List[str]:
    """The image's ``Env`` with ``extra`` replacing or adding by name, order kept."""
    merged: Dict[str, str] = {}
    for item in image_env:
        name, _sep, value = str(item).partition("=")
        merged[name] = value
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not name or "=" in name:
            raise InvalidInput("env name %r is not valid (no '=', not empty)" % (name,))
        merged[name] = "" if value is None else str(value)
    return ["%s=%s" % item for item in merged.items()]


def parse_signal(value: Any, what: str = "StopSignal") -> int:
    """``SIGTERM``, ``TERM``, ``15``... as a number."""
    text = str(value or "SIGTERM").strip().upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        realtime = _realtime(name)
        if realtime is not None:
            return realtime
        found = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if isinstance(found, signal.Signals):
            return int(found)
    raise InvalidInput("%s %r is not a signal name or number" % (what, value))


def _realtime(name: str) -> Optional[int]:
    """SIGRTMIN+n and SIGRTMAX-n (what STOPSIGNAL accepts)."""
    for base, sign in (("SIGRTMIN", 1), ("SIGRTMAX", -1)):
        if name == base or name.startswith(base + ("+" if sign > 0 else "-")):
            offset = name[len(base) + 1:] if name != base else "0"
            if offset.isdigit():
                number = int(getattr(signal, base)) + sign * int(offset)
                if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
                    return number
    return None


def run_config(image: Dict[str, Any], params: Dict[str, Any], cid: str) -> Dict[str, Any]:
    """What the container runs, from its image config's ``config`` and the options."""
    network = params.get("network") or "none"
    if network not in NETWORKS:
        raise InvalidInput("network %r is not one of %s" % (network, ", ".join(NETWORKS)))
    workdir = params.get("workdir") or image.get("WorkingDir") or "/"
    if not os.path.isabs(workdir):
        raise InvalidInput("workdir %r must be an absolute path" % workdir)
    hostname = params.get("hostname") or cid[:12]
    if not isinstance(hostname, str) or not HOSTNAME_RE.match(hostname):
        # it is written into the container's /etc/hosts and /etc/hostname: a newline or
        # a space would add lines or names of the caller's choosing
        raise InvalidInput("hostname %r is not valid (at most 64 letters, digits, '.', '-' "
                           "or '_', not starting with '.' or '-')" % (hostname,))
    stop_signal = image.get("StopSignal") or "SIGTERM"
    parse_signal(stop_signal)
    labels = image.get("Labels") or {}
    annotations = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    if image.get("StopSignal"):
        annotations["org.opencontainers.image.stopSignal"] = str(stop_signal)
    ports = image.get("ExposedPorts")
    if isinstance(ports, dict) and ports:
        annotations["org.opencontainers.image.exposedPorts"] = ",".join(sorted(ports))
    return {
        "args": process_args(image, params.get("command"), params.get("entrypoint")),
        "env": merge_env(image.get("Env") or [], params.get("env") or {}),
        "cwd": os.path.normpath(workdir), "user": params.get("user") or image.get("User") or "",
        "hostname": hostname, "network": network,
        "volumes": [parse_volume(v).as_dict() for v in params.get("volumes") or []],
        "read_only": bool(params.get("read_only")), "stop_signal": str(stop_signal),
        "annotations": annotations,
    }


def init_entries(run: Dict[str, Any]) -> List[str]:
    """What the init layer provides, if the image lacks it: the runtime's mount points,
    the working directory and the volumes' destinations (none of it the container's
    writes, so none of it counts in its size or lands in a commit)."""
    entries = list(INIT_ENTRIES)
    if run["cwd"] != "/":
        entries.append(run["cwd"].strip("/") + "/")
    for volume in run["volumes"]:
        rel = volume["destination"].strip("/")
        entries.append(rel + "/" if os.path.isdir(volume["source"]) else rel)
    return entries


def environment(run: Dict[str, Any], user: ExecUser) -> List[str]:
    """Docker's order: a default PATH when the image has none, HOSTNAME, the merged Env,
    HOME from the user's passwd entry when nobody set it."""
    names = {item.partition("=")[0] for item in run["env"]}
    env = [] if "PATH" in names else ["PATH=" + DEFAULT_PATH]
    if "HOSTNAME" not in names:
        env.append("HOSTNAME=" + run["hostname"])
    env += run["env"]
    if "HOME" not in names:
        env.append("HOME=" + (user.home or "/"))
    return env


def nofile_limit() -> int:
    """RLIMIT_NOFILE for the container: Docker's, within this host's hard limit (a
    runtime cannot raise it above that: crun fails, runc too without CAP_SYS_RESOURCE)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)


def _mount(dest: str, kind: str, source: str, options: List[str]) -> Dict[str, Any]:
    return {"destination": dest, "type": kind, "source": source, "options": options}


def default_mounts(bundle: str, read_only: bool) -> List[Dict[str, Any]]:
    files = ["rbind", "rprivate"] + (["ro"] if read_only else [])
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount("/dev/pts", "devpts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", ["ro", "nosuid", "noexec", "nodev"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/dev/shm", "tmpfs", "shm",
               ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        _mount("/etc/resolv.conf", "bind", os.path.join(bundle, "resolv.conf"), files),
        _mount("/etc/hostname", "bind", os.path.join(bundle, "hostname"), files),
        _mount("/etc/hosts", "bind", os.path.join(bundle, "hosts"), files),
    ]


def cgroup_v2() -> bool:
    """Whether the host runs the unified cgroup hierarchy (cgroup v2)."""
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def runtime_spec(run: Dict[str, Any], rootfs: str, bundle: str, user: ExecUser,
                 cid: str, unified: Optional[bool] = None) -> Dict[str, Any]:
    """The OCI runtime spec (``config.json``) of one start of the container.  A cgroup
    namespace of its own on a cgroup v2 host (``unified``, detected when None), the
    host's on v1: Docker 20.10's default ``--cgroupns`` (private on v2, host on v1)."""
    unified = cgroup_v2() if unified is None else unified
    namespaces = ["pid", "ipc", "uts", "mount"] + (["network"] if run["network"] == "none" else [])
    if unified:
        namespaces.append("cgroup")
    nofile = nofile_limit()
    mounts = default_mounts(bundle, run["read_only"]) + [
        _mount(v["destination"], "bind", v["source"],
               ["rbind", "rprivate"] + (["ro"] if v["read_only"] else []))
        for v in run["volumes"]]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user.uid, "gid": user.gid,
                     **({"additionalGids": user.additional_gids} if user.additional_gids else {})},
            "args": list(run["args"]), "env": environment(run, user), "cwd": run["cwd"],
            "capabilities": {k: list(CAPABILITIES)
                             for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
            "oomScoreAdj": 0,     # as Docker: not the module's own (Ansible's) adjustment
        },
        "root": {"path": rootfs, "readonly": run["read_only"]},
        "hostname": run["hostname"],
        "mounts": mounts,
        "annotations": dict(run["annotations"]),
        "linux": {
            "namespaces": [{"type": n} for n in namespaces],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "cgroupsPath": "/strata/" + cid,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            **({"sysctl": sysctls()} if run["network"] != "host" else {}),
        },
    }


def sysctls() -> Dict[str, str]:
    """What Docker 20.10 sets in a container with a network namespace of its own: any
    user may bind ports below 1024 and send ICMP echo (a USER app serving on :80, ping),
    where the kernel knows the switch (4.11+ for the ports)."""
    out = {}
    for name, value in (("net.ipv4.ip_unprivileged_port_start", "0"),
                        ("net.ipv4.ping_group_range", "0 2147483647")):
        if os.path.exists("/proc/sys/" + name.replace(".", "/")):
            out[name] = value
    return out


def bundle_files(run: Dict[str, Any]) -> Dict[str, bytes]:
    """The files the bundle bind-mounts over /etc: hostname, hosts, resolv.conf."""
    if run["network"] == "host":
        hosts = _read_host_file("/etc/hosts") or HOSTS.encode()
    else:
        hosts = HOSTS.encode()
    hosts += ("127.0.1.1\t%s\n" % run["hostname"]).encode() if run["network"] == "none" else b""
    return {"hostname": (run["hostname"] + "\n").encode(), "hosts": hosts,
            "resolv.conf": _read_host_file("/etc/resolv.conf") or b""}


def _read_host_file(path: str, limit: int = 65536) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return b""
