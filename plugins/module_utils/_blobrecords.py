# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the store remembers about registry blobs, under ``<data_root>/registry/``.

Its three directories and their files' fields: docs/design.md, "Layout of a store".

``compressed``: the blobs known to hold a layer in a compression: the one a push made
(first) and the ones pulls brought (a registry's gzip of the same tar differs from
ours).  A re-push reads its digests here instead of compressing.
``origins``: the repositories a blob was pulled from or pushed to, so a push to
another repository of the same registry mounts it instead of uploading it.
``uploads``: a chunked upload's session, so a killed push continues at the registry's
offset.

All three are caches: each file is written atomically (``_atomic.write_json``) under
the shared lock (a push only reads the store), so two pushes at once can lose each
other's update, which costs an upload, never correctness: every digest read here is
checked against the registry (HEAD, mount answer) or the content (compression) before
it is relied on.  Temp files of a killed write are swept by the next exclusive open.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    makedirs, read_json, write_json)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    hex_of, is_digest, sha256_bytes)

ROOT = "registry"
SUBDIRS = ("compressed", "origins", "uploads")
MAX_ORIGINS = 16


class BlobRecords:
    def __init__(self, data_root: str) -> None:
        self.dir = os.path.join(data_root, ROOT)

    def _path(self, kind: str, name: str) -> str:
        return os.path.join(self.dir, kind, name + ".json")

    def _read(self, kind: str, name: str) -> Optional[Dict[str, Any]]:
        try:
            data = read_json(self._path(kind, name))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write(self, kind: str, name: str, data: Dict[str, Any]) -> None:
        makedirs(os.path.join(self.dir, kind))
        write_json(self._path(kind, name), data)

    # -- (layer, compression) -> blobs
    def compressed(self, diff_id: str, compression: str) -> List[Dict[str, Any]]:
        data = self._read("compressed", "%s-%s" % (hex_of(diff_id), compression))
        if data is None or data.get("diff_id") != diff_id:
            return []
        return [b for b in data.get("blobs") or [] if isinstance(b, dict) and
                is_digest(b.get("digest")) and isinstance(b.get("size"), int)]

    def remember_compressed(self, diff_id: str, compression: str, digest: str, size: int,
                            first: bool = False) -> None:
        blobs = [b for b in self.compressed(diff_id, compression) if b["digest"] != digest]
        entry = {"digest": digest, "size": size}
        blobs = [entry] + blobs if first else blobs + [entry]
        self._write("compressed", "%s-%s" % (hex_of(diff_id), compression),
                    {"diff_id": diff_id, "compression": compression, "blobs": blobs[:8]})

    # -- blob -> repositories it lives in
    def origins(self, digest: str) -> List[str]:
        data = self._read("origins", hex_of(digest))
        if data is None or data.get("digest") != digest:
            return []
        return [str(r) for r in data.get("repositories") or []]

    def remember_origin(self, digest: str, repository: str) -> None:
        known = self.origins(digest)
        if repository in known:
            return
        self._write("origins", hex_of(digest), {
            "digest": digest, "repositories": ([repository] + known)[:MAX_ORIGINS]})

    # -- uploads under way
    @staticmethod
    def upload_key(name: str, diff_id: str, compression: str) -> str:
        return hex_of(sha256_bytes(("%s %s %s" % (name, diff_id, compression)).encode()))

    def upload(self, key: str) -> Optional[Dict[str, Any]]:
        return self._read("uploads", key)

    def remember_upload(self, key: str, data: Dict[str, Any]) -> None:
        self._write("uploads", key, data)

    def forget_upload(self, key: str) -> None:
        try:
            os.unlink(self._path("uploads", key))
        except FileNotFoundError:
            pass
