# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry settings shared by ``image_pull`` and ``image_push``: credentials, auth files,
TLS, mirrors and proxies, decided once here and handed to ``_registry.Registry``.

Credentials come from ``username``/``password`` (for the registry the task names, never
for its mirrors) or else from an auth file: Docker's ``config.json`` and containers'
``auth.json`` share the ``{"auths": {KEY: {"auth": base64(user:password)}}}`` shape.
A key is a host (``registry.example.com:5000``), a URL (``https://index.docker.io/v1/``,
as ``docker login`` writes for Docker Hub) or, in ``auth.json``, a host with a repository
prefix (``registry.example.com/team``); the longest key that matches the repository wins,
as containers/image does.  Credential helpers (``credsStore``) are not run.

Where credentials may go (the transport rules, in ``Registry``): to the registry host,
and to its token realm only over TLS, or over plain HTTP on the host of a registry the
task marked ``insecure``; over plain HTTP only to such a registry; a redirect from https
to http is refused.  No
password ever appears in a result, an error or a log line: messages name the user and
the auth file, never its content.

Proxies come from ``https_proxy``/``http_proxy``/``no_proxy`` (either case) in the
module's environment, as curl and Go's net/http read them: HTTPS goes through a
``CONNECT`` tunnel (end to end TLS, the proxy sees no credentials), plain HTTP as an
absolute-URI request.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput

HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")


def default_auth_files() -> List[str]:
    """Where an auth file is looked for when ``auth_file`` is not set, in order."""
    paths = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(os.environ["REGISTRY_AUTH_FILE"])
    paths.append("/run/containers/%d/auth.json" % os.getuid())
    paths.append(os.path.join(os.path.expanduser("~"), ".docker", "config.json"))
    return paths


def _key_name(key: str) -> str:
    """An ``auths`` key as ``host[:port][/path]``: scheme and Docker Hub's ``/v1/`` dropped."""
    if "://" in key:
        parts = urllib.parse.urlsplit(key)
        key = parts.netloc + (parts.path if parts.path not in ("", "/", "/v1/", "/v1", "/v2/")
                              else "")
    key = key.rstrip("/")
    host, sep, rest = key.partition("/")
    if host in HUB_KEYS:
        host = "docker.io"
    return host + sep + rest


