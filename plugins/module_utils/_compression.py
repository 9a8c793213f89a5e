# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layer streams: plain, gzip or zstd, told apart by their magic bytes.

A ``DecodedStream`` hands out uncompressed chunks and, in the same pass, hashes and
counts the *compressed* bytes it consumed (the blob digest a registry or an OCI
manifest names).  gzip is decoded with zlib, in bounded steps so a bomb cannot grow
memory; zstd through the ``zstd`` program (the standard library has no zstd before
Python 3.14), fed by a thread so that the compressed digest is still computed here.
"""
from __future__ import annotations

import errno
import hashlib
import os
import queue
import select
import shutil
import stat
import subprocess
import threading
import zlib
from typing import Callable, Optional

from ansible_collections.strata.layers.plugins.module_utils._digest import Digest, hasher_digest
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._tarformat import (
    BLOCK, HashedSource, checksum_ok)

CHUNK = 1 << 20
AHEAD = 4           # chunks a ReadAhead may hold: at most 4 MiB more memory
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"

RawRead = Callable[[int], bytes]


def detect(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC) and len(head) > 3 and head[3:4] in b"123456789":
        return "bzip2"
    return "plain"


def tar_header(block: bytes) -> bool:
    """True when ``block`` starts with a tar header (512 bytes with a valid checksum)."""
    return len(block) >= BLOCK and block[:BLOCK] != bytes(BLOCK) and checksum_ok(block[:BLOCK])


class RangeReader:
    """Reads ``size`` bytes of an open file from ``offset`` with pread (an archive member)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd = fd
        self.pos = offset
        self.left = size

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        data = os.pread(self.fd, min(n, self.left, CHUNK), self.pos)
        if not data:
            raise Corrupt("the archive ends before the member it names (truncated archive)")
        self.pos += len(data)
        self.left -= len(data)
        return data


class ReadAhead(HashedSource):
    """The chunks of ``source`` pulled, decoded and hashed (sha256) by a worker thread up
    to AHEAD chunks ahead of the caller.

    The read, the decompression and the hash all release the GIL, so they run on the
    second core while the applier parses and writes the previous chunks, and the applier
    never waits for a hash of its own (on a loaded machine every such hand-off waited
    for the worker to be scheduled).  An error of the source is raised by ``chunk``
    where the chunk it stopped would have been handed out.  ``close`` stops the worker
    before the caller closes what it reads from."""

    def __init__(self, source: Callable[[], bytes], what: str) -> None:
        self._source = source
        self._queue: "queue.Queue[tuple]" = queue.Queue(AHEAD)
        self._hasher = hashlib.sha256()
        self._handed = self._hasher.copy()
        self._stopping = False
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="strata-read-ahead",
                                        daemon=True)
        self._thread.start()
        self.what = what

    def _run(self) -> None:
        try:
            while not self._stopping:
                data = self._source()
                self._hasher.update(data)
                self._queue.put((data, self._hasher.copy()))
                if not data:
                    return
        except BaseException as exc:  # pylint: disable=broad-except  # raised by chunk()
            self._queue.put((exc, None))

    def chunk(self) -> bytes:
        if self._ended:
            return b""
        data, hashed = self._queue.get()
        if hashed is None:
            self._ended = True
            raise data
        self._handed = hashed
        if not data:
            self._ended = True
        return data

    def hashed(self) -> "hashlib._Hash":
        return self._handed

    def close(self) -> None:
        self._stopping = True
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()      # a worker blocked on a full queue goes on
            except queue.Empty:
                pass
            self._thread.join(0.01)


