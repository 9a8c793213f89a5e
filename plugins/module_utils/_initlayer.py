# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The init layer of a container, as Docker's ``<id>-init``.

A runtime needs mount points in the root filesystem it runs on (``/proc``, ``/dev``,
``/sys``, ``/dev/pts``, ``/dev/shm``, the ``/etc/hostname``, ``/etc/hosts`` and
``/etc/resolv.conf`` it binds from the bundle, the working directory, volume
destinations) and creates whichever are missing.  Made in the container's writable
layer, they would count in its size, land in a commit and in a migration's change
set.  So each driver keeps a layer per container between the image and the writable
layer (``Driver.create_container(..., init=...)``), and ``populate`` fills it with
what the image lacks: directories 0755 and empty files 0644, owned by root, their
parents as the image has them (an overlay copy-up, or the full copy's own).

An entry behind a symlink of the image is left alone (never followed out of the
root); the runtime resolves it inside the container as it always does.
"""
from __future__ import annotations

import os
from typing import List, Sequence

from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath


def _mkdir(parent_fd: int, name: bytes, _rel: bytes) -> None:
    os.mkdir(name, 0o755, dir_fd=parent_fd)
    os.chmod(name, 0o755, dir_fd=parent_fd)  # whatever the umask


def _exists(parent_fd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def populate(root: str, entries: Sequence[str]) -> List[str]:
    """Create the ``entries`` (``"dir/"`` or ``"file"``, relative) missing below ``root``;
    returns those created."""
    made = []
    with Beneath(root) as tree:
        for entry in entries:
            rel = os.fsencode(entry.strip("/"))
            if not rel:
                continue
            parent, _sep, name = rel.rpartition(b"/")
            try:
                parent_fd = tree.dir_fd(parent, create=_mkdir)
            except NotBeneath:
                continue
            if _exists(parent_fd, name):
                continue
            if entry.endswith("/"):
                _mkdir(parent_fd, name, rel)
            else:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=parent_fd)
                os.fchmod(fd, 0o644)
                os.close(fd)
            made.append(entry)
    return made
