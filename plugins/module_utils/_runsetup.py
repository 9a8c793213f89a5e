# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host side of a RUN step's ``--mount``s, network and identity (see ``_runmounts``).

``attach_mounts`` gives the sandbox what each mount needs, on an ``ExitStack`` that
undoes it after the step: a cache directory of the store (locked as its ``sharing``
asks), a path of the build context (copied when ``rw``: writes are thrown away), the
root of another stage or image (a throw-away container of it, mounted), a tmpfs, a
secret or an ssh agent socket.  Cache directories live in
``<data_root>/cache/mounts/<sha256 of id>/`` (``data/`` and a ``lock`` file), outside
every layer; ``prune_caches`` removes them (``store_prune`` with ``build_cache``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import makedirs, remove_tree
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound
from ansible_collections.strata.layers.plugins.module_utils._runmounts import Mount, walk
from ansible_collections.strata.layers.plugins.module_utils._safepath import resolve_beneath
from ansible_collections.strata.layers.plugins.module_utils._sandbox import Sandbox

CACHE_DIR = os.path.join("cache", "mounts")
MAX_SECRET = 500 << 10   # BuildKit's limit on a secret's size


@dataclass
class RunOptions:
    """The module options a RUN step reads."""

    network: str = "default"
    secrets: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    ssh: Optional[str] = None
    step_timeout: Optional[float] = None
    user_namespaces: bool = False


@dataclass
class MountSources:
    """What the builder provides: the store root, the context, and a way to mount the
    root filesystem of a stage (index) or image (reference) for the step's duration."""

    data_root: str
    context: Optional[str]
    staging: Callable[[str], str]
    mounted_root: Callable[[Mount], ContextManager[str]]
    options: RunOptions
    # the context paths .dockerignore keeps (None: it excludes nothing)
    visible: Optional[Callable[[str], bool]] = None


def attach_mounts(stack: contextlib.ExitStack, sandbox: Sandbox, mounts: List[Mount],
                  sources: MountSources, what: str) -> Dict[str, str]:
    """Give ``sandbox`` every mount; return the environment they add (secrets' ``env``,
    ``SSH_AUTH_SOCK``)."""
    env: Dict[str, str] = {}
    for mount in mounts:
        where = "%s: --mount type=%s,target=%s" % (what, mount.type, mount.target or "-")
        if mount.type == "cache":
            sandbox.bind(stack.enter_context(_cache_dir(sources.data_root, mount)),
                         mount.target, mount.readonly)
        elif mount.type == "tmpfs":
            sandbox.tmpfs(mount.target, mount.size)
        elif mount.type == "bind":
            sandbox.bind(_bind_source(stack, mount, sources, where), mount.target, mount.readonly)
        elif mount.type == "secret":
            _secret(sandbox, mount, sources.options, env, where)
        elif mount.type == "ssh":
            _ssh(sandbox, mount, sources.options, env, where)
    return env


# ---------------------------------------------------------------------- cache mounts

def cache_path(data_root: str, cache_id: str) -> str:
    return os.path.join(data_root, CACHE_DIR, hashlib.sha256(cache_id.encode()).hexdigest())


@contextlib.contextmanager
def _cache_dir(data_root: str, mount: Mount):  # type: ignore[no-untyped-def]
    home = cache_path(data_root, mount.id)
    makedirs(home)
    lock = os.open(os.path.join(home, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    private = None
    try:
        if mount.sharing == "shared":
            fcntl.flock(lock, fcntl.LOCK_SH)
        elif mount.sharing == "locked":
            fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # in use: BuildKit gives a private user a fresh instance
                private = os.path.join(home, "private-%d" % os.getpid())
        data = os.path.join(private or home, "data")
        if not os.path.isdir(data):
            makedirs(os.path.dirname(data))
            os.mkdir(data)
            os.chown(data, mount.uid, mount.gid)
            os.chmod(data, mount.mode if mount.mode is not None else 0o755)
        yield data
    finally:
        os.close(lock)
        if private:
            remove_tree(private)


def prune_caches(data_root: str, dry: bool) -> Tuple[List[str], int]:
    """Every cache mount's directory (removed unless ``dry``): names and bytes."""
    top = os.path.join(data_root, CACHE_DIR)
    try:
        names = sorted(n for n in os.listdir(top) if len(n) == 64)
    except FileNotFoundError:
        return [], 0
    total = 0
    for name in names:
        path = os.path.join(top, name)
        total += _bytes(path)
        if not dry:
            remove_tree(path)
    return names, total


def _bytes(path: str) -> int:
    total = 0
    for base, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(base, name)).st_blocks * 512
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------- bind mounts

def _bind_source(stack: contextlib.ExitStack, mount: Mount, sources: MountSources,
                 where: str) -> str:
    if mount.from_stage is not None or mount.from_image:
        root = stack.enter_context(sources.mounted_root(mount))
    else:
        if not sources.context:
            raise InvalidInput("%s: a bind from the build context needs the context option"
                               % where)
        root = sources.context
    path = os.fsdecode(resolve_beneath(os.fsencode(root), os.fsencode(mount.source.lstrip("/"))))
    if not os.path.lexists(path):
        raise NotFound("%s: source %s does not exist in %s" % (
            where, mount.source, "the build context" if root == sources.context
            else "--from=%s" % mount.from_ref))
    if root != sources.context:
        return path   # a stage's root is a throw-away container: rw writes vanish with it
    keep = context_filter(sources.context, sources.visible, path)
    if mount.readonly and keep is None:
        return path
    # rw: writes go to a copy; .dockerignore: the step sees what Docker would send
    copy = sources.staging("bind")
    stack.callback(remove_tree, copy)
    target = os.path.join(copy, "src")
    copy_tree(path, target, keep or (lambda rel: True))
    return target


def context_filter(context: Optional[str], visible: Optional[Callable[[str], bool]],
                   path: str) -> Optional[Callable[[str], bool]]:
    """``keep(rel)`` for paths below ``path`` (a path of the context), or None when
    ``.dockerignore`` excludes nothing."""
    if visible is None or not context:
        return None
    base = os.path.relpath(path, os.path.realpath(context))
    prefix = "" if base == "." else base + "/"
    return lambda rel: visible(prefix + rel)


def copy_tree(src: str, dst: str, keep: Callable[[str], bool]) -> None:
    """The entries of ``src`` that ``keep`` keeps, with modes, owners and times."""
    for rel, st in walk(src, keep):
        source = os.path.join(src, rel) if rel else src
        target = os.path.join(dst, rel) if rel else dst
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if stat.S_ISDIR(st.st_mode):
            os.makedirs(target, exist_ok=True)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), target)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(source, target, follow_symlinks=False)
        else:
            continue    # sockets, fifos, devices: not part of a build context
        os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(target, stat.S_IMODE(st.st_mode))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---------------------------------------------------------------------- secrets, ssh