class DecodedStream:
    """Uncompressed chunks of a layer stream plus the digest of the raw bytes."""

    def __init__(self, raw_read: RawRead, what: str = "layer",
                 owned_fd: Optional[int] = None, read_ahead: bool = False) -> None:
        """``read_ahead``: decode and hash on a worker thread (``ReadAhead``); only for a
        source that never blocks (a regular file), read by nothing else meanwhile."""
        self.what = what
        self._ahead: Optional[ReadAhead] = None
        self._owned_fd = owned_fd
        self._raw_read = raw_read
        self._raw_hasher: Optional["hashlib._Hash"] = hashlib.sha256()
        self._head = self._take_head(512)
        # a plain tar begins with its first member's name, which may well start with
        # "BZh9" or the gzip magic: a block with a valid tar checksum is a tar
        self.compression = "plain" if tar_header(self._head) else detect(self._head)
        if self.compression == "plain":
            # the raw bytes are the uncompressed bytes, which the tar reader hashes
            # already: hashing them here too would double the cost of a plain import
            self._raw_hasher = None
        if self.compression in ("xz", "bzip2"):
            raise Unsupported("%s is %s-compressed; layers may be plain, gzip or zstd tars "
                              "(recompress it with gzip or zstd)" % (what, self.compression))
        self._proc: Optional[subprocess.Popen] = None
        self._feeder: Optional[threading.Thread] = None
        self._feed_error: Optional[BaseException] = None
        if not self._head:
            raise Corrupt("%s is empty: not a tar stream" % what)
        if self.compression == "gzip":
            self._inflate: Optional["zlib._Decompress"] = zlib.decompressobj(31)
            self._gzip_trailer = False
            self.chunk = self._gzip_chunk
        elif self.compression == "zstd":
            self._start_zstd()
            self.chunk = self._zstd_chunk
        else:
            self.chunk = self._plain_chunk
        if read_ahead:
            self._ahead = ReadAhead(self.chunk, what)
            self.chunk = self._ahead.chunk

    def _take_head(self, n: int) -> bytes:
        head = b""
        while len(head) < n:
            data = self._take(n - len(head))
            if not data:
                break
            head += data
        return head

    def _take(self, n: int) -> bytes:
        data = self._raw_read(n)
        if data:
            if self._raw_hasher is not None:
                self._raw_hasher.update(data)
        return data

    # -- plain
    def _plain_chunk(self) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return self._take(CHUNK)

    # -- gzip
    def _gzip_chunk(self) -> bytes:
        while True:
            inflate = self._inflate
            if inflate is not None and inflate.unconsumed_tail:
                data = inflate.unconsumed_tail
            elif self._head:
                data, self._head = self._head, b""
            else:
                data = self._take(CHUNK)
            if not data:
                if inflate is not None:
                    raise Corrupt("%s: the gzip stream is truncated" % self.what)
                return b""
            if inflate is None:
                # Between members: concatenated gzip members are one stream (as gzip -c a b
                # writes); zero padding after the last member is ignored, as gzip does;
                # anything else is refused, as Go's reader (Docker's) refuses it.
                if self._gzip_trailer or data[0] == 0:
                    if data.strip(b"\0"):
                        raise Corrupt("%s: trailing data after the end of the gzip stream"
                                      % self.what)
                    self._gzip_trailer = True
                    continue
                if data[0] != GZIP_MAGIC[0]:
                    raise Corrupt("%s: trailing data after the end of the gzip stream" % self.what)
                inflate = self._inflate = zlib.decompressobj(31)
            try:
                out = inflate.decompress(data, CHUNK)
            except zlib.error as exc:
                raise Corrupt("%s: the gzip stream is corrupt (%s)" % (self.what, exc)) from exc
            if inflate.eof:
                self._head = inflate.unused_data
                self._inflate = None
            if out:
                return out

    # -- zstd
    def _start_zstd(self) -> None:
        program = shutil.which("zstd")
        if program is None:
            raise Unsupported("%s is zstd-compressed and the zstd program is not installed on "
                              "this host: install it (apt install zstd / dnf install zstd) and "
                              "run again" % self.what)
        self._proc = subprocess.Popen([program, "-d", "-c", "-q", "--no-progress"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, bufsize=0)
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        stdin = self._proc.stdin  # type: ignore[union-attr]
        try:
            data, self._head = self._head, b""
            while data:
                stdin.write(data)
                data = self._take(CHUNK)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # reported by the reading side
            self._feed_error = exc
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _zstd_chunk(self) -> bytes:
        data = self._proc.stdout.read(CHUNK)  # type: ignore[union-attr]
        if data:
            return data
        self._finish_zstd()
        return b""

    def _finish_zstd(self) -> None:
        proc: subprocess.Popen = self._proc  # type: ignore[assignment]
        if self._feeder is not None:
            self._feeder.join()
        rc = proc.wait()
        err = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
        if self._feed_error is not None:
            if isinstance(self._feed_error, StoreError):
                raise self._feed_error
            raise Corrupt("%s: reading the zstd stream failed (%s)" % (self.what, self._feed_error))
        if rc != 0:
            raise Corrupt("%s: the zstd stream is corrupt or truncated (%s)"
                          % (self.what, err or "zstd exited with %d" % rc))

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        if self._owned_fd is not None:
            os.close(self._owned_fd)
            self._owned_fd = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._feeder is not None:
            self._feeder.join(timeout=5)
        for pipe in (self._proc.stdout, self._proc.stderr) if self._proc else ():
            if pipe is not None:
                pipe.close()

    def drain_raw(self) -> None:
        """Hash whatever compressed bytes are left (only a plain stream can have some)."""
        if self._ahead is not None:
            while self.chunk():
                pass
        elif self.compression == "plain":
            while self._plain_chunk():
                pass

    def compressed_digest(self) -> Optional[Digest]:
        """Digest of the compressed bytes; None for a plain stream (it is the diff_id)."""
        if self._raw_hasher is None:
            return None
        return hasher_digest(self._raw_hasher)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))


