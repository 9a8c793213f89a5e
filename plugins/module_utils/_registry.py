# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pull side of the OCI distribution protocol, over the standard library's HTTP client.

What a pull asks of a registry, and what is verified:

* ``GET /v2/<repo>/manifests/<tag|digest>`` with an ``Accept`` naming the OCI index and
  manifest and the Docker schema 2 list and manifest.  The body's sha256 must equal the
  digest of the reference (``@digest``) and the ``Docker-Content-Digest`` header when the
  registry sends one.  An index (or Docker list) is resolved to one platform's manifest,
  fetched by digest and verified the same way, plus its size against the descriptor.
* ``GET /v2/<repo>/blobs/<digest>`` for the config (read whole, verified) and the layers,
  which are exposed as a raw ``read(n)`` so the store decompresses, hashes and applies
  them in one pass; the byte count is checked against the descriptor here and the
  digest by the store (or by ``download`` when a layer goes to a file first).

Authentication follows the registry's ``WWW-Authenticate`` challenge: ``Bearer``
(a token from the realm, for ``repository:<repo>:pull``, with the credentials as basic
auth when given) or ``Basic``.  Once a scheme is known it is sent with every request,
so a pull costs one extra round trip, not one per blob; an expired token is renewed
on the next 401.  Redirects (blob storage elsewhere) are followed, and the
``Authorization`` header is dropped as soon as the host changes: a registry's token
must never reach a storage host.

Every failure is a ``StoreError`` saying what went wrong in the user's terms: the
address that is unreachable, the tag or repository that is unknown, the credentials
that were refused, the certificate that did not verify (and ``ca_path``).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._archive import (
    INDEX_TYPES, MANIFEST_TYPES, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX,
    MT_OCI_MANIFEST)
from ansible_collections.strata.layers.plugins.module_utils._compression import CHUNK
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    Digest, is_digest, sha256_bytes)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, InvalidReference, NotFound, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    Platform, json_object, pick_platform, platform_of)
from ansible_collections.strata.layers.plugins.module_utils._imageref import (
    normalize_tag, split_reference)
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import loads
from ansible_collections.strata.layers.plugins.module_utils._regsettings import (
    Credentials, proxy_for)

MANIFEST_ACCEPT = ", ".join((MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST))
MT_DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                     "application/vnd.docker.distribution.manifest.v1+prettyjws")
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json")
LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar",
               "application/vnd.oci.image.layer.v1.tar+gzip",
               "application/vnd.oci.image.layer.v1.tar+zstd",
               "application/vnd.docker.image.rootfs.diff.tar",
               "application/vnd.docker.image.rootfs.diff.tar.gzip")
FOREIGN_MARKERS = ("foreign", "nondistributable")
MAX_MANIFEST = 4 << 20
MAX_CONFIG = 16 << 20
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 65536
USER_AGENT = "strata.layers-image_pull/1"
# Docker Hub's API lives on another host than the name users write.
HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
HUB_API = "registry-1.docker.io"
_COMPONENT_RE = re.compile(r"\A[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*\Z")
# WWW-Authenticate tokens, each anchored where the previous one ended (see parse_challenges)
_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^\s,"]*))')
_SCHEME_RE = re.compile(r'([A-Za-z][A-Za-z0-9_.+-]*)(?=\s|,|$)')
_SKIP_RE = re.compile(r'[^,]*,?')
_SEPARATORS_RE = re.compile(r'[\s,]*')
_TOKEN_RE = re.compile(r"\A[\x21-\x7e]+\Z")    # visible ASCII: what a header value may carry
MAX_CHALLENGES = 8
MAX_HEADER = 8192
RawRead = Callable[[int], bytes]


class RegistryError(StoreError):
    """A registry could not be talked to, or answered with an error."""


class Unreachable(RegistryError):
    """No connection to the registry (refused, timed out, name unknown, reset)."""


class AuthenticationRefused(RegistryError):
    """The registry (or its token service) refused the credentials, or needs some."""


class TLSFailure(RegistryError):
    """The TLS handshake failed: an unverifiable certificate, or no TLS at all."""


# ---------------------------------------------------------------------- references
@dataclass(frozen=True)
class Reference:
    """``REGISTRY/REPOSITORY[:TAG|@DIGEST]`` taken apart; ``tag`` is None for a digest."""

    registry: str
    repository: str
    tag: Optional[str] = None
    digest: Optional[Digest] = None

    @property
    def name(self) -> str:
        return "%s/%s" % (self.registry, self.repository)

    @property
    def ref(self) -> str:
        """What goes after ``/manifests/``."""
        return str(self.digest or self.tag)

    def __str__(self) -> str:
        return "%s@%s" % (self.name, self.digest) if self.digest else "%s:%s" % (self.name, self.tag)

    def tag_name(self) -> Optional[str]:
        """The store tag a pull by tag points at the image (None for a pull by digest)."""
        return normalize_tag("%s:%s" % (self.name, self.tag)) if self.digest is None else None


