# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only access to an image's root filesystem without mounting it.

Resolves a path the way the kernel would inside the image (symlinks followed but
clamped to the image's root, as in a chroot), looking through the layer directories of
the store's driver: overlay family top layer first, honouring whiteouts and opaque
directories; full-copy drivers in the top layer's complete root.  Used by the builder
(COPY destinations and ``--chown`` names, ``COPY --from``, USER) and never writes.
"""
from __future__ import annotations

import os
import stat
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound
from ansible_collections.strata.layers.plugins.module_utils._safepath import (
    NotBeneath, resolve_scoped)
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Driver

OPAQUE = "trusted.overlay.opaque"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class ImageView:
    """The merged root filesystem of ``chain`` (bottom to top) as ``driver`` stores it."""

    def __init__(self, driver: Driver, chain: Sequence[ChainID]) -> None:
        self.layered = driver.whiteouts == "device"
        if not chain:
            self.dirs: List[bytes] = []
        elif self.layered:
            self.dirs = [os.fsencode(driver.layer_files(c)) for c in reversed(chain)]
        else:
            self.dirs = [os.fsencode(driver.layer_files(chain[-1]))]

    # ------------------------------------------------------------------ lookup
    def locate(self, rel: bytes) -> Optional[Tuple[bytes, os.stat_result]]:
        """(real path, stat) of ``rel`` (no symlink followed at its last component).

        ``rel`` must already be resolved in its parents (see ``resolve``)."""
        parts = [p for p in rel.split(b"/") if p]
        for top in self.dirs:
            found = self._in_layer(top, parts)
            if found == "hidden":
                return None
            if found is not None:
                return found  # type: ignore[return-value]
        return None

    def _in_layer(self, top: bytes, parts: List[bytes]) -> "object":
        """The entry in one layer dir, ``hidden`` if this layer hides it, else None."""
        path = top
        opaque_above = False
        for index, part in enumerate(parts):
            path = path + b"/" + part
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                # below an opaque directory of this layer, lower layers are hidden
                return "hidden" if opaque_above else None
            if self.layered and _is_whiteout(st):
                return "hidden"
            if index == len(parts) - 1:
                return path, st
            if not stat.S_ISDIR(st.st_mode):
                return "hidden"  # a non-directory here hides what lower layers have below
            opaque_above = opaque_above or (self.layered and _opaque(path))
        return (top, os.lstat(top)) if not parts else None

    def resolve(self, path: str, follow_last: bool = True) -> bytes:
        """``path`` resolved inside the image: every symlink followed, clamped to its root."""
        def link_target(rel: bytes) -> Optional[bytes]:
            found = self.locate(rel)
            if found is None or not stat.S_ISLNK(found[1].st_mode):
                return None
            return os.readlink(found[0])

        try:
            return b"/".join(resolve_scoped(os.fsencode(path), link_target, follow_last))
        except NotBeneath as exc:
            raise InvalidInput("too many symlinks resolving %s in the image" % path) from exc

    def lstat(self, rel: bytes) -> Optional[os.stat_result]:
        found = self.locate(rel)
        return found[1] if found else None

    def read(self, path: str, limit: int = 1 << 20) -> Optional[bytes]:
        found = self.locate(self.resolve(path))
        if found is None or not stat.S_ISREG(found[1].st_mode):
            return None
        with open(found[0], "rb") as handle:
            return handle.read(limit)

    def listdir(self, rel: bytes) -> List[bytes]:
        """Names in directory ``rel`` of the merged view."""
        names: Dict[bytes, bool] = {}
        parts = [p for p in rel.split(b"/") if p]
        for top in self.dirs:
            found = self._in_layer(top, parts) if parts else (top, os.lstat(top))
            if found == "hidden":
                break
            if found is None:
                continue
            real, st = found  # type: ignore[misc]
            if not stat.S_ISDIR(st.st_mode):
                break
            for name in os.listdir(real):
                names.setdefault(name, not (self.layered and _is_whiteout(os.lstat(real + b"/" + name))))
            if self.layered and _opaque(real):
                break
        return sorted(n for n, visible in names.items() if visible)

    def walk(self, rel: bytes) -> Iterator[Tuple[bytes, bytes, os.stat_result]]:
        """(relative path, real path, stat) of ``rel`` and everything below it,
        a directory before its children (pre-order, names sorted)."""
        found = self.locate(rel)
        if found is None:
            return
        yield rel, found[0], found[1]
        if stat.S_ISDIR(found[1].st_mode):
            yield from self._below(rel)

    def _below(self, top: bytes) -> Iterator[Tuple[bytes, bytes, os.stat_result]]:
        # a stack of listings, not recursion: the applier accepts paths up to PATH_MAX,
        # directories nested ~2000 deep, deeper than Python's recursion limit
        stack = [(top, iter(self.listdir(top)))]
        while stack:
            parent, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                continue
            rel = parent + b"/" + name if parent else name
            found = self.locate(rel)
            if found is None:
                continue
            yield rel, found[0], found[1]
            if stat.S_ISDIR(found[1].st_mode):
                stack.append((rel, iter(self.listdir(rel))))

    # ------------------------------------------------------------------ users
    def user_ids(self, spec: str) -> Tuple[int, int]:
        """uid and gid for ``user[:group]`` (names looked up in the image's files);
        a numeric user missing from /etc/passwd gets gid 0, as Docker gives it."""
        user, _sep, group = spec.partition(":")
        uid, gid = self._user(user)
        if group:
            gid = self._group(group)
        return uid, gid

    def _user(self, name: str) -> Tuple[int, int]:
        rows = self._rows("/etc/passwd", 4)
        for fields in rows:
            if fields[0] == name or (name.isdigit() and fields[2] == name):
                return int(fields[2]), int(fields[3])
        if name.isdigit():
            return int(name), 0
        raise NotFound("user %r is not in the image's /etc/passwd" % name)

    def _group(self, name: str) -> int:
        if name.isdigit():
            return int(name)
        for fields in self._rows("/etc/group", 3):
            if fields[0] == name:
                return int(fields[2])
        raise NotFound("group %r is not in the image's /etc/group" % name)

    def _rows(self, path: str, width: int) -> List[List[str]]:
        data = self.read(path) or b""
        rows = []
        for line in data.decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if len(fields) >= width and all(f.isdigit() for f in fields[2:width]):
                rows.append(fields)
        return rows


def _opaque(path: bytes) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False
