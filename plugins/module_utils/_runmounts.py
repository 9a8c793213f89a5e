# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``RUN --mount``: what a step sees besides its root filesystem, never in its layer.

Parsing (``parse_mount``) follows BuildKit's ``--mount`` syntax: comma-separated
``key=value`` fields (a field may be quoted as in CSV), ``type`` first or anywhere
(``bind`` when absent), keys case-insensitive, booleans bare or ``=true|false``.  Every
key a type does not know is refused, with the list of the ones it knows.

The types, as BuildKit gives them:

- ``cache``: a directory kept in the store (``cache/mounts/<sha256 of id>/``) from one
  build to the next, ``id`` defaulting to the target.  ``sharing=shared`` (default) lets
  concurrent users share it, ``locked`` waits for the only use, ``private`` takes a fresh
  instance when it is in use.  ``uid``, ``gid`` and ``mode`` (default 0755) apply when
  it is created.  Its content is never part of a layer nor of the cache key; only
  ``store_prune`` with ``build_cache: true`` removes it.
- ``bind``: ``source`` (default the whole) from the build context, a stage or an image
  (``from``), read-only unless ``rw``; with ``rw`` writes go to a throw-away copy.
- ``tmpfs``: an empty tmpfs (``size`` in bytes).
- ``secret``: the module's ``secrets[id]`` (a host file or an environment variable of
  the module), a file at ``target`` (default ``/run/secrets/<id>``) and/or an
  environment variable ``env``.  Mounted from memory in the step's own mount namespace:
  it never touches the store's disk, the layer, the history or the cache key.
- ``ssh``: the agent socket of the module's ``ssh`` option at ``target`` (default
  ``/run/buildkit/ssh_agent.N``), ``SSH_AUTH_SOCK`` set to it.