def _has_registry(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first.startswith("[")


def parse_reference(value: str) -> Reference:
    """Parse ``REGISTRY/REPOSITORY[:TAG|@DIGEST]``; the registry host is required."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidReference("name is empty: give REGISTRY/REPOSITORY[:TAG|@DIGEST]")
    value = value.strip()
    digest: Optional[Digest] = None
    if "@" in value:
        value, raw_digest = value.split("@", 1)
        digest = _reference_digest(raw_digest, value)
    first = value.split("/", 1)[0]
    if "/" not in value or not _has_registry(first):
        raise InvalidReference(
            "name %r names no registry: give REGISTRY/REPOSITORY[:TAG|@DIGEST] with the "
            "registry's host (and port), e.g. registry.example.com:5000/%s; no default "
            "registry is assumed" % (value, value))
    name, tag = split_reference(value)
    registry, repository = name.split("/", 1)
    _check_port(registry, value)
    if registry in HUB_NAMES and "/" not in repository:
        repository = "library/" + repository
    for component in repository.split("/"):
        if not _COMPONENT_RE.match(component):
            raise InvalidReference("repository %r in %r is not valid: lowercase letters, digits "
                                   "and separators (. _ -)" % (repository, value))
    return Reference(registry=registry, repository=repository,
                     tag=None if digest else tag, digest=digest)


def _check_port(registry: str, value: str) -> None:
    """A registry port must be 1-65535 (the name pattern allows any digits)."""
    host_port = registry.rsplit("]", 1)[-1]
    if ":" in host_port:
        port = host_port.rsplit(":", 1)[1]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidReference("registry %s in %r has port %s, out of range (1-65535)"
                                   % (registry, value, port))


def _reference_digest(raw: str, name: str) -> Digest:
    if raw.split(":", 1)[0] in ("sha384", "sha512"):
        raise Unsupported("%s@%s: only sha256 digests are supported" % (name, raw))
    if not is_digest(raw):
        raise InvalidReference("digest %r of %s is not sha256: followed by 64 lowercase hex "
                               "digits" % (raw, name))
    return Digest(raw)


# ---------------------------------------------------------------------- manifests
@dataclass
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: List[str] = field(default_factory=list)


@dataclass
class Manifest:
    """One image manifest (verified), and how its name resolved to it."""

    raw: bytes
    digest: Digest
    media_type: str
    config: Descriptor
    layers: List[Descriptor]
    top_digest: Digest
    platform: Optional[Platform] = None


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise Corrupt("%s is not a descriptor object" % what)
    digest, size = value.get("digest"), value.get("size")
    if isinstance(digest, str) and digest.split(":", 1)[0] in ("sha384", "sha512"):
        raise Unsupported("%s uses a %s digest; only sha256 is supported"
                          % (what, digest.split(":", 1)[0]))
    if not is_digest(digest):
        raise Corrupt("%s has an invalid digest %r" % (what, digest))
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Corrupt("%s (%s) has an invalid size %r" % (what, digest, size))
    urls = value.get("urls") if isinstance(value.get("urls"), list) else []
    return Descriptor(str(value.get("mediaType") or ""), Digest(digest), size,
                      [str(u) for u in urls])


def _check_layer_type(desc: Descriptor, what: str) -> None:
    if any(marker in desc.media_type for marker in FOREIGN_MARKERS):
        raise Unsupported("%s is a non-distributable (foreign) layer served from %s, not by "
                          "the registry; such images cannot be pulled here"
                          % (what, ", ".join(desc.urls) or "elsewhere"))
    if desc.media_type and desc.media_type not in LAYER_TYPES:
        raise Unsupported("%s has media type %s: only tar layers (plain, gzip, zstd) are "
                          "supported" % (what, desc.media_type))


def parse_manifest(raw: bytes, digest: Digest, media_type: str, top: Digest,
                   where: str) -> Manifest:
    data = json_object(raw, "manifest %s of %s" % (digest, where))
    config = _descriptor(data.get("config"), "the config of manifest %s of %s" % (digest, where))
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise Unsupported("%s is not a container image: its config has media type %s"
                          % (where, config.media_type))
    layer_values = data.get("layers")
    if not isinstance(layer_values, list):
        raise Corrupt("manifest %s of %s has no layers list" % (digest, where))
    layers = []
    for number, value in enumerate(layer_values, 1):
        what = "layer %d of %s" % (number, where)
        desc = _descriptor(value, what)
        _check_layer_type(desc, what)
        layers.append(desc)
    return Manifest(raw=raw, digest=digest, media_type=media_type, config=config,
                    layers=layers, top_digest=top)


def _media_type(raw: bytes, content_type: Optional[str]) -> str:
    """The body's own mediaType wins over Content-Type (registries differ on the header)."""
    try:
        data = loads(raw, "manifest")
    except StoreError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("mediaType"), str):
        return data["mediaType"]
    if isinstance(data, dict) and data.get("schemaVersion") == 1:
        return MT_DOCKER_SCHEMA1[0]
    if isinstance(data, dict) and isinstance(data.get("manifests"), list):
        return MT_OCI_INDEX
    if isinstance(data, dict) and "config" in data:
        return MT_OCI_MANIFEST
    return (content_type or "").split(";", 1)[0].strip()


