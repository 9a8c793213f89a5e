"""Layer tars built at test time, with full control over every header.

``LayerTar`` writes with the standard library's tarfile (headers we choose) and can
append raw bytes for the hostile cases tarfile refuses to produce.
"""
from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import time
from typing import Dict, Optional

MTIME = 1700000000


class LayerTar:
    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def _info(self, name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0,
              mtime: int = MTIME) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = mtime
        return info

    def dir(self, name: str, mode: int = 0o755, **kw) -> "LayerTar":
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644,
             xattrs: Optional[Dict[str, str]] = None, **kw) -> "LayerTar":
        info = self._info(name, tarfile.REGTYPE, mode, **kw)
        info.size = len(data)
        if xattrs:
            info.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
        self.tar.addfile(info, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str, **kw) -> "LayerTar":
        info = self._info(name, tarfile.SYMTYPE, 0o777, **kw)
        info.linkname = target
        self.tar.addfile(info)
        return self

    def hardlink(self, name: str, target: str, **kw) -> "LayerTar":
        info = self._info(name, tarfile.LNKTYPE, 0o644, **kw)
        info.linkname = target
        self.tar.addfile(info)
        return self

    def device(self, name: str, major: int, minor: int, char: bool = True, **kw) -> "LayerTar":
        info = self._info(name, tarfile.CHRTYPE if char else tarfile.BLKTYPE, 0o600, **kw)
        info.devmajor, info.devminor = major, minor
        self.tar.addfile(info)
        return self

    def fifo(self, name: str, **kw) -> "LayerTar":
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, 0o600, **kw))
        return self

    def whiteout(self, path: str) -> "LayerTar":
        parent, _sep, name = path.rpartition("/")
        return self.file((parent + "/" if parent else "") + ".wh." + name, mode=0o600)

    def opaque(self, directory: str) -> "LayerTar":
        return self.file(directory.rstrip("/") + "/.wh..wh..opq", mode=0o600)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def write(path, data: bytes, compression: str = "plain") -> str:
    if compression == "gzip":
        data = gzip.compress(data, mtime=0)
    elif compression == "zstd":
        data = subprocess.run(["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE,
                              check=True).stdout
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


def now() -> int:
    return int(time.time())
