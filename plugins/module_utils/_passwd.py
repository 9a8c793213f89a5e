# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A ``USER`` value resolved against a root filesystem's own ``/etc/passwd`` and
``/etc/group``, as Docker and runc resolve it (moby/sys/user ``GetExecUser``).

Forms: ``""`` (root), ``name``, ``uid``, ``name:group``, ``uid:gid`` and the mixed
forms.  A name must exist in the file; a number need not (then the group is 0 and
HOME is ``/``).  Supplementary groups are the groups whose member list names the
user, and only when no group was given explicitly (what ``docker run -u name`` gives).

The files are read through the root as a chroot would resolve them (a symlinked
``/etc`` never leads out of the root), at most ``MAX_FILE`` bytes each.  Used by the
container runtime bundle and by a build's RUN steps alike.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._safepath import resolve_beneath

MAX_FILE = 4 << 20
MAX_ID = (1 << 31) - 1


@dataclass
class ExecUser:
    """Who a process runs as: ``additional_gids`` excludes ``gid``."""

    uid: int = 0
    gid: int = 0
    additional_gids: List[int] = field(default_factory=list)
    home: str = "/"
    name: Optional[str] = None


def read_rows(root: str, rel: str) -> List[List[str]]:
    """The colon-separated rows of ``rel`` (e.g. ``etc/passwd``) in ``root``; [] when absent.

    Only a regular file is read: the image's ``etc/passwd`` could be a device node (a host
    disk, a watchdog whose mere opening arms it), which runc would open inside the
    container's device cgroup, never on the host.  It is checked through an ``O_PATH``
    descriptor before anything opens it for reading."""
    path = resolve_beneath(os.fsencode(root), os.fsencode(rel))
    try:
        handle_fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise InvalidInput("cannot read /%s of the container: %s" % (rel, exc.strerror)) from exc
    try:
        if not stat.S_ISREG(os.fstat(handle_fd).st_mode):
            raise InvalidInput("/%s of the container is not a regular file; the user cannot "
                               "be resolved from it" % rel)
        with open("/proc/self/fd/%d" % handle_fd, "rb") as handle:
            data = handle.read(MAX_FILE)
    except OSError as exc:
        raise InvalidInput("cannot read /%s of the container: %s" % (rel, exc.strerror)) from exc
    finally:
        os.close(handle_fd)
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _number(text: str) -> Optional[int]:
    if not text.isdigit():
        return None
    value = int(text)
    if value > MAX_ID:
        raise InvalidInput("user or group id %s is out of range (at most %d)" % (text, MAX_ID))
    return value


def _split(spec: str) -> Tuple[str, str]:
    user, _sep, group = spec.partition(":")
    if not user and group:
        raise InvalidInput("user %r names a group but no user (use 0:%s for root)" % (spec, group))
    return user, group


def _find_user(rows: List[List[str]], user: str, spec: str) -> ExecUser:
    uid = _number(user)
    for row in rows:
        if len(row) < 4:
            continue
        if row[0] == user or (uid is not None and row[2] == user):
            row_uid, row_gid = _number(row[2]), _number(row[3])
            if row_uid is None or row_gid is None:
                continue
            home = row[5] if len(row) > 5 and row[5] else "/"
            return ExecUser(uid=row_uid, gid=row_gid, home=home, name=row[0])
    if uid is None:
        raise InvalidInput("user %r: no user named %r in the container's /etc/passwd; use a "
                           "numeric uid or a user the image defines" % (spec, user))
    return ExecUser(uid=uid)


def _find_group(rows: List[List[str]], group: str, spec: str) -> int:
    gid = _number(group)
    for row in rows:
        if len(row) >= 3 and (row[0] == group or (gid is not None and row[2] == group)):
            found = _number(row[2])
            if found is not None:
                return found
    if gid is None:
        raise InvalidInput("user %r: no group named %r in the container's /etc/group; use a "
                           "numeric gid or a group the image defines" % (spec, group))
    return gid


def _member_gids(rows: List[List[str]], name: str, primary: int) -> List[int]:
    gids: List[int] = []
    for row in rows:
        if len(row) >= 4 and name in row[3].split(","):
            gid = _number(row[2])
            if gid is not None and gid != primary and gid not in gids:
                gids.append(gid)
    return gids


def resolve_user(root: str, spec: Optional[str]) -> ExecUser:
    """``spec`` (a USER value) resolved against ``root``'s passwd and group files."""
    spec = (spec or "").strip()
    user, group = _split(spec) if spec else ("", "")
    passwd = read_rows(root, "etc/passwd")
    found = _find_user(passwd, user or "0", spec or "root")
    groups = read_rows(root, "etc/group") if group or found.name else []
    if group:
        found.gid = _find_group(groups, group, spec)
    elif found.name:
        found.additional_gids = _member_gids(groups, found.name, found.gid)
    return found