# ---------------------------------------------------------------------- HTTP
def _port(url: urllib.parse.SplitResult) -> Optional[int]:
    try:
        return url.port
    except ValueError as exc:
        raise RegistryError("%s has a port out of range (1-65535)" % url.netloc) from exc


def split_url(url: str, who: str) -> urllib.parse.SplitResult:
    """``url`` split, or a RegistryError naming ``who`` sent it (an unclosed IPv6 bracket,
    a port out of range: what ``urllib.parse`` raises ValueError for)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # pylint: disable=pointless-statement
    except ValueError as exc:
        raise RegistryError("%s sent a malformed URL (%s)" % (who, exc)) from exc
    return parts


def join_url(base: str, location: str, who: str) -> str:
    """``location`` (a Location header) resolved against ``base``, checked by split_url."""
    try:
        url = urllib.parse.urljoin(base, location)
    except ValueError as exc:
        raise RegistryError("%s sent a malformed URL (%s)" % (who, exc)) from exc
    split_url(url, who)
    return url


def origin(parts: urllib.parse.SplitResult) -> Tuple[str, str, int]:
    """(scheme, host, port) of a split URL, the port defaulted: what credentials are
    bound to."""
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), \
        parts.port or (443 if scheme == "https" else 80)


def tls_context(ca_path: Optional[str]) -> ssl.SSLContext:
    if ca_path and not os.path.exists(ca_path):
        raise NotFound("ca_path %s does not exist on this host" % ca_path)
    try:
        if ca_path and os.path.isdir(ca_path):
            return ssl.create_default_context(capath=ca_path)
        return ssl.create_default_context(cafile=ca_path or None)
    except (ssl.SSLError, OSError) as exc:
        raise TLSFailure("ca_path %s is not a PEM certificate bundle (%s)" % (ca_path, exc)) from exc


def _challenges(headers: http.client.HTTPMessage) -> Dict[str, Dict[str, str]]:
    """``WWW-Authenticate`` values by scheme (lowercase) -> parameters."""
    found: Dict[str, Dict[str, str]] = {}
    for value in (headers.get_all("WWW-Authenticate") or [])[:MAX_CHALLENGES]:
        found.update(parse_challenges(value[:MAX_HEADER]))
    return found


def parse_challenges(value: str) -> Dict[str, Dict[str, str]]:
    """One ``WWW-Authenticate`` value (RFC 7235: ``Scheme k=v, k="v", Scheme2 ...``) by
    scheme -> parameters, in one left-to-right pass: each token is matched once where
    the previous one ended, so the work is linear in the header whatever it holds."""
    found: Dict[str, Dict[str, str]] = {}
    params: Optional[Dict[str, str]] = None
    pos = 0
    while True:
        pos = _SEPARATORS_RE.match(value, pos).end()
        if pos >= len(value):
            return found
        match = _PARAM_RE.match(value, pos)
        if match is not None and params is not None:
            quoted = match.group(2)
            params[match.group(1).lower()] = _unquote(quoted) if quoted is not None \
                else match.group(3)
            pos = match.end()
            continue
        match = _SCHEME_RE.match(value, pos)
        if match is None:
            pos = _SKIP_RE.match(value, pos).end()    # garbage up to the next comma
            continue
        params = found.setdefault(match.group(1).lower(), {})
        pos = match.end()


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _registry_errors(body: bytes) -> List[str]:
    try:
        data = loads(body, "error body")
    except StoreError:
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    return [str(e.get("code")) for e in errors or [] if isinstance(e, dict)]


class DeadlineExceeded(socket.timeout):
    """A request (a blob download) took longer than its overall deadline."""


class _Watchdog:
    """Shuts ``conn``'s socket down ``seconds`` from now unless cancelled first: a
    blocked connect, send or header read then ends (``fired`` says why)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sock = self.conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not connected yet, or already closed

    def cancel(self) -> None:
        with self._lock:
            self._timer.cancel()


