# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who a process of an image runs as: ``USER`` resolved in the image's passwd/group.

Self-contained (the caller hands in a reader of the image's files), so another resolver
can replace it.  Docker's (libcontainer's) rules:

- ``user`` is a name or a uid; a name must be in ``/etc/passwd``; a uid missing from it
  runs with gid 0 and HOME ``/``;
- ``user:group`` takes that group as the only group; ``user`` alone takes the passwd
  entry's gid plus every group ``/etc/group`` lists the user in (so ``id`` prints
  ``groups=0(root),...`` as under Docker);
- HOME is the passwd entry's home directory (``/root`` for root without an entry).

Malformed lines (too few fields, a non-numeric id) are skipped as libcontainer skips
them; an id outside 0..4294967294 is refused with the file and line, never a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound

MAX_ID = 4294967294   # (uid_t)-1 means "no change" to the kernel
Reader = Callable[[str], Optional[bytes]]


@dataclass
class Identity:
    uid: int
    gid: int
    groups: List[int]
    home: str
    name: str = ""


def _number(text: str, what: str) -> int:
    """``text`` (digits) as an id; ``what`` names where it was read, for the message."""
    value = int(text)
    if value > MAX_ID:
        raise InvalidInput("%s: id %s is out of range (0-%d)" % (what, text, MAX_ID))
    return value


def _rows(read: Reader, path: str, width: int) -> List[Tuple[int, List[str]]]:
    data = read(path) or b""
    found = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        fields = line.split(":")
        if line.startswith("#") or len(fields) < width or not fields[2].isdigit():
            continue
        if width > 3 and not fields[3].isdigit():
            continue
        found.append((number, fields))
    return found


def _passwd(read: Reader, user: str) -> Optional[Tuple[int, int, str, str]]:
    for number, fields in _rows(read, "/etc/passwd", 4):
        if fields[0] == user or (user.isdigit() and fields[2].isdigit()
                                 and int(fields[2]) == int(user)):
            where = "/etc/passwd line %d of the image" % number
            home = fields[5] if len(fields) > 5 and fields[5] else "/"
            return _number(fields[2], where), _number(fields[3], where), home, fields[0]
    return None


def _group_id(read: Reader, group: str) -> int:
    if group.isdigit():
        return _number(group, "the gid")
    for number, fields in _rows(read, "/etc/group", 3):
        if fields[0] == group:
            return _number(fields[2], "/etc/group line %d of the image" % number)
    raise NotFound("group %r is not in the image's /etc/group" % group)


def _member_of(read: Reader, name: str) -> List[int]:
    found = []
    for number, fields in _rows(read, "/etc/group", 3):
        if len(fields) > 3 and name in fields[3].split(","):
            found.append(_number(fields[2], "/etc/group line %d of the image" % number))
    return found


def resolve(read: Reader, spec: str) -> Identity:
    """``USER`` (``user[:group]``, empty for root) -> Identity, as Docker resolves it."""
    user, _sep, group = (spec or "0").partition(":")
    if not user:
        raise InvalidInput("USER %r names no user" % spec)
    entry = _passwd(read, user)
    if entry is None:
        if not user.isdigit():
            raise NotFound("user %r is not in the image's /etc/passwd" % user)
        uid = _number(user, "the uid")
        entry = (uid, 0, "/root" if uid == 0 else "/", "")
    uid, gid, home, name = entry
    if group:
        gid = _group_id(read, group)
        return Identity(uid, gid, [gid], home, name)
    groups = [gid] + (_member_of(read, name) if name else [])
    return Identity(uid, gid, sorted(set(groups), key=groups.index), home, name)
