# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incomplete marks: half-done work is recognisable after a crash.

Before a mutation touches a driver's directories it writes (durably) a mark in
``<data_root>/incomplete/``: the record whose presence means the mutation committed,
and which paths to remove if that record is absent (``if_absent``: roll back) or
present (``if_present``: finish).  The mark is removed last.  When the store is next
opened for writing (under the exclusive lock, so nobody else is at work) every mark
left behind is settled this way; a mark is only removed once its paths are gone, so
a crash during recovery is recovered again.  Which mutation writes which mark, step by
step: docs/design.md, "Crash-safety rules".
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Set

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, fsync_dir, read_json, rename_durable, temp_name, write_json)
from ansible_collections.strata.layers.plugins.module_utils._trust import inside

# remove(driver_name_or_None, absolute_path) removes one path (driver aware)
Remover = Callable[[Optional[str], str], None]


class Mark:
    """One pending mutation; ``done()`` when it committed or was rolled back."""

    def __init__(self, directory: str, data_root: str, op: str) -> None:
        self.path = os.path.join(directory, "%s-%s.json" % (op, temp_name()[len(TEMP_PREFIX):]))
        self.data_root = data_root
        self.data: Dict[str, object] = {"op": op, "record": None, "if_absent": [],
                                        "if_present": []}

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.data_root)

    def set(self, record: Optional[str] = None, if_absent: Optional[List[tuple]] = None,
            if_present: Optional[List[tuple]] = None) -> "Mark":
        """Write (or rewrite) the mark durably; paths are (driver or None, abs path)."""
        if record is not None:
            self.data["record"] = self._rel(record)
        if if_absent is not None:
            self.data["if_absent"] = [[d, self._rel(p)] for d, p in if_absent]
        if if_present is not None:
            self.data["if_present"] = [[d, self._rel(p)] for d, p in if_present]
        write_json(self.path, self.data)
        return self

    def done(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(os.path.dirname(self.path))


class Marks:
    def __init__(self, data_root: str) -> None:
        self.data_root = data_root
        self.dir = os.path.join(data_root, "incomplete")

    def begin(self, op: str) -> Mark:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        return Mark(self.dir, self.data_root, op)

    def pending(self) -> List[str]:
        try:
            return sorted(n for n in os.listdir(self.dir) if n.endswith(".json"))
        except FileNotFoundError:
            return []

    def settle(self, remove: Remover, drivers: Iterable[str] = ()) -> List[str]:
        """Roll back or finish every mark left by a crash; return what was done.

        A mark that names a path outside the store (or an unknown driver) is never
        acted on: it is set aside as ``*.rejected`` and reported."""
        actions = []
        for name in self.pending():
            path = os.path.join(self.dir, name)
            try:
                data = read_json(path)
            except (ValueError, OSError):
                data = None  # a mark torn by the crash itself: its mutation never began
            problem = self.invalid(data, set(drivers)) if isinstance(data, dict) else None
            if problem:
                rename_durable(path, path + ".rejected")
                actions.append("rejected mark %s: %s; nothing it names was touched"
                               % (name, problem))
                continue
            if isinstance(data, dict):
                record = data.get("record")
                present = bool(record) and os.path.exists(os.path.join(self.data_root, record))
                for driver, rel in data.get("if_present" if present else "if_absent") or []:
                    target = os.path.join(self.data_root, rel)
                    if os.path.lexists(target):
                        remove(driver, target)
                        actions.append("removed %s" % rel)
                actions.append("%s %s" % ("finished" if present else "rolled back",
                                          data.get("op")))
            os.unlink(path)
        if actions:
            fsync_dir(self.dir)
        return actions

    def invalid(self, data: Dict[str, object], drivers: Set[str]) -> Optional[str]:
        """Why a mark must not be acted on (a path it names leaves the store), or None."""
        record = data.get("record")
        entries = [[None, record]] if record is not None else []
        for key in ("if_absent", "if_present"):
            listed = data.get(key) or []
            if not isinstance(listed, list):
                return "its %s is not a list" % key
            entries += listed
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2:
                return "it holds an entry that is not [driver, path]: %r" % (entry,)
            driver, rel = entry
            if driver is not None and driver not in drivers:
                return "it names an unknown driver %r" % (driver,)
            if not isinstance(rel, str) or os.path.isabs(rel) or \
                    not inside(self.data_root, os.path.join(self.data_root, rel)):
                return "it names %r, which is not inside the store" % (rel,)
        return None