Decisions where BuildKit leaves room: a secret or ssh mount whose source the module was
not given fails (BuildKit skips it silently unless ``required``); say ``required=false``
to make it optional.  ``cache`` with ``from``/``source`` (seeding a cache from a stage)
is refused by name.
"""
from __future__ import annotations

import csv
import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_ALIASES = {"target": "target", "dst": "target", "destination": "target",
            "source": "source", "src": "source", "readonly": "readonly", "ro": "readonly",
            "rw": "rw", "readwrite": "rw"}
_KEYS = {
    "bind": ("type", "target", "source", "from", "readonly", "rw"),
    "cache": ("type", "target", "id", "sharing", "mode", "uid", "gid", "readonly", "rw",
              "from", "source"),
    "tmpfs": ("type", "target", "size"),
    "secret": ("type", "target", "id", "env", "required", "mode", "uid", "gid"),
    "ssh": ("type", "target", "id", "required", "mode", "uid", "gid"),
}
_BOOLEANS = ("readonly", "rw", "required")
SHARING = ("shared", "private", "locked")
MAX_ID = 4294967294


class MountError(ValueError):
    """A ``--mount`` value that cannot be used (the parser adds the line)."""


@dataclass
class Mount:
    """One ``--mount``; ``from_stage``/``from_image`` are filled in by the parser."""

    type: str
    target: str = ""
    source: str = ""
    from_ref: str = ""
    from_stage: Optional[int] = None
    from_image: Optional[str] = None
    readonly: bool = False
    id: str = ""
    sharing: str = "shared"
    mode: Optional[int] = None
    uid: int = 0
    gid: int = 0
    size: Optional[int] = None
    required: Optional[bool] = None
    env: str = ""

    def key(self) -> Dict[str, object]:
        """What the build cache keys on: where and what is mounted, never a secret's or
        a cache's content (a bind's content is keyed by the builder)."""
        fields = {"type": self.type, "target": self.target}
        if self.type == "bind":
            fields.update(source=self.source, readonly=self.readonly)
        elif self.type == "cache":
            fields.update(id=self.id, sharing=self.sharing, mode=self.mode, uid=self.uid,
                          gid=self.gid, readonly=self.readonly)
        elif self.type in ("secret", "ssh"):
            fields.update(id=self.id, env=self.env, mode=self.mode, uid=self.uid, gid=self.gid)
        elif self.type == "tmpfs":
            fields.update(size=self.size)
        return fields


def parse_mount(text: str, index: int = 0) -> Mount:
    """``type=cache,target=/root/.cache`` -> Mount; ``index`` numbers ssh mounts."""
    fields = _fields(text)
    kind = fields.pop("type", "bind")
    if kind not in MOUNT_TYPES:
        raise MountError("--mount type=%s is not a mount type (known: %s)"
                         % (kind, ", ".join(MOUNT_TYPES)))
    for key in fields:
        if key not in _KEYS[kind]:
            raise MountError("--mount type=%s does not take %r (it takes: %s)"
                             % (kind, key, ", ".join(k for k in _KEYS[kind] if k != "type")))
    mount = Mount(type=kind)
    _common(mount, fields)
    {"bind": _bind, "cache": _cache, "tmpfs": _tmpfs, "secret": _secret,
     "ssh": lambda m, f: _ssh(m, f, index)}[kind](mount, fields)
    return mount


def _fields(text: str) -> Dict[str, str]:
    try:
        rows = list(csv.reader([text]))
    except csv.Error as exc:
        raise MountError("--mount=%s is not comma-separated key=value fields: %s"
                         % (text, exc)) from None
    found: Dict[str, str] = {}
    for field in rows[0] if rows else []:
        key, equals, value = field.partition("=")
        key = key.strip().lower()
        key = _ALIASES.get(key, key)
        if not key:
            raise MountError("--mount=%s has an empty field" % text)
        if not equals and key not in _BOOLEANS:
            raise MountError("--mount field %r needs a value (%s=...)" % (key, key))
        if key in found:
            raise MountError("--mount=%s gives %s twice" % (text, key))
        found[key] = value if equals else "true"
    return found


def _flag(fields: Dict[str, str], key: str) -> Optional[bool]:
    if key not in fields:
        return None
    value = fields[key].lower()
    if value not in ("true", "false"):
        raise MountError("--mount %s=%s: expecting true or false" % (key, fields[key]))
    return value == "true"


def _number(fields: Dict[str, str], key: str, base: int = 10, limit: int = MAX_ID
            ) -> Optional[int]:
    if key not in fields:
        return None
    try:
        value = int(fields[key], base)
    except ValueError:
        raise MountError("--mount %s=%s is not a number" % (key, fields[key])) from None
    if not 0 <= value <= limit:
        raise MountError("--mount %s=%s is out of range (0-%d)" % (key, fields[key], limit))
    return value


def _target(fields: Dict[str, str], default: str = "") -> str:
    target = fields.get("target", default)
    if not target:
        raise MountError("--mount needs target=PATH")
    return posixpath.normpath(posixpath.join("/", target))


def _common(mount: Mount, fields: Dict[str, str]) -> None:
    ro, rw = _flag(fields, "readonly"), _flag(fields, "rw")
    if ro is not None and rw is not None and ro == rw:
        raise MountError("--mount gives both readonly and rw")
    mount.readonly = bool(ro) if ro is not None else (rw is False)
    uid, gid = _number(fields, "uid"), _number(fields, "gid")
    mount.uid, mount.gid = uid or 0, gid or 0
    mount.mode = _number(fields, "mode", 8, 0o7777)
    mount.required = _flag(fields, "required")


def _bind(mount: Mount, fields: Dict[str, str]) -> None:
    mount.target = _target(fields)
    mount.source = posixpath.normpath(posixpath.join("/", fields.get("source", "/")))
    mount.from_ref = fields.get("from", "")
    # a bind is read-only unless rw is said, as in BuildKit
    mount.readonly = not (_flag(fields, "rw") or _flag(fields, "readonly") is False)


def _cache(mount: Mount, fields: Dict[str, str]) -> None:
    for key in ("from", "source"):
        if key in fields:
            raise MountError("--mount type=cache,%s=... (seeding a cache from a stage) is "
                             "not supported; drop %s" % (key, key))
    mount.target = _target(fields)
    mount.id = fields.get("id") or mount.target
    mount.sharing = fields.get("sharing", "shared").lower()
    if mount.sharing not in SHARING:
        raise MountError("--mount sharing=%s: expecting one of %s"
                         % (fields["sharing"], ", ".join(SHARING)))
    if mount.mode is None:
        mount.mode = 0o755


def _tmpfs(mount: Mount, fields: Dict[str, str]) -> None:
    mount.target = _target(fields)
    mount.size = _number(fields, "size", limit=1 << 62)


def _secret(mount: Mount, fields: Dict[str, str]) -> None:
    mount.env = fields.get("env", "")
    target = fields.get("target", "")
    mount.id = fields.get("id") or (posixpath.basename(target) if target else "")
    if not mount.id:
        raise MountError("--mount type=secret needs id=ID (or a target to name it)")
    if mount.env and not target:
        mount.target = ""
    else:
        mount.target = _target(fields, "/run/secrets/" + mount.id)
    if mount.mode is None:
        mount.mode = 0o400


def _ssh(mount: Mount, fields: Dict[str, str], index: int) -> None:
    mount.id = fields.get("id") or "default"
    mount.target = _target(fields, "/run/buildkit/ssh_agent.%d" % index)
    if mount.mode is None:
        mount.mode = 0o600


def parse_mounts(texts: List[str]) -> List[Mount]:
    """Every ``--mount`` of one RUN; two on the same target are refused."""
    mounts: List[Mount] = []
    ssh = 0
    for text in texts:
        mount = parse_mount(text, ssh)
        ssh += mount.type == "ssh"
        mounts.append(mount)
    seen: Dict[str, str] = {}
    for mount in mounts:
        if mount.target and mount.target in seen:
            raise MountError("two mounts on %s" % mount.target)
        if mount.target == "/":
            raise MountError("--mount target=/ would hide the root filesystem")
        seen[mount.target] = mount.type
    return mounts


def network_mode(value: str) -> str:
    """``RUN --network`` and the module's ``network``: default|host|none."""
    if value not in ("default", "host", "none"):
        raise MountError("--network=%s: expecting default, none or host" % value)
    return value


