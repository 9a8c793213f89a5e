# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a regular file's bytes, never through a symlink: in chunks, or as a digest.

Used wherever the store reads files it did not just write (container changes, build
context, migration checks): ``O_NOFOLLOW`` on the last component, and a file that
shrinks while read is reported instead of giving a short stream.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterator

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt

CHUNK = 1 << 20


def chunks(path: bytes, size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of the file at ``path``, in chunks."""
    yield from fd_chunks(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), size, path)


def fd_chunks(fd: int, size: int, path: bytes) -> Iterator[bytes]:
    """Exactly ``size`` bytes read from ``fd`` (the file at ``path``), which is closed."""
    try:
        left = size
        while left:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                raise Corrupt("%s shrank while being read" % path.decode("utf-8", "replace"))
            left -= len(data)
            yield data
    finally:
        os.close(fd)


def sha256(path: bytes) -> str:
    """Hex sha256 of the file at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


def fd_sha256(fd: int) -> str:
    """Hex sha256 of the whole file open as ``fd`` (read from its start, by offset)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        data = os.pread(fd, CHUNK, offset)
        if not data:
            return digest.hexdigest()
        digest.update(data)
        offset += len(data)
