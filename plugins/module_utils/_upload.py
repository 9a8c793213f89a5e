# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The push side of the OCI distribution protocol, on the same ``Registry`` transport as
pulls (authentication, TLS, proxies, redirect rules are the pull's, with a
``pull,push`` token scope).

* ``HEAD /v2/<repo>/blobs/<digest>``: does the repository have the blob (200/404)?
* ``POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<other>``: 201 means the registry
  linked the blob from another repository (no bytes sent); 202 means it could not and
  opened an ordinary upload session instead, which is then used.
* ``POST /v2/<repo>/blobs/uploads/`` opens a session (202, ``Location``); a small blob
  goes whole in the closing ``PUT <location>?digest=``; a large one in ``PATCH`` chunks
  (``Content-Range``), each answered with the session's next ``Location``, then an empty
  closing ``PUT``.  ``GET <location>`` (204, ``Range: 0-N``) tells where a session stands.
* ``HEAD``/``PUT /v2/<repo>/manifests/<tag>`` for the manifest, last.
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._digest import sha256_bytes
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    DigestMismatch, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    AuthenticationRefused, Registry, RegistryError, join_url)

OCTETS = "application/octet-stream"
_RANGE_RE = re.compile(r"\A(?:bytes=)?0-(\d+)\Z")


class Uploader:
    """Blob and manifest uploads to ``registry``'s repository."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.repository = registry.reference.repository
        self.bytes_sent = 0

    def _url(self, location: Optional[str]) -> str:
        if not location:
            raise RegistryError("registry %s opened an upload without a Location"
                                % self.registry.address)
        # an absolute location on another host is followed anonymously, one that would
        # take an https registry's upload to plain HTTP is refused (Registry._follow)
        return join_url(self.registry.base + "/", location,
                        "registry %s" % self.registry.address)

    @staticmethod
    def _with(url: str, **query: str) -> str:
        parts = urllib.parse.urlsplit(url)
        extra = urllib.parse.urlencode(query)
        return urllib.parse.urlunsplit(parts._replace(
            query=(parts.query + "&" + extra) if parts.query else extra))

    # -- blobs
    def has_blob(self, digest: str) -> bool:
        resp = self.registry.request("/v2/%s/blobs/%s" % (self.repository, digest),
                                     method="HEAD", expect=(200, 404))
        resp.close()
        return resp.status == 200

    def mount(self, digest: str, source: str) -> Tuple[bool, Optional[str]]:
        """(mounted, an upload location the registry opened instead).  A mount the
        registry refuses (401/403: no pull right on ``source``) or cannot find (404) is
        (False, None): the blob is then uploaded, as Docker does."""
        self.registry.extra_scopes = ["repository:%s:pull" % source]
        try:
            resp = self.registry.request(
                "/v2/%s/blobs/uploads/?%s" % (self.repository,
                                              urllib.parse.urlencode({"mount": digest,
                                                                      "from": source})),
                method="POST", body=b"", expect=(201, 202))
        except (AuthenticationRefused, NotFound):
            return False, None
        finally:
            self.registry.extra_scopes = []
        resp.close()                # a small answer: its headers are what counts
        if resp.status == 201:
            return True, None
        return False, self._url(resp.headers.get("Location"))

    def start(self) -> str:
        resp = self.registry.request("/v2/%s/blobs/uploads/" % self.repository, method="POST",
                                     body=b"", expect=(202,))
        resp.close()
        return self._url(resp.headers.get("Location"))

    def offset(self, location: str) -> Optional[Tuple[str, int]]:
        """(location, bytes received) of an upload session, or None when it is gone."""
        try:
            resp = self.registry.request(location, expect=(204, 200))
        except (NotFound, RegistryError):
            return None
        resp.close()
        match = _RANGE_RE.match((resp.headers.get("Range") or "").strip())
        received = int(match.group(1)) + 1 if match else 0
        return self._url(resp.headers.get("Location") or location), received

    def patch(self, location: str, offset: int, data: bytes) -> str:
        resp = self.registry.request(location, method="PATCH", body=data, expect=(202, 204), headers={
            "Content-Type": OCTETS, "Content-Length": str(len(data)),
            "Content-Range": "%d-%d" % (offset, offset + len(data) - 1)})
        resp.close()
        self.bytes_sent += len(data)
        return self._url(resp.headers.get("Location") or location)

    def finish(self, location: str, digest: str, data: bytes = b"") -> None:
        try:
            resp = self.registry.request(self._with(location, digest=digest), method="PUT",
                                         body=data, expect=(201, 204), headers={
                                             "Content-Type": OCTETS,
                                             "Content-Length": str(len(data))})
        except StoreError as exc:
            codes = exc.details.get("codes") or []
            if "DIGEST_INVALID" in codes or "SIZE_INVALID" in codes:
                raise DigestMismatch(
                    "registry %s rejected blob %s for %s (%s): the bytes it received do not "
                    "hash to that digest (damaged on the way?); nothing was tagged, run the "
                    "push again" % (self.registry.address, digest, self.registry.reference.name,
                                    ", ".join(codes)), digest=digest) from exc
            raise
        resp.close()
        self.bytes_sent += len(data)

    def cancel(self, location: str) -> None:
        try:
            self.registry.request(location, method="DELETE", expect=(204, 200, 404)).close()
        except StoreError:
            pass  # the registry expires abandoned sessions itself

    # -- manifests
    def manifest_digest(self, ref: str, accept: str) -> Optional[str]:
        resp = self.registry.request("/v2/%s/manifests/%s" % (self.repository, ref),
                                     method="HEAD", accept=accept, expect=(200, 404))
        resp.close()
        if resp.status != 200:
            return None
        return resp.headers.get("Docker-Content-Digest")

    def put_manifest(self, ref: str, raw: bytes, media_type: str) -> str:
        resp = self.registry.request("/v2/%s/manifests/%s" % (self.repository, ref),
                                     method="PUT", body=raw, expect=(201, 200), headers={
                                         "Content-Type": media_type})
        resp.close()
        self.bytes_sent += len(raw)
        digest = sha256_bytes(raw)
        announced = resp.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch("registry %s stored the manifest for %s:%s as %s, not %s"
                                 % (self.registry.address, self.registry.reference.name, ref,
                                    announced, digest))
        return digest
