# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing file data that keeps holes as holes.

A tar has no notion of a hole: a sparse file (a VM disk, a database's preallocated
file) travels as its zeros.  Written back as they come, a 10 GiB file with 1 MiB of data
takes 10 GiB, and a commit or a migration of a container holding one fails on a small
filesystem although the container itself fits.  So the applier (and the exporter)
write through ``SparseWriter``: every ``HOLE``-aligned window of zeros is skipped with
a seek, which the filesystem turns into a hole, and the file's size is set at the end.
The bytes read back are the same; only the allocation differs (as ``cp --sparse=auto``
and GNU tar ``-S`` on extraction do).
"""
from __future__ import annotations

import os

HOLE = 64 << 10
_ZEROS = bytes(HOLE)


class SparseWriter:
    """Writes to ``fd`` from its current offset, seeking over windows of zeros.

    Windows are aligned to the file offset; the bytes of a window that a call ends
    inside are kept (at most HOLE) until the next call completes it, so the pieces a
    stream happens to come in do not decide what becomes a hole."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = os.lseek(fd, 0, os.SEEK_CUR)
        self.carry = b""
        self.pending = False        # the data ends in a hole not yet given a size

    def write(self, data: "bytes | memoryview") -> None:
        view = memoryview(data)
        if self.carry:
            need = HOLE - (self.pos + len(self.carry)) % HOLE
            if len(view) < need:
                self.carry += view.tobytes()
                return
            self._window(memoryview(self.carry + view[:need].tobytes()))
            self.carry = b""
            view = view[need:]
        start = 0
        while start < len(view):
            end = start + HOLE - self.pos % HOLE
            if end > len(view):
                self.carry = view[start:].tobytes()
                return
            self._window(view[start:end])
            start = end

    def _window(self, window: memoryview) -> None:
        if self._zero(window):
            self.pos += len(window)
            os.lseek(self.fd, self.pos, os.SEEK_SET)
            self.pending = True
        else:
            self._write_all(window)

    @staticmethod
    def _zero(window: memoryview) -> bool:
        # a whole window only (a partial one is a block a write fills anyway); its first
        # and last bytes reject data cheaply before the full comparison
        return len(window) == HOLE and window[0] == 0 and window[-1] == 0 and \
            window.tobytes() == _ZEROS

    def _write_all(self, view: memoryview) -> None:
        while view:
            done = os.write(self.fd, view)
            self.pos += done
            view = view[done:]
        self.pending = False

    def finish(self) -> None:
        """Write what is kept of the last window; give the file its size when it ends
        in a hole."""
        if self.carry:
            self._write_all(memoryview(self.carry))
            self.carry = b""
        if self.pending:
            os.ftruncate(self.fd, self.pos)
            self.pending = False