STREAM_MAX = 8 << 30
STREAM_WAIT = 300.0


def is_stream(path: str) -> bool:
    """Whether ``path`` is a FIFO or character device: a source read as a stream only."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def open_stream(path: str, what: str, wait: float = STREAM_WAIT) -> DecodedStream:
    """A DecodedStream over a FIFO or character device (``format: layer`` only).

    Nothing blocks without a deadline: the open is non-blocking (a FIFO without a writer
    would block open(2) forever) and every read first polls for data for at most
    ``wait`` seconds; the caller bounds the size (``max_size``, STREAM_MAX by default),
    so /dev/zero ends too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise StoreError("cannot read %s: %s" % (what, exc.strerror)) from exc
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)

    def read(n: int) -> bytes:
        # a FIFO no writer has opened yet polls as nothing (not as end-of-file) on Linux
        while True:
            if not poller.poll(wait * 1000):
                raise InvalidInput("%s sent no data for %g seconds: gave up (is anything "
                                   "writing to it?)" % (what, wait))
            try:
                return os.read(fd, n)
            except BlockingIOError:
                continue

    try:
        return DecodedStream(read, what=what, owned_fd=fd)
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: str, what: Optional[str] = None) -> int:
    """A read descriptor of the regular file ``path`` (a symlink to one is fine).

    Anything else is refused before a byte is read: /dev/zero is an endless read and a
    FIFO a read that may never start, either of them holding the store's lock.  The
    open itself cannot block (O_NONBLOCK: a FIFO without a writer would block open(2));
    the check is on the opened descriptor, so no rename can swap the file in between."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:        # a socket (or a device without its driver)
            _refuse_kind(os.stat(path).st_mode, what or path)
        raise StoreError("cannot read %s: %s" % (what or path, exc.strerror)) from exc
    try:
        _refuse_kind(os.fstat(fd).st_mode, what or path)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd


def _refuse_kind(mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise InvalidInput("%s is %s, not a regular file: refused (its size is unknown and "
                           "reading it may never end); copy it to a file first" % (what, kind))


def read_head(path: str, size: int = 16) -> bytes:
    """The first ``size`` bytes of the regular file ``path`` (format detection)."""
    fd = open_regular(path)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def open_file(path: str, what: Optional[str] = None, read_ahead: bool = False) -> DecodedStream:
    """A DecodedStream over a regular file (closing the stream closes the file), read
    ahead on a worker thread with ``read_ahead`` (see ``ReadAhead``).

    The content is bound to what was read: at end of file the file must still have the
    size, mtime and ctime it had when opened, or the stream fails (a file rewritten in
    place while it was read would give digests of content it never held as a whole)."""
    fd = open_regular(path, what)
    try:
        opened = os.fstat(fd)
        regular = stat.S_ISREG(opened.st_mode)   # a pipe's times move with every write

        def read(n: int) -> bytes:
            data = os.read(fd, n)
            if not data and regular:
                _refuse_changed(fd, opened, what or path)
            return data

        return DecodedStream(read, what=what or path, owned_fd=fd, read_ahead=read_ahead)
    except BaseException:
        os.close(fd)
        raise


def _refuse_changed(fd: int, opened: os.stat_result, what: str) -> None:
    now = os.fstat(fd)
    if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != \
            (opened.st_size, opened.st_mtime_ns, opened.st_ctime_ns):
        raise InvalidInput("%s changed while it was being read (it was written to meanwhile); "
                           "nothing was kept from it. Run again once whatever writes it has "
                           "finished" % what)
