# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the store may trust and touch on the host.

Three rules, each checked in one place:

- **Ownership.**  A directory becomes a store on first use only when it is empty (or
  holds nothing but what a fresh filesystem's root holds, ``lost+found``), or when the
  operator says to adopt it (``init: adopt``).  Otherwise a ``data_root`` pointed by
  mistake at ``/srv`` would have its ``tmp/`` swept as staging debris.
- **Confinement.**  Every path the store removes or writes because a record or a mark
  names it must lie inside the store, both as written and once its directories'
  symlinks are resolved; user-chosen destinations (``image_export`` ``dest``,
  ``container_layer`` ``mount_point``) must lie outside it and not hold it.
- **No unprivileged hands on the path.**  The data root and each directory leading to
  it must be owned by root (or by whoever runs the module) and writable by no one else:
  a user who can write to any of them can swap a component for a symlink and steer
  root's writes and deletes (the rule sshd's StrictModes applies to ``~/.ssh``).  A
  sticky directory (``/tmp``) protects the entries of other owners, so it is
  acceptable as long as the entry below it is trusted.
"""
from __future__ import annotations

import os
import stat
from typing import Iterable, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._atomic import TEMP_PREFIX
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput

# the names a store makes directly under its data root (drivers' homes are added by
# the caller, which knows the drivers); each is described in docs/design.md, "Layout of
# a store" (tests/unit/test_design_doc.py holds the two together)
STORE_ENTRIES = frozenset((
    "lock", "store.json", "layers", "images", "tags.json", "containers", "distribution",
    "sources", "pulls", "cache", "quarantine", "incomplete", "tmp", "mounts", "registry",
    "downloads", "runtime"))
# what the root of a freshly made filesystem holds (mkfs.ext4)
FILESYSTEM_ENTRIES = frozenset(("lost+found",))
INIT_MODES = ("new", "adopt")


def foreign_entries(root: str, own: Iterable[str]) -> List[str]:
    """The names in ``root`` that no store makes (sorted); [] when it does not exist."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    mine = STORE_ENTRIES | FILESYSTEM_ENTRIES | frozenset(own)
    # staging names are the store's only where a store has been (its lock file is there)
    ours_temp = "lock" in names
    return sorted(n for n in names if n not in mine and
                  not (ours_temp and n.startswith(TEMP_PREFIX)))


def refuse_foreign(root: str, own: Iterable[str]) -> None:
    """Refuse to make a store of a directory that holds someone else's files."""
    found = foreign_entries(root, own)
    if found:
        shown = ", ".join(found[:5]) + (" and %d more" % (len(found) - 5) if len(found) > 5
                                        else "")
        raise InvalidInput(
            "data_root %s is not empty and is not a strata store (it holds %s); refusing to "
            "make a store of it, whose staging and recovery would remove files it did not "
            "make. Choose an empty or new directory, or set init: adopt to take this one over "
            "(its files are left alone)" % (root, shown), foreign=found[:20])


def inside(root: str, path: str) -> bool:
    """``path`` lies strictly below ``root``, as written and with its parent resolved."""
    root = os.path.normpath(root)
    norm = os.path.normpath(path)
    if not os.path.isabs(norm) or not norm.startswith(root.rstrip("/") + "/"):
        return False
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(norm))
    return parent == real_root or parent.startswith(real_root.rstrip("/") + "/")


def overlaps(root: str, path: str, holding: bool = True) -> Optional[str]:
    """Why ``path`` (a user's destination) collides with the store at ``root``, or None:
    it is the store, lies inside it, or (``holding``) is a directory that holds it."""
    real_root = os.path.realpath(root)
    for candidate in (os.path.normpath(path), os.path.realpath(path)):
        for base in (os.path.normpath(root), real_root):
            if candidate == base:
                return "it is the store itself (%s)" % root
            if candidate.startswith(base.rstrip("/") + "/"):
                return "it lies inside the store %s" % root
            if holding and base.startswith(candidate.rstrip("/") + "/"):
                return "it holds the store %s" % root
    return None


def refuse_untrusted(path: str, what: str = "data_root") -> None:
    """Refuse ``path`` when it, or any directory leading to it, can be changed by a user
    other than root (or the user running this)."""
    me = os.geteuid()
    for step in _steps(path):
        try:
            st = os.lstat(step)
        except FileNotFoundError:
            return
        problem = _untrusted(st, me)
        if problem:
            raise InvalidInput(
                "%s %s: %s %s; a user who can change it could redirect the store's writes and "
                "deletes through symlinks. Make it owned by root and writable only by its owner "
                "(chown root:root; chmod go-w), or choose another %s"
                % (what, path, step, problem, what), path=step)


def _steps(path: str) -> List[str]:
    """Every prefix of ``path`` as written, then of its resolved form (each once)."""
    out: List[str] = []
    for form in (os.path.normpath(os.path.abspath(path)), os.path.realpath(path)):
        parts = form.split("/")
        for i in range(1, len(parts) + 1):
            step = "/".join(parts[:i]) or "/"
            if step not in out:
                out.append(step)
    return out


def _untrusted(st: os.stat_result, me: int) -> Optional[str]:
    if stat.S_ISLNK(st.st_mode):
        return None if st.st_uid in (0, me) else "is a symlink owned by uid %d" % st.st_uid
    if st.st_uid not in (0, me):
        return "is owned by uid %d" % st.st_uid
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if st.st_mode & stat.S_IWOTH and not sticky:
        return "is writable by every user (mode %04o)" % stat.S_IMODE(st.st_mode)
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0 and not sticky:
        return "is writable by group %d (mode %04o)" % (st.st_gid, stat.S_IMODE(st.st_mode))
    return None
