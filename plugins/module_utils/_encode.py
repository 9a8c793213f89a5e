# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deterministic layer compression for pushes: the same layer gives the same bytes.

A registry names a blob by the digest of its compressed bytes, so a push that
compressed the same layer differently each time would upload it again each time, and
a resumed upload could not continue from the registry's offset.  Hence:

* ``gzip``: a fixed 10-byte header (no name, mtime 0, XFL 0, OS 255 "unknown", as Go's
  compress/gzip writes it), raw deflate at a fixed level, CRC-32 and size trailer.
  Level 4: on real layers (binaries, headers) zlib's level 6 takes 2.2 times the CPU
  for blobs 3% smaller; podman's default is 5, with a faster deflate than zlib's.  The
  input is cut into fixed 1 MiB blocks compressed on worker threads (zlib releases the
  GIL), each primed with the 32 KiB before it and ended by a sync flush, as pigz does:
  one valid deflate stream, the same bytes whatever the number of threads.
* ``zstd``: the ``zstd`` program at a fixed level, one thread (its multi-threaded
  framing differs), no checksum options changed from the default.
* ``none``: the tar itself.

The bytes also depend on the zlib (or zstd) build, so the digest a push obtains is
recorded per (layer, compression) in the store: a re-push knows its digests without
compressing, and a different result later is simply a different blob.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import threading
import zlib
from collections import deque
from typing import Deque, Iterator, Optional

from ansible_collections.strata.layers.plugins.module_utils._errors import Unsupported

COMPRESSIONS = ("gzip", "zstd", "none")
GZIP_LEVEL = 4
ZSTD_LEVEL = 3
BLOCK = 1 << 20
WINDOW = 32 << 10
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
WORKERS = 2


def encode(chunks: Iterator[bytes], compression: str) -> Iterator[bytes]:
    """The compressed form of the concatenated ``chunks``."""
    if compression == "gzip":
        return _gzip(chunks)
    if compression == "zstd":
        return _zstd(chunks)
    if compression == "none":
        return (c for c in chunks if c)
    raise Unsupported("compression %r is not one of %s" % (compression, ", ".join(COMPRESSIONS)))


def _blocks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` re-cut into BLOCK-sized blocks (the last may be shorter)."""
    pending = bytearray()
    for data in chunks:
        pending += data
        while len(pending) >= BLOCK:
            yield bytes(pending[:BLOCK])
            del pending[:BLOCK]
    if pending:
        yield bytes(pending)


def _deflate(block: bytes, primer: bytes, last: bool) -> bytes:
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                            *((primer,) if primer else ()))
    out = comp.compress(block)
    return out + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _gzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # imported here: a re-push, which compresses nothing, should not pay for it
    from concurrent.futures import ThreadPoolExecutor
    yield GZIP_HEADER
    crc, size = 0, 0
    primer = b""
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="strata-gzip")
    try:
        inflight: Deque = deque()
        previous: Optional[bytes] = None
        for block in _blocks(chunks):
            if previous is not None:
                inflight.append(pool.submit(_deflate, previous, primer, False))
                primer = previous[-WINDOW:]
                while len(inflight) > WORKERS * 2:
                    yield inflight.popleft().result()
            crc = zlib.crc32(block, crc)
            size += len(block)
            previous = block
        inflight.append(pool.submit(_deflate, previous or b"", primer, True))
        while inflight:
            yield inflight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    yield struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def _zstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    program = shutil.which("zstd")
    if program is None:
        raise Unsupported("compression zstd needs the zstd program on this host: install it "
                          "(apt install zstd / dnf install zstd) or use gzip")
    proc = subprocess.Popen([program, "-q", "-c", "-%d" % ZSTD_LEVEL, "-T1", "--no-progress"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    failure: list = []

    def feed() -> None:
        try:
            for data in chunks:
                proc.stdin.write(data)  # type: ignore[union-attr]
        except BaseException as exc:  # re-raised in the consumer below
            failure.append(exc)
        finally:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        while True:
            data = proc.stdout.read(BLOCK)  # type: ignore[union-attr]
            if not data:
                break
            yield data
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        proc.wait()
        feeder.join()
    if failure:
        raise failure[0]
    if proc.returncode != 0:
        raise Unsupported("zstd exited with status %d while compressing" % proc.returncode)
