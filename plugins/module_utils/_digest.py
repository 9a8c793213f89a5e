# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Content identity as Docker and the OCI image spec define it.

* a digest is ``sha256:<64 lowercase hex>``;
* a layer's ``diff_id`` is the digest of its uncompressed tar;
* a ``chain_id`` names a layer *with everything below it*:
  ``chain(L0) = diff_id(L0)``, ``chain(L0..n) = sha256(chain(L0..n-1) + " " + diff_id(Ln))``;
* an image id is the digest of its config JSON bytes.

Digests are validated before any path is built from them.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable, List, NewType, Optional

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidReference

Digest = NewType("Digest", str)
DiffID = NewType("DiffID", str)
ChainID = NewType("ChainID", str)
ImageID = NewType("ImageID", str)

_DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST_RE.match(value) is not None


def validate_digest(value: object, what: str = "digest") -> Digest:
    """Return ``value`` as a Digest or raise InvalidReference naming ``what``."""
    if not is_digest(value):
        raise InvalidReference(
            "%s %r is not a sha256 digest (expected sha256: followed by 64 lowercase hex digits)"
            % (what, value))
    return Digest(str(value))


def hex_of(digest: str) -> str:
    """The hex part of a validated digest: safe to use as a file name."""
    return validate_digest(digest)[len("sha256:"):]


def sha256_bytes(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def hasher_digest(hasher: "hashlib._Hash") -> Digest:
    return Digest("sha256:" + hasher.hexdigest())


def chain_id(parent: Optional[ChainID], diff_id: DiffID) -> ChainID:
    """The chain id of ``diff_id`` stacked on the layer chain ``parent``."""
    if parent is None:
        return ChainID(diff_id)
    return ChainID(sha256_bytes(("%s %s" % (parent, diff_id)).encode("ascii")))


def chain_ids(diff_ids: Iterable[DiffID]) -> List[ChainID]:
    """Chain ids for a stack of diff ids, bottom to top."""
    out: List[ChainID] = []
    parent: Optional[ChainID] = None
    for diff in diff_ids:
        parent = chain_id(parent, diff)
        out.append(parent)
    return out


def short_id(digest: str) -> str:
    """The 12-hex-digit form Docker shows (``docker image ls``)."""
    return digest.split(":", 1)[-1][:12]