def _secret(sandbox: Sandbox, mount: Mount, options: RunOptions, env: Dict[str, str],
            where: str) -> None:
    source = options.secrets.get(mount.id)
    if source is None:
        if mount.required is False:
            return
        raise InvalidInput("%s: no secret %r was given; add it to the secrets option "
                           "({%s: {src: PATH}} or {env: NAME}) or say required=false"
                           % (where, mount.id, mount.id))
    value = _secret_value(source, mount.id)
    if mount.env:
        env[mount.env] = value.decode("utf-8", "surrogateescape")
    if mount.target:
        sandbox.memory_file(mount.target, value, mount.mode if mount.mode is not None else 0o400,
                            (mount.uid, mount.gid))


def _secret_value(source: Tuple[str, str], secret_id: str) -> bytes:
    kind, where = source
    if kind == "env":
        if where not in os.environ:
            raise NotFound("secret %r: the environment variable %s is not set for the module"
                           % (secret_id, where))
        return os.environ[where].encode("utf-8", "surrogateescape")
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise NotFound("secret %r: cannot read %s: %s" % (secret_id, where, exc.strerror)) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput("secret %r: %s is not a regular file" % (secret_id, where))
        data = os.read(fd, MAX_SECRET + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET:
        raise InvalidInput("secret %r: %s is larger than %d bytes" % (secret_id, where, MAX_SECRET))
    return data


def _ssh(sandbox: Sandbox, mount: Mount, options: RunOptions, env: Dict[str, str],
         where: str) -> None:
    sock = options.ssh if mount.id == "default" else None
    if not sock:
        if mount.required is False:
            return
        raise InvalidInput("%s: no ssh agent socket for id %r; give the ssh option (the "
                           "agent's socket path; only the id 'default')" % (where, mount.id))
    try:
        st = os.stat(sock)
    except OSError as exc:
        raise NotFound("ssh option: %s: %s" % (sock, exc.strerror)) from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidInput("ssh option: %s is not a socket" % sock)
    sandbox.bind(sock, mount.target, False)
    env["SSH_AUTH_SOCK"] = mount.target


# ---------------------------------------------------------------------- output

def run_log(cid: str) -> str:
    """A new file (0600, in the host's temporary directory, never in the store: a failed
    build leaves the store as it was) for a RUN step's whole output."""
    fd, path = tempfile.mkstemp(prefix="strata-run-%s-" % cid[:12], suffix=".log")
    os.close(fd)
    return path


# ---------------------------------------------------------------------- environment

def run_environment(env: Dict[str, str], home: str, hostname: str) -> Dict[str, str]:
    """A RUN's environment as Docker's: HOSTNAME, then the step's ENV/ARGs (a default
    PATH among them), HOME from the user's passwd entry unless ENV sets one."""
    found = {"HOSTNAME": hostname}
    found.update(env)
    found.setdefault("HOME", home)
    return found


def network_files(sandbox: Sandbox, hostname: str) -> None:
    """With the host's network, name resolution as BuildKit gives it: the host's
    resolv.conf and a hosts file naming localhost and the step's hostname, from memory
    (never in the layer)."""
    hosts = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             "127.0.1.1\t%s\n" % hostname).encode()
    sandbox.memory_file("/etc/hosts", hosts, 0o644, (0, 0), readonly=False)
    try:
        with open("/etc/resolv.conf", "rb") as handle:
            resolv = handle.read(1 << 16)
    except OSError:
        resolv = b""
    sandbox.memory_file("/etc/resolv.conf", resolv, 0o644, (0, 0), readonly=False)
