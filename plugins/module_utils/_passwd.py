# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A ``USER`` value resolved against a root filesystem's own ``/etc/passwd`` and
``/etc/group``, as Docker and runc resolve it (moby/sys/user ``GetExecUser``).

One resolver for both callers:

- the container runtime (``resolve_user(root, spec)``): the files of a mounted
  container root, read as a chroot would resolve them (a symlinked ``/etc`` never
  leads out of the root), at most ``MAX_FILE`` bytes each;
- a build's RUN steps (``resolve(read, spec)``): the image's files given by a reader
  (``ImageView.read``, which resolves paths inside the image's layers only).

Forms: ``""`` (root), ``name``, ``uid``, ``name:group``, ``uid:gid`` and the mixed
forms.  A name must exist in the file; a number need not (then the group is 0 and
HOME is ``/``).  ``user`` alone takes the passwd entry's gid plus every group whose
member list names the user (what ``docker run -u name`` gives: ``id`` prints
``groups=0(root),...``); ``user:group`` takes that group as the only group.

HOME is the passwd entry's home directory.  Root without an entry: ``/`` for a
container (runc's default), ``/root`` for a RUN step (what the build's RUN
environment has always given, see ``_runsetup``).

Malformed lines (too few fields, a non-numeric id) are skipped as libcontainer skips
them; an id above ``MAX_ID`` (runc's limit) is refused naming the file and line (or
the USER value), never a traceback.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Type

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._safepath import resolve_beneath

MAX_FILE = 4 << 20
MAX_ID = (1 << 31) - 1   # moby/sys/user's bound, for 32-bit compatibility
Reader = Callable[[str], Optional[bytes]]
Row = Tuple[int, List[str]]   # (line number, fields)


@dataclass
class ExecUser:
    """Who a process runs as: ``additional_gids`` excludes ``gid``; ``groups`` is the
    whole list a process gets (``gid`` first)."""

    uid: int = 0
    gid: int = 0
    additional_gids: List[int] = field(default_factory=list)
    home: str = "/"
    name: Optional[str] = None

    @property
    def groups(self) -> List[int]:
        return [self.gid] + [g for g in self.additional_gids if g != self.gid]


Identity = ExecUser   # the name RUN steps use


@dataclass(frozen=True)
class _Where:
    """Whose files are read, for messages, and what each caller expects."""

    owner: str                    # "image" or "container"
    root_home: str                # HOME of uid 0 without a passwd entry
    missing: Type[StoreError]     # the error for a name the files do not define

    def unknown(self, kind: str, name: str, spec: str) -> StoreError:
        number = "uid" if kind == "user" else "gid"
        path = "/etc/passwd" if kind == "user" else "/etc/group"
        if self.missing is NotFound:
            return NotFound("%s %r is not in the %s's %s" % (kind, name, self.owner, path))
        return self.missing("user %r: no %s named %r in the %s's %s; use a numeric %s or a %s "
                            "the image defines" % (spec, kind, name, self.owner, path, number,
                                                   kind))


_IMAGE = _Where("image", "/root", NotFound)
_CONTAINER = _Where("container", "/", InvalidInput)


# ---------------------------------------------------------------- reading the files
def root_reader(root: str, owner: str = "container") -> Reader:
    """A reader of files inside ``root`` (``/etc/passwd``), never leaving it; None when
    absent; at most ``MAX_FILE`` bytes.

    Only a regular file is read: the root's ``etc/passwd`` could be a device node (a host
    disk, a watchdog whose mere opening arms it) or a FIFO, which runc would open inside
    the container's device cgroup, never on the host.  It is checked through an
    ``O_PATH`` descriptor before anything opens it for reading."""
    def read(path: str) -> Optional[bytes]:
        rel = path.lstrip("/")
        try:
            where = resolve_beneath(os.fsencode(root), os.fsencode(rel))
            handle_fd = os.open(where, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise InvalidInput("cannot read /%s of the %s: %s" % (rel, owner, exc.strerror)) \
                from exc
        try:
            if not stat.S_ISREG(os.fstat(handle_fd).st_mode):
                raise InvalidInput("/%s of the %s is not a regular file; the user cannot be "
                                   "resolved from it" % (rel, owner))
            with open("/proc/self/fd/%d" % handle_fd, "rb") as handle:
                return handle.read(MAX_FILE)
        except OSError as exc:
            raise InvalidInput("cannot read /%s of the %s: %s" % (rel, owner, exc.strerror)) \
                from exc
        finally:
            os.close(handle_fd)
    return read


def _rows(read: Reader, path: str) -> List[Row]:
    """The numbered colon-separated rows of ``path``, comments and blank lines left out."""
    data = read(path) or b""
    rows = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append((number, line.split(":")))
    return rows


def read_rows(root: str, rel: str) -> List[List[str]]:
    """The colon-separated rows of ``rel`` (e.g. ``etc/passwd``) in ``root``; [] when absent."""
    return [fields for _number, fields in _rows(root_reader(root), "/" + rel)]


# ---------------------------------------------------------------- ids
def _number(text: str, what: str) -> Optional[int]:
    """``text`` as an id (None when not a number); ``what`` names where it was read."""
    if not text.isdigit():
        return None
    value = int(text)
    if value > MAX_ID:
        raise InvalidInput("%s: id %s is out of range (0-%d)" % (what, text, MAX_ID))
    return value


def _line(path: str, number: int, where: _Where) -> str:
    return "%s line %d of the %s" % (path, number, where.owner)


# ---------------------------------------------------------------- lookups
def _find_user(rows: List[Row], user: str, spec: str, where: _Where) -> ExecUser:
    uid = _number(user, "user %r" % spec)
    for number, row in rows:
        if len(row) < 4 or not row[2].isdigit() or not row[3].isdigit():
            continue
        if row[0] == user or (uid is not None and int(row[2]) == uid):
            what = _line("/etc/passwd", number, where)
            home = row[5] if len(row) > 5 and row[5] else "/"
            return ExecUser(uid=int(_number(row[2], what)),  # type: ignore[arg-type]
                            gid=int(_number(row[3], what)),  # type: ignore[arg-type]
                            home=home, name=row[0])
    if uid is None:
        raise where.unknown("user", user, spec)
    return ExecUser(uid=uid, home=where.root_home if uid == 0 else "/")


def _find_group(rows: List[Row], group: str, spec: str, where: _Where) -> int:
    gid = _number(group, "user %r" % spec)
    if gid is not None:
        return gid
    for number, row in rows:
        if len(row) >= 3 and row[0] == group and row[2].isdigit():
            return int(_number(row[2], _line("/etc/group", number, where)))  # type: ignore[arg-type]
    raise where.unknown("group", group, spec)


def _member_gids(rows: List[Row], name: str, primary: int, where: _Where) -> List[int]:
    gids: List[int] = []
    for number, row in rows:
        if len(row) >= 4 and row[2].isdigit() and name in row[3].split(","):
            gid = int(_number(row[2], _line("/etc/group", number, where)))  # type: ignore[arg-type]
            if gid != primary and gid not in gids:
                gids.append(gid)
    return gids


def _resolve(read: Reader, spec: Optional[str], where: _Where) -> ExecUser:
    spec = (spec or "").strip()
    user, _sep, group = spec.partition(":")
    if not user and group:
        raise InvalidInput("user %r names a group but no user (use 0:%s for root)"
                           % (spec, group))
    found = _find_user(_rows(read, "/etc/passwd"), user or "0", spec or "root", where)
    if group:
        found.gid = _find_group(_rows(read, "/etc/group"), group, spec, where)
    elif found.name:
        found.additional_gids = _member_gids(_rows(read, "/etc/group"), found.name,
                                             found.gid, where)
    return found


# ---------------------------------------------------------------- the two entry points
def resolve_user(root: str, spec: Optional[str]) -> ExecUser:
    """The container runtime: ``spec`` resolved against ``root``'s passwd and group."""
    return _resolve(root_reader(root), spec, _CONTAINER)


def resolve(read: Reader, spec: Optional[str]) -> ExecUser:
    """A RUN step: ``USER`` resolved in the image's files given by ``read``."""
    return _resolve(read, spec, _IMAGE)