def secret_sources(options: Optional[Dict[str, object]]) -> Dict[str, Tuple[str, str]]:
    """The module's ``secrets`` as ``{id: ("src", path) | ("env", name)}``."""
    found: Dict[str, Tuple[str, str]] = {}
    for key, value in (options or {}).items():
        if not isinstance(value, dict) or len(value) != 1 or \
                next(iter(value)) not in ("src", "env") or not next(iter(value.values())):
            raise MountError("secrets[%s] must be {src: PATH} or {env: NAME}" % key)
        kind, where = next(iter(value.items()))
        found[str(key)] = (kind, str(where))
    return found


def tree_digest(path: str, keep: Callable[[str], bool] = lambda rel: True) -> str:
    """What a bind from the context contributes to the cache key: names, types, modes,
    owners, link targets and contents (not times) of the entries ``keep`` keeps (those
    ``.dockerignore`` does not exclude), as COPY's digest counts them."""
    digest = hashlib.sha256()
    for rel, st in walk(path, keep):
        digest.update(("%s\0%o\0%d\0%d\0" % (rel, st.st_mode, st.st_uid, st.st_gid)).encode(
            "utf-8", "surrogateescape"))
        full = os.path.join(path, rel) if rel else path
        if stat.S_ISLNK(st.st_mode):
            digest.update(os.fsencode(os.readlink(full)))
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def walk(top: str, keep: Callable[[str], bool]) -> Iterator[Tuple[str, os.stat_result]]:
    """``top`` and everything below it (never through symlinks), sorted, as (path
    relative to ``top``, lstat); entries ``keep`` refuses are left out (their children
    are still visited: a ``!`` exception may bring one back)."""
    yield "", os.lstat(top)
    if not os.path.isdir(top) or os.path.islink(top):
        return
    for base, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(dirs + names):
            full = os.path.join(base, name)
            rel = os.path.relpath(full, top)
            if keep(rel):
                yield rel, os.lstat(full)