def _decode_entry(entry: Any, key: str, path: str) -> Optional[Tuple[str, str]]:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return entry["username"], entry["password"]
    auth = entry.get("auth")
    if not isinstance(auth, str) or not auth:
        return None
    try:
        user, sep, password = base64.b64decode(auth, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("auth file %s: the entry for %s is not base64 of USER:PASSWORD"
                           % (path, key)) from exc
    if not sep or not user:
        raise InvalidInput("auth file %s: the entry for %s is not base64 of USER:PASSWORD"
                           % (path, key))
    return user, password


@dataclass
class AuthFile:
    """The entries of one auth file, by normalised key (each as the file has it, with
    its key as written: decoded only when a lookup chooses it, so one damaged entry for
    another registry fails no pull or push)."""

    path: Optional[str] = None
    entries: Dict[str, Tuple[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> "AuthFile":
        try:
            with open(path, "rb") as handle:
                data = json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError as exc:
            raise InvalidInput("auth_file %s does not exist on this host" % path) from exc
        except OSError as exc:
            raise InvalidInput("auth_file %s cannot be read (%s)" % (path, exc.strerror)) from exc
        except (UnicodeDecodeError, ValueError) as exc:
            # never the parser's message: it may quote the file, secrets included
            raise InvalidInput("auth_file %s is not JSON (a Docker config.json or a containers "
                               "auth.json is expected)" % path) from None
        if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
            raise InvalidInput("auth_file %s has no \"auths\" object (a Docker config.json or "
                               "a containers auth.json is expected)" % path)
        entries = {_key_name(str(key)): (str(key), entry)
                   for key, entry in (data.get("auths") or {}).items()}
        return cls(path, entries)

    def lookup(self, registry: str, repository: str) -> Optional[Tuple[str, str]]:
        """The credentials for ``registry/repository``: the longest matching key."""
        host = "docker.io" if registry in HUB_KEYS else registry
        full = "%s/%s" % (host, repository)
        matching = [key for key in self.entries
                    if key == host or full == key or full.startswith(key + "/")]
        # the longest key with credentials (an entry without any, as a credential
        # helper's, gives way to a shorter one)
        for key in sorted(matching, key=len, reverse=True):
            written, entry = self.entries[key]
            pair = _decode_entry(entry, written, self.path or "")
            if pair is not None:
                return pair
        return None


def find_auth_file(explicit: Optional[str]) -> AuthFile:
    if explicit:
        return AuthFile.load(explicit)
    for path in default_auth_files():
        if os.path.isfile(path):
            return AuthFile.load(path)
    return AuthFile()


@dataclass(frozen=True)
class Credentials:
    """A user and password, and where they came from (for messages: never the password)."""

    username: str
    password: str = field(repr=False)
    source: str = "username/password"

    def __str__(self) -> str:
        return "user %r (from %s)" % (self.username, self.source)


# ---------------------------------------------------------------------- proxies
def proxy_for(scheme: str, host: str) -> Optional[Tuple[str, int]]:
    """(host, port) of the proxy for ``scheme://host`` from the environment, or None."""
    proxies = urllib.request.getproxies_environment()
    value = proxies.get(scheme)
    if not value:
        return None
    bare = urllib.parse.urlsplit("//" + host).hostname or host
    if urllib.request.proxy_bypass_environment(bare, proxies) or \
            urllib.request.proxy_bypass_environment(host, proxies):
        return None
    parts = urllib.parse.urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme not in ("http", ""):
        raise InvalidInput("%s_proxy %s: only http:// proxies are supported"
                           % (scheme, parts.netloc or value))
    if parts.username or parts.password:
        raise InvalidInput("%s_proxy names a proxy with credentials; proxy authentication is "
                           "not supported" % scheme)
    if not parts.hostname:
        raise InvalidInput("%s_proxy %r names no host" % (scheme, value))
    return parts.hostname, parts.port or 80


# ---------------------------------------------------------------------- settings
@dataclass
class RegistrySettings:
    """What a module's registry options say, resolved (auth file read once)."""

    insecure: bool = False
    ca_path: Optional[str] = None
    timeout: float = 60.0
    connect_timeout: float = 30.0
    blob_timeout: float = 3600.0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    auth: AuthFile = field(default_factory=AuthFile)
    mirrors: List[str] = field(default_factory=list)

    @classmethod
    def from_params(cls, params: Dict[str, Any], mirrors: bool = False) -> "RegistrySettings":
        username, password = params.get("username"), params.get("password")
        if (username is None) != (password is None):
            raise InvalidInput("username and password go together: give both or neither")
        timeouts = {name: float(params.get(name) or default) for name, default in
                    (("timeout", 60), ("connect_timeout", 30), ("blob_timeout", 3600))}
        for name, value in timeouts.items():
            if value <= 0:
                raise InvalidInput("%s must be a positive number of seconds" % name)
        return cls(insecure=bool(params.get("insecure")), ca_path=params.get("ca_path"),
                   username=username, password=password, **timeouts,
                   auth=find_auth_file(params.get("auth_file")),
                   mirrors=validate_mirrors(params.get("mirrors") or []) if mirrors else [])

    def credentials(self, registry: str, repository: str,
                    explicit: bool = True) -> Optional[Credentials]:
        """Credentials for ``registry``; ``explicit`` False for a mirror, which never gets
        the task's ``username``/``password`` (those are for the registry it names)."""
        if explicit and self.username is not None:
            return Credentials(self.username, self.password or "")
        found = self.auth.lookup(registry, repository)
        if found is None:
            return None
        return Credentials(found[0], found[1], "auth file %s" % self.auth.path)


def validate_mirrors(values: List[Any]) -> List[str]:
    out = []
    for index, value in enumerate(values):
        text = str(value).strip()
        if "@" in text:
            # never echoed: what is before the @ is a user and password
            raise InvalidInput("mirror #%d carries credentials (USER:PASSWORD@); mirrors are "
                               "HOST[:PORT], and their credentials come from the auth file"
                               % (index + 1))
        if "://" in text:
            text = urllib.parse.urlsplit(text).netloc
        text = text.rstrip("/")
        host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
        port = text.rsplit(":", 1)[1] if text.count(":") == 1 else None
        if not host or "/" in text or (port is not None and not port.isdigit()):
            raise InvalidInput("mirror %r is not HOST[:PORT]" % (value,))
        out.append(text)
    return out
