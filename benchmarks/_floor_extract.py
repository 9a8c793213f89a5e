"""The least a Python program does to extract a layer tar durably, with its sha256: the
floor under any Python import, for benchmarks/import_process.py ``--floor``.

    python _floor_extract.py LAYER.tar DEST

Standard library only, as a module on a managed host.  It uses both cores: this process
parses the headers (read at their offsets, data skipped), creates the directories and
symlinks, and hashes the whole stream on a thread; one forked writer process creates
the regular files, copying their data from the tar by offset (``pread``), and sets their
times; a thread starts a ``syncfs`` after every 64 MiB handed over, and one more runs
at the end.  Hardlinks come after the writer is done, directory times last.

It checks nothing: no confinement (names are trusted), no owners (the benchmark's
layer is root's, as this process), no attributes, no header record, no durable record.
Everything the store keeps is extra work on top of this.  Prints one JSON line: the
diff_id, and the counts of files and data bytes written; it fails (status 1) unless the
writer wrote every file and byte the headers name."""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pickle
import struct
import sys
import threading
import traceback

BLOCK = 512
CHUNK = 1 << 20
FLUSH_EVERY = 64 << 20
BATCH = 64
HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _pax(data: bytes) -> dict:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _sep, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key] = value
        pos += length
    return out


def members(fd: int):
    """(name, type, mode, size, mtime, linkname, data offset) of each member."""
    offset, pax, longname, longlink = 0, {}, None, None
    while True:
        block = os.pread(fd, BLOCK, offset)
        if len(block) < BLOCK or block == bytes(BLOCK):
            return
        fields = HEADER.unpack(block)
        kind, size = fields[7], _octal(fields[4])
        data = offset + BLOCK
        offset = data + (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"x", b"L", b"K"):
            payload = os.pread(fd, size, data)
            if kind == b"x":
                pax.update(_pax(payload))
            elif kind == b"L":
                longname = _cstr(payload)
            else:
                longlink = _cstr(payload)
            continue
        name = _cstr(fields[0])
        if fields[9][:6] == b"ustar\0" and _cstr(fields[14]):
            name = _cstr(fields[14]) + b"/" + name
        name = pax.get(b"path", longname or name).rstrip(b"/")
        link = pax.get(b"linkpath", longlink or _cstr(fields[8]))
        mtime = int(float(pax.get(b"mtime", _octal(fields[5]))) * 1e9)
        yield name, kind, _octal(fields[1]) & 0o7777, size, mtime, link, data
        pax, longname, longlink = {}, None, None


def writer(src: str, jobs: int, report: int) -> None:
    """The forked writer: creates each file and copies its data from the tar; at the end
    it reports how many files and bytes it wrote (the parent checks them)."""
    fd = os.open(src, os.O_RDONLY)
    files = written = 0
    with os.fdopen(jobs, "rb", buffering=1 << 16) as pipe:
        while True:
            try:
                batch = pickle.load(pipe)
            except EOFError:
                break
            for name, mode, size, offset, mtime in batch:
                out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                done = 0
                while done < size:
                    done += os.write(out, os.pread(fd, min(size - done, CHUNK), offset + done))
                os.utime(out, ns=(mtime, mtime))
                os.close(out)
                files += 1
                written += done
    os.write(report, json.dumps({"files": files, "bytes": written}).encode())


def hash_all(src: str, result: list) -> None:
    hasher = hashlib.sha256()
    with open(src, "rb", buffering=0) as handle:
        while True:
            piece = handle.read(CHUNK)
            if not piece:
                break
            hasher.update(piece)
    result.append("sha256:" + hasher.hexdigest())


def flush_each(wanted: threading.Event, libc: ctypes.CDLL, root: int) -> None:
    """A syncfs of the output's filesystem each time ``wanted`` is set."""
    while True:
        wanted.wait()
        wanted.clear()
        libc.syncfs(root)


def main() -> None:
    src, dest = os.path.abspath(sys.argv[1]), sys.argv[2]
    os.umask(0)
    os.chdir(dest)
    read, write = os.pipe()
    report_read, report_write = os.pipe()
    child = os.fork()           # before any thread starts
    if child == 0:
        os.close(write)
        os.close(report_read)
        status = 1
        try:
            writer(src, read, report_write)
            status = 0
        except BaseException:  # pylint: disable=broad-except  # said, then the exit status
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(read)
    os.close(report_write)
    jobs = os.fdopen(write, "wb", buffering=1 << 16)
    digest: list = []
    hashing = threading.Thread(target=hash_all, args=(src, digest))
    hashing.start()
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    wanted = threading.Event()
    threading.Thread(target=flush_each, args=(wanted, libc, root), daemon=True).start()
    fd = os.open(src, os.O_RDONLY)
    batch, links, dirs = [], [], []
    files = written = dirty = 0
    for name, kind, mode, size, mtime, link, data in members(fd):
        if kind == b"5":
            os.makedirs(name, 0o755, exist_ok=True)
            os.chmod(name, mode)
            dirs.append((name, mtime))
        elif kind in (b"0", b"\0", b"7"):
            batch.append((name, mode, size, data, mtime))
            files += 1
            written += size
            dirty += size
            if len(batch) >= BATCH:
                pickle.dump(batch, jobs)
                batch = []
            if dirty >= FLUSH_EVERY:
                dirty = 0
                wanted.set()
        elif kind == b"2":
            os.symlink(link, name)
            os.utime(name, ns=(mtime, mtime), follow_symlinks=False)
        elif kind == b"1":
            links.append((link, name))
    pickle.dump(batch, jobs)
    jobs.close()
    _pid, status = os.waitpid(child, 0)
    with os.fdopen(report_read, "rb") as report:
        wrote = report.read()
    if status or json.loads(wrote or b"{}") != {"files": files, "bytes": written}:
        sys.exit("the writer failed (status %d, wrote %s of %d files, %d bytes)"
                 % (status, wrote.decode() or "nothing", files, written))
    for target, name in links:
        os.link(target.lstrip(b"/"), name)
    for name, mtime in sorted(dirs, key=lambda d: len(d[0]), reverse=True):
        os.utime(name, ns=(mtime, mtime))
    hashing.join()
    if libc.syncfs(root) != 0:
        sys.exit("syncfs failed: %s" % os.strerror(ctypes.get_errno()))
    print(json.dumps({"diff_id": digest[0], "files": files, "bytes": written}))


if __name__ == "__main__":
    main()
