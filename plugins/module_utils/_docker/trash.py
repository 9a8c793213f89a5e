# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deleting what a layer whites out, off the applier's thread.

On drivers whose layer starts as a copy of its parent (btrfs snapshots, vfs copies) a
whiteout of a directory is a deletion of everything below it: one ``unlink`` per file,
kernel work the applier waited for (a container that removed ``/usr/include``: 8.7k
files).  ``Trash.move`` takes the directories a container layer is known to white out,
before its change stream is applied, and renames each into one directory at the layer's root (the same
filesystem and, on btrfs, the same subvolume: a rename, nothing copied); a worker
thread deletes them there while the applier runs, and the applier, reaching the
whiteout, finds nothing left to delete.  ``settle`` waits for the worker and removes the
trash directory itself, putting back the layer root's times as they were just before
(the trash leaves no trace a walk of the layer could see).

The list is a hint: a path that is not a directory, or that cannot be reached without
following a symlink, is left where it is for the applier (which deletes it, or refuses
the stream, as it would have).  Used for containers only (measured: the containers'
carry 1.15 s -> 0.45-0.7 s; for image layers, whose deletions would run in the very
subvolume the applier is filling and must end before the child's snapshot, no gain).
A container whose trash is not settled is never switched to: every run carries the
containers again (staged ones are dropped first), and ``settle`` runs before the
final ``syncfs``.
"""
from __future__ import annotations

import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import remove_tree
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath

PREFIX = ".strata-trash-"


class Trash:
    """One worker thread deleting moved-aside trees; ``close`` waits for it."""

    def __init__(self) -> None:
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: List[Tuple[str, str, Future, Tuple[os.stat_result, os.stat_result]]] = []

    def move(self, root: str, victims: Iterable[bytes], tag: str) -> int:
        """Move the directories ``victims`` (paths below ``root``) into
        ``<root>/.strata-trash-<tag>`` and start deleting them; how many were moved."""
        trash = PREFIX + tag
        moved = 0
        before = made = os.lstat(root)
        with Beneath(root) as tree:
            trash_fd = -1
            try:
                for rel in victims:
                    parent, _sep, name = rel.rpartition(b"/")
                    try:
                        pfd = tree.dir_fd(parent)
                        st = os.lstat(name, dir_fd=pfd)
                    except (OSError, NotBeneath):
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        continue
                    if trash_fd < 0:
                        before = os.lstat(root)
                        os.mkdir(trash, 0o700, dir_fd=tree.root_fd)
                        made = os.lstat(root)
                        trash_fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                           | os.O_CLOEXEC, dir_fd=tree.root_fd)
                    os.rename(name, str(moved), src_dir_fd=pfd, dst_dir_fd=trash_fd)
                    tree.invalidate(rel)
                    moved += 1
            finally:
                if trash_fd >= 0:
                    os.close(trash_fd)
        if moved:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1)
            path = os.path.join(root, trash)
            self._pending.append((root, trash, self._pool.submit(_empty, path, moved),
                                  (before, made)))
        return moved

    def settle(self, root: Optional[str] = None) -> None:
        """Wait until the trash of ``root`` (every root: None) is gone; the first error
        of the worker is raised here."""
        keep = []
        for entry in self._pending:
            if root is None or entry[0] == root:
                entry[2].result()
                _drop(entry[0], entry[1], *entry[3])
            else:
                keep.append(entry)
        self._pending = keep

    def close(self) -> None:
        """Stop: wait for the worker (its errors are not raised: a failed run's layers
        are pending and go whole on the next run)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = []


def _empty(path: str, count: int) -> None:
    for index in range(count):
        remove_tree(os.path.join(path, str(index)))


def _drop(root: str, trash: str, before: os.stat_result, made: os.stat_result) -> None:
    """The empty trash directory removed, the root's times as if it never was: as the
    applier left them, or as they were before the trash when nothing else changed them."""
    st = os.lstat(root)
    os.rmdir(os.path.join(root, trash))
    if st.st_mtime_ns == made.st_mtime_ns:
        st = before
    os.utime(root, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