class Response:
    """An open response; ``read`` stays valid until ``close``.  Every read waits at most
    ``timeout`` seconds for data and ends by ``deadline`` (a monotonic time) whatever the
    pace the server drips bytes at."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 url: str, timeout: float, deadline: float) -> None:
        self.conn, self.resp, self.url = conn, resp, url
        self.status = resp.status
        self.headers = resp.headers
        self.timeout, self.deadline = timeout, deadline

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, fewer only at the end of the body.  Read piece by piece
        (``read1``: one receive each) so a server dripping a byte at a time meets the
        deadline between pieces, not only when a whole chunk has arrived."""
        pieces: List[bytes] = []
        got = 0
        while got < n:
            piece = self._read_piece(n - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def _read_piece(self, n: int) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline")
        if self.conn.sock is not None:
            self.conn.sock.settimeout(min(self.timeout, left))
        try:
            return self.resp.read1(n)
        except socket.timeout as exc:
            if time.monotonic() >= self.deadline:
                raise DeadlineExceeded("deadline") from exc
            raise

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


class Registry:
    """One repository of one registry, as a pull talks to it (safe to share by threads)."""

    def __init__(self, reference: Reference, insecure: bool = False, ca_path: Optional[str] = None,
                 username: Optional[str] = None, password: Optional[str] = None,
                 timeout: float = 60, connect_timeout: float = 30,
                 deadline: float = 3600, credentials: Optional[Credentials] = None,
                 actions: str = "pull", host: Optional[str] = None) -> None:
        self.reference = reference
        if host is None:
            host = HUB_API if reference.registry in HUB_NAMES else reference.registry
        self.base = "%s://%s" % ("http" if insecure else "https", host)
        self.address = host
        self.insecure, self.ca_path, self.timeout = insecure, ca_path, float(timeout)
        self.connect_timeout, self.deadline = float(connect_timeout), float(deadline)
        if (username is None) != (password is None):
            raise InvalidInput("username and password go together: give both or neither")
        if credentials is None and username is not None:
            credentials = Credentials(username, password or "")
        self.credentials = credentials
        self.username = credentials.username if credentials else None
        self.actions = actions
        self.extra_scopes: List[str] = []
        self.withheld_from: Optional[str] = None
        self._context = None if insecure else tls_context(ca_path)
        self._authorization: Optional[str] = None
        self._auth_lock = threading.Lock()

    # -- connections
    def _connection(self, url: urllib.parse.SplitResult) -> Tuple[http.client.HTTPConnection, bool]:
        """A connection for ``url`` (through the environment's proxy, if any) and whether
        requests on it name the absolute URL (plain HTTP through a proxy)."""
        if url.scheme not in ("http", "https"):
            raise RegistryError("%s sent the client to %s, which is not an http(s) URL"
                                % (self.address, urllib.parse.urlunsplit(url)))
        proxy = proxy_for(url.scheme, url.netloc)
        host, port = (proxy if proxy else (url.hostname or "", _port(url)))
        if url.scheme == "https":
            context = self._context or tls_context(self.ca_path)
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout,
                                               context=context)
            if proxy:
                # CONNECT: TLS end to end, the proxy relays bytes it cannot read
                conn.set_tunnel(url.hostname or "", _port(url) or 443)
            return conn, False
        return (http.client.HTTPConnection(host, port, timeout=self.connect_timeout),
                proxy is not None)

    def _send(self, method: str, url: str, headers: Dict[str, str],
              body: Optional[bytes] = None) -> Response:
        """One request: ``connect_timeout`` to connect, then ``timeout`` for each wait for
        data, and the response is read by ``deadline`` seconds from now."""
        parts = urllib.parse.urlsplit(url)
        conn, absolute = self._connection(parts)
        target = parts.path + ("?" + parts.query if parts.query else "")
        if absolute:
            target = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path or "/",
                                              parts.query, ""))
        deadline = time.monotonic() + self.deadline
        # connecting, sending and the status line and headers are per-wait timeouts
        # only: a server dripping them a byte at a time meets the deadline through a
        # watchdog that shuts the socket down (the body's reads check it themselves)
        watchdog = _Watchdog(conn, self.deadline)
        try:
            conn.connect()
            if watchdog.fired:  # it fired while the socket was being made
                raise DeadlineExceeded("deadline")
            conn.sock.settimeout(min(self.timeout, self.deadline))
            conn.request(method, target, body=body,
                         headers=dict(headers, **{"User-Agent": USER_AGENT}))
            resp = conn.getresponse()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (OSError, http.client.HTTPException)):
                cause = DeadlineExceeded("deadline") if watchdog.fired else exc
                raise self._network_error(cause, parts) from exc
            raise
        finally:
            watchdog.cancel()
        if watchdog.fired:
            conn.close()
            raise self._network_error(DeadlineExceeded("deadline"), parts)
        return Response(conn, resp, url, self.timeout, deadline)

    def _network_error(self, exc: BaseException, url: urllib.parse.SplitResult) -> StoreError:
        where = url.netloc
        if isinstance(exc, ssl.SSLCertVerificationError):
            hint = "the CA file given as ca_path (%s) does not vouch for it" % self.ca_path \
                if self.ca_path else "pass ca_path with the CA certificate that signed it"
            return TLSFailure("TLS failure talking to %s: its certificate could not be verified "
                              "(%s); %s" % (where, exc.verify_message or exc.reason, hint))
        if isinstance(exc, ssl.SSLError):
            return TLSFailure("TLS failure talking to %s: %s; if the registry speaks plain HTTP, "
                              "set insecure: true" % (where, exc.reason or exc))
        if isinstance(exc, ConnectionRefusedError):
            return Unreachable("registry %s is unreachable: connection refused (is it running, "
                               "and is the address right?)" % where)
        if isinstance(exc, DeadlineExceeded):
            return Unreachable("registry %s did not answer within %g seconds (blob_timeout)"
                               % (where, self.deadline))
        if isinstance(exc, socket.timeout):
            return Unreachable("registry %s is unreachable: no answer within %g seconds "
                               "(connect_timeout %g, timeout %g)"
                               % (where, max(self.timeout, self.connect_timeout),
                                  self.connect_timeout, self.timeout))
        if isinstance(exc, socket.gaierror):
            return Unreachable("registry %s is unreachable: its host name cannot be resolved (%s)"
                               % (where, exc.strerror))
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return Unreachable("registry %s is unreachable: %s" % (where, detail))

    # -- requests
    def request(self, path: str, accept: Optional[str] = None, method: str = "GET",
                body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None,
                expect: Tuple[int, ...] = (200,)) -> Response:
        """``method`` on ``path`` of the registry (or a full URL it gave, e.g. an upload
        location): authenticated as challenged, redirects followed; an answer not in
        ``expect`` is raised as an error naming what was asked."""
        headers = dict(headers or {})
        if accept:
            headers["Accept"] = accept
        url = path if "://" in path else self.base + path
        retried = False
        while True:
            resp = self._follow(url, headers, method, body)
            if resp.status == 401 and not self.own(resp.url):
                resp.close()
                raise AuthenticationRefused(
                    "%s, where registry %s sent the client for %s, asks for authentication: "
                    "refused, the registry's credentials go only to the registry itself"
                    % (urllib.parse.urlsplit(resp.url).netloc, self.address,
                       urllib.parse.urlsplit(url).path), status=401)
            if resp.status != 401 or retried:
                break
            challenges = _challenges(resp.headers)
            if not self._can_answer(challenges):
                break
            resp.close()                # its body is never read: one connection per request
            self._authenticate(challenges)
            retried = True
        if resp.status not in expect:
            try:
                body_read = resp.read(MAX_ERROR_BODY) if method != "HEAD" else b""
            except (OSError, http.client.HTTPException):
                body_read = b""
            finally:
                resp.close()
            raise self._status_error(resp.status, body_read, urllib.parse.urlsplit(url).path)
        return resp

    def own(self, url: str) -> bool:
        """Whether ``url`` is on the registry's own origin (scheme, host and port of
        ``base``): the only one its credentials and challenges are taken from."""
        return origin(split_url(url, "registry %s" % self.address)) == \
            origin(urllib.parse.urlsplit(self.base))

    def _follow(self, url: str, headers: Dict[str, str], method: str = "GET",
                body: Optional[bytes] = None) -> Response:
        """``url`` requested, redirects followed; the answer's ``url`` is the last one
        asked.  ``Authorization`` goes only to the registry's own origin, whatever host a
        Location names (an upload location or a redirect elsewhere is asked anonymously,
        as Docker does); a URL that would take an https registry's exchange to plain
        HTTP is refused."""
        who = "registry %s" % self.address
        secure = urllib.parse.urlsplit(self.base).scheme == "https"
        for _hop in range(MAX_REDIRECTS + 1):
            parts = split_url(url, who)
            if secure and parts.scheme.lower() == "http":
                raise RegistryError("registry %s redirected to plain HTTP (%s://%s): refused, "
                                    "an https exchange is never downgraded"
                                    % (self.address, parts.scheme, parts.netloc))
            sent = dict(headers)
            authorization = self._authorization
            if authorization and self.own(url):
                sent["Authorization"] = authorization
            resp = self._send(method, url, sent, body)
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            resp.close()                # the body of a redirect is never read
            url = join_url(url, location, who)
        raise RegistryError("%s redirected more than %d times for %s"
                            % (self.address, MAX_REDIRECTS, url))

    def _status_error(self, status: int, body: bytes, path: str) -> StoreError:
        codes = _registry_errors(body)
        if status == 401:
            if self.withheld_from is not None:
                return AuthenticationRefused(
                    "registry %s refused access to %s: its token service %s is plain HTTP "
                    "(on another host, or for an https registry), so the credentials of %s "
                    "were not sent to it (they would travel in clear text); serve the token "
                    "realm over https"
                    % (self.address, self.reference.name, self.withheld_from,
                       self.credentials), status=status)
            if self.username is None:
                return AuthenticationRefused(
                    "registry %s requires authentication for %s: give username and password"
                    % (self.address, self.reference.name), status=status)
            return AuthenticationRefused(
                "registry %s refused the credentials of %s for %s (authentication "
                "refused): check username and password, or the auth file"
                % (self.address, self.credentials, self.reference.name), status=status)
        if status == 403 or "DENIED" in codes:
            return AuthenticationRefused("registry %s denies access to %s%s" % (
                self.address, self.reference.name,
                "" if self.username else " without credentials: give username and password"),
                status=status)
        if status == 400 and b"HTTP request to an HTTPS server" in body:
            return TLSFailure("registry %s speaks HTTPS, not plain HTTP: drop insecure (and "
                              "give ca_path if its certificate is not publicly trusted)"
                              % self.address, status=status)
        if status == 404:
            return self._not_found(codes, path)
        if status == 429 or "TOOMANYREQUESTS" in codes:
            return RegistryError("registry %s refuses more requests for now (too many "
                                 "requests): try again later" % self.address, status=status)
        text = body[:200].decode("utf-8", "replace").strip()
        return RegistryError("registry %s answered %d for %s%s" % (
            self.address, status, path, (": " + text) if text else ""), status=status,
            codes=codes)

    def _not_found(self, codes: List[str], path: str) -> StoreError:
        ref = self.reference
        if "/blobs/" in path:
            return NotFound("registry %s has no blob %s in %s (BLOB_UNKNOWN): the manifest "
                            "names content the registry lost" % (self.address,
                                                                 path.rsplit("/", 1)[-1], ref.name))
        if "NAME_UNKNOWN" in codes or "/tags/list" in path or not self._repository_exists():
            return NotFound("repository %s is not known to registry %s (unknown repository)"
                            % (ref.repository, self.address), codes=codes)
        asked = path.rsplit("/", 1)[-1]
        kind = "digest" if is_digest(asked) else "tag"
        return NotFound("%s %s is not in repository %s of registry %s (unknown %s)"
                        % (kind, asked, ref.repository, self.address, kind), codes=codes)

    def _repository_exists(self) -> bool:
        """Registries answer MANIFEST_UNKNOWN for an unknown repository too; the tag list
        tells the two apart (one more request, on the failure path only)."""
        try:
            self.request("/v2/%s/tags/list?n=1" % self.reference.repository).close()
        except NotFound:
            return False
        except StoreError:
            return True
        return True

    # -- authentication
    def _can_answer(self, challenges: Dict[str, Dict[str, str]]) -> bool:
        """Whether retrying with credentials can help (anonymous tokens are a thing; anonymous
        basic auth is not)."""
        return "bearer" in challenges or ("basic" in challenges and self.username is not None) \
            or (bool(challenges) and "basic" not in challenges)

    def _authenticate(self, challenges: Dict[str, Dict[str, str]]) -> None:
        with self._auth_lock:
            if "bearer" in challenges:
                self._authorization = "Bearer " + self._token(challenges["bearer"])
            elif "basic" in challenges:
                self._authorization = self._basic()
            elif challenges:
                raise Unsupported("registry %s asks for authentication scheme(s) %s; only "
                                  "Bearer and Basic are supported"
                                  % (self.address, ", ".join(sorted(challenges))))

    def _basic(self) -> str:
        creds = self.credentials
        if creds is None:
            raise AuthenticationRefused("registry %s requires authentication: give username "
                                        "and password or an auth_file" % self.address)
        pair = ("%s:%s" % (creds.username, creds.password)).encode("utf-8")
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def scopes(self, challenge: Dict[str, str]) -> List[str]:
        """What a token is asked for: this repository with our actions, the challenge's
        own scope, and any other repository a request needs (a mount's source)."""
        order: List[str] = []
        actions: Dict[str, List[str]] = {}
        scopes = ["repository:%s:%s" % (self.reference.repository, self.actions),
                  challenge.get("scope") or ""] + self.extra_scopes
        for scope in scopes:
            for one in scope.split(" "):
                if not one:
                    continue
                # one resource once, with the union of its actions: a registry may name
                # them in any order ("push,pull"), and a token service may keep only one
                # of two scopes that name the same repository
                resource, sep, named = one.rpartition(":")
                if not sep or not resource:
                    resource, named = one, ""
                if resource not in actions:
                    order.append(resource)
                    actions[resource] = []
                for action in named.split(","):
                    if action and action not in actions[resource]:
                        actions[resource].append(action)
        return ["%s:%s" % (r, ",".join(actions[r])) if actions[r] else r for r in order]

    def realm_may_get_password(self, realm: str) -> bool:
        """A token realm gets the credentials only over TLS, or over plain HTTP on the host
        of a registry the task marked insecure (which has them anyway, in clear text): an
        https registry's credentials never travel in clear text."""
        parts = urllib.parse.urlsplit(realm)
        mine = urllib.parse.urlsplit(self.base)
        return parts.scheme == "https" or (
            mine.scheme == "http" and (parts.hostname or "") == (mine.hostname or ""))

    def _token(self, challenge: Dict[str, str]) -> str:
        realm = challenge.get("realm")
        if not realm or urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError("registry %s asked for a bearer token without a usable realm "
                                "(%r)" % (self.address, realm))
        query = [("scope", scope) for scope in self.scopes(challenge)]
        if challenge.get("service"):
            query.append(("service", challenge["service"]))
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        withheld = self.credentials is not None and not self.realm_may_get_password(realm)
        if withheld:
            self.withheld_from = urllib.parse.urlsplit(realm).netloc
        headers = {"Authorization": self._basic()} \
            if self.credentials is not None and not withheld else {}
        resp = self._send("GET", url, headers)
        try:
            body = resp.read(MAX_MANIFEST)
        finally:
            resp.close()
        realm_host = urllib.parse.urlsplit(realm).netloc
        if resp.status in (401, 403):
            if withheld:
                raise AuthenticationRefused(
                    "the token service of registry %s is plain HTTP (%s, on another host or "
                    "for an https registry): the credentials were not sent to it (they would "
                    "travel in clear text) and it refused anonymous access to %s"
                    % (self.address, realm_host, self.reference.name))
            raise self._status_error(401, b"", url) if self.credentials is not None else \
                AuthenticationRefused("the token service %s of registry %s refused anonymous "
                                      "access to %s: give username and password"
                                      % (realm_host, self.address, self.reference.name))
        if resp.status != 200:
            raise RegistryError("the token service %s of registry %s answered %d"
                                % (realm_host, self.address, resp.status))
        data = json_object(body, "the token from %s" % realm_host)
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError("the token service %s of registry %s sent no token"
                                % (realm_host, self.address))
        if not _TOKEN_RE.match(token):      # never echoed: it is a credential
            raise RegistryError("the token service %s of registry %s sent a token with "
                                "characters an HTTP header cannot carry (spaces, control "
                                "characters or non-ASCII): refused" % (realm_host, self.address))
        return token

    # -- manifests
    def manifest(self, ref: str, expect: Optional[Digest] = None,
                 size: Optional[int] = None) -> Tuple[bytes, str, Digest]:
        """(raw, media type, digest) of ``ref``, verified against what names it."""
        resp = self.request("/v2/%s/manifests/%s" % (self.reference.repository, ref),
                            MANIFEST_ACCEPT)
        try:
            raw = resp.read(MAX_MANIFEST + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self.interrupted("manifest %s" % ref, exc) from exc
        finally:
            resp.close()
        where = "%s/%s" % (self.address, self.reference.repository)
        if len(raw) > MAX_MANIFEST:
            raise Corrupt("manifest %s of %s is larger than %d bytes: refused"
                          % (ref, where, MAX_MANIFEST))
        digest = sha256_bytes(raw)
        announced = resp.headers.get("Docker-Content-Digest")
        for claimed, source in ((expect, "its reference"), (announced, "the registry")):
            if claimed and claimed.startswith("sha256:") and claimed != digest:
                raise DigestMismatch("manifest %s of %s failed verification: %s names %s but "
                                     "its content hashes to %s" % (ref, where, source, claimed,
                                                                   digest),
                                     expected=claimed, actual=digest)
        if size is not None and len(raw) != size:
            raise DigestMismatch("manifest %s of %s failed verification: %d bytes where the "
                                 "index says %d" % (ref, where, len(raw), size))
        return raw, _media_type(raw, resp.headers.get("Content-Type")), digest

    def top(self) -> Tuple[bytes, str, Digest]:
        """What the reference names (an image manifest or an index): one request."""
        return self.manifest(self.reference.ref, self.reference.digest)

    def resolve(self, wanted: Platform,
                top: Optional[Tuple[bytes, str, Digest]] = None) -> Manifest:
        """The image manifest the reference names for ``wanted`` (an index is resolved)."""
        ref = self.reference
        raw, media_type, top_digest = top or self.top()
        chosen: Optional[Platform] = None
        digest = top_digest
        for _depth in range(4):
            if media_type not in INDEX_TYPES:
                break
            index = json_object(raw, "index %s of %s" % (digest, ref))
            entries = index.get("manifests") or []
            if not isinstance(entries, list):
                raise Corrupt("index %s of %s is damaged: its \"manifests\" is not a list"
                              % (digest, ref))
            desc = pick_platform([m for m in entries if isinstance(m, dict)],
                                 wanted, str(ref), "; set platform to one of those")
            chosen = platform_of(desc) or chosen
            target = _descriptor(desc, "a manifest of index %s" % digest)
            raw, media_type, digest = self.manifest(target.digest, target.digest, target.size)
        if media_type in MT_DOCKER_SCHEMA1:
            raise Unsupported("%s is a Docker schema 1 manifest (deprecated, unsigned content); "
                              "push it again with a current client" % ref)
        if media_type not in MANIFEST_TYPES:
            raise Unsupported("%s has a manifest of media type %r, not an image manifest or index"
                              % (ref, media_type))
        manifest = parse_manifest(raw, digest, media_type, top_digest, str(ref))
        manifest.platform = chosen
        return manifest

    # -- blobs
    def _blob_path(self, digest: Digest) -> str:
        return "/v2/%s/blobs/%s" % (self.reference.repository, digest)

    def blob_bytes(self, desc: Descriptor, what: str, limit: int = MAX_CONFIG) -> bytes:
        """A small blob (the config) read whole and verified."""
        if desc.size > limit:
            raise Corrupt("%s %s of %s is %d bytes, more than the %d allowed"
                          % (what, desc.digest, self.reference, desc.size, limit))
        stream = self.open_blob(desc, what)
        try:
            data = b"".join(iter(lambda: stream.read(CHUNK), b""))
        finally:
            stream.close()
        if sha256_bytes(data) != desc.digest:
            raise DigestMismatch("%s %s of %s failed verification: it hashes to %s"
                                 % (what, desc.digest, self.reference, sha256_bytes(data)),
                                 expected=desc.digest, actual=sha256_bytes(data))
        return data

    def open_blob(self, desc: Descriptor, what: str) -> "BlobStream":
        resp = self.request(self._blob_path(desc.digest))
        length = resp.headers.get("Content-Length")
        if length is not None and length.isascii() and length.isdigit() \
                and int(length) != desc.size:
            resp.close()
            raise DigestMismatch("%s %s of %s failed verification: the registry sends %s bytes "
                                 "where the manifest says %d" % (what, desc.digest,
                                                                 self.reference, length, desc.size))
        return BlobStream(self, resp, desc, what)

    def download(self, desc: Descriptor, path: str, what: str,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        """Write blob ``desc`` to ``path``, verifying its size and digest as it arrives."""
        stream = self.open_blob(desc, what)
        hasher = hashlib.sha256()
        try:
            with open(path, "wb") as handle:
                while not cancelled():
                    data = stream.read(CHUNK)
                    if not data:
                        break
                    hasher.update(data)
                    handle.write(data)
        finally:
            stream.close()
        if cancelled():
            return
        actual = "sha256:" + hasher.hexdigest()
        if actual != desc.digest:
            raise DigestMismatch("%s failed verification: blob %s from %s hashes to %s"
                                 % (what, desc.digest, self.address, actual),
                                 expected=desc.digest, actual=actual)

    def interrupted(self, what: str, exc: BaseException) -> StoreError:
        if isinstance(exc, DeadlineExceeded):
            detail = "not complete within %g seconds (blob_timeout)" % self.deadline
        elif isinstance(exc, socket.timeout):
            detail = "no data for %g seconds (timeout)" % self.timeout
        else:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return Unreachable("download of %s from registry %s was interrupted: %s; run again "
                           "(layers already stored are kept)" % (what, self.address, detail))


class BlobStream:
    """A blob's bytes as a raw ``read(n)``: exactly the descriptor's size, or an error."""

    def __init__(self, registry: Registry, resp: Response, desc: Descriptor, what: str) -> None:
        self.registry, self.resp, self.desc, self.what = registry, resp, desc, what
        self.left = desc.size

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        try:
            data = self.resp.read(min(n, self.left))
        except (OSError, http.client.HTTPException) as exc:
            raise self.registry.interrupted(self.what, exc) from exc
        if not data:
            raise self.registry.interrupted(self.what, EOFError(
                "the connection ended after %d of %d bytes" % (self.desc.size - self.left,
                                                               self.desc.size)))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.resp.close()
